//! `mailroom.v1.Templates`: overrides of the built-in emails, organisations' default
//! locales and previews (permission manageConfig for an organisation's, managePlatform
//! for the platform's).

use tonic::{Request, Response, Status};

use super::convert::{timestamp, Page};
use super::status::invalid;
use crate::auth::{Caller, Permission};
use crate::notify::{EmailKind, Notification, NotifyService};
use crate::proto::v1 as pb;
use crate::proto::v1::templates_server::Templates;
use crate::settings::SettingsService;
use crate::templates::{
    self, EmailTemplate, Origin, Preview, PreviewRequest, Previewed, Scope, TemplateDraft,
    TemplateService,
};
use crate::validation::{violation, Violations};

/// The Templates service.
pub struct TemplatesApi {
    templates: TemplateService,
    notify: NotifyService,
    settings: SettingsService,
}

impl TemplatesApi {
    /// The service over `templates`; previews of notifications render with `notify`, as
    /// sends do, from the sender of `settings`.
    pub fn new(
        templates: TemplateService,
        notify: NotifyService,
        settings: SettingsService,
    ) -> Self {
        Self {
            templates,
            notify,
            settings,
        }
    }

    /// The caller and whose templates a request is about: the platform's (managePlatform,
    /// `organisation` empty), else the organisation's it acts for (manageConfig).
    async fn scope<T>(
        &self,
        request: &Request<T>,
        platform: bool,
        organisation: &str,
    ) -> Result<(Caller, Scope), Status> {
        let caller = super::caller(request)?;
        if platform {
            super::require(request, Permission::ManagePlatform)?;
            if !organisation.is_empty() {
                return Err(invalid(&violation(
                    "organisation",
                    "must be empty with platform: the platform's templates are every \
                     organisation's",
                )));
            }
            return Ok((caller, Scope::Platform));
        }
        super::require(request, Permission::ManageConfig)?;
        let organisation = caller.act_for(organisation)?.to_string();
        Ok((caller, Scope::Organisation(organisation)))
    }
}

/// What writing or resetting an organisation's override of `kind` needs beyond its scope's
/// permission: for the emails whose link carries a token, manageUser too (which issues
/// tokens): the template sees the token's secret, and a key that could not write the
/// override must not take it away either.
fn require_for_kind<T>(
    request: &Request<T>,
    scope: &Scope,
    kind: Option<EmailKind>,
) -> Result<(), Status> {
    if matches!(scope, Scope::Organisation(_)) && kind.is_some_and(EmailKind::carries_token) {
        super::require(request, Permission::ManageUser)?;
    }
    Ok(())
}

/// The kind and language of a request naming one template.
fn kind_and_lang(kind: i32, locale: &str) -> Result<(EmailKind, crate::locale::Lang), Status> {
    let mut v = Violations::new();
    templates::kind_and_lang(email_kind(kind), locale, &mut v).ok_or_else(|| invalid(&v))
}

#[tonic::async_trait]
impl Templates for TemplatesApi {
    async fn list_email_templates(
        &self,
        request: Request<pb::ListEmailTemplatesRequest>,
    ) -> Result<Response<pb::ListEmailTemplatesResponse>, Status> {
        let (_, scope) = self
            .scope(
                &request,
                request.get_ref().platform,
                &request.get_ref().organisation,
            )
            .await?;
        let request = request.into_inner();
        let page = Page::parse(request.page_size, &request.page_token).map_err(|v| invalid(&v))?;
        // Kind by kind, in each the languages in order: 24 at most.
        let keyed: Vec<(String, EmailTemplate)> = self
            .templates
            .list(&scope)
            .await?
            .into_iter()
            .map(|t| (format!("{:02}/{:02}", t.kind as usize, t.lang as usize), t))
            .filter(|(key, _)| page.after.as_ref().is_none_or(|after| key > after))
            .take(page.fetch())
            .collect();
        let (templates, next_page_token) = page.finish(keyed, |(key, _)| key.as_str());
        Ok(Response::new(pb::ListEmailTemplatesResponse {
            templates: templates.into_iter().map(|(_, t)| t.into()).collect(),
            next_page_token,
        }))
    }

    async fn get_email_template(
        &self,
        request: Request<pb::GetEmailTemplateRequest>,
    ) -> Result<Response<pb::EmailTemplate>, Status> {
        let (_, scope) = self
            .scope(
                &request,
                request.get_ref().platform,
                &request.get_ref().organisation,
            )
            .await?;
        let (kind, lang) = kind_and_lang(request.get_ref().kind, &request.get_ref().locale)?;
        let template = self.templates.get(&scope, kind, lang).await?;
        Ok(Response::new(template.into()))
    }

    async fn update_email_template(
        &self,
        request: Request<pb::UpdateEmailTemplateRequest>,
    ) -> Result<Response<pb::EmailTemplate>, Status> {
        let (caller, scope) = self
            .scope(
                &request,
                request.get_ref().platform,
                &request.get_ref().organisation,
            )
            .await?;
        let kind = email_kind(request.get_ref().kind);
        require_for_kind(&request, &scope, kind)?;
        let r = request.into_inner();
        let draft = TemplateDraft {
            kind,
            locale: r.locale,
            source: crate::notify::EmailSource {
                subject: r.subject,
                text: r.text_body,
                html: r.html_body,
            },
            etag: r.etag,
        };
        let template = self
            .templates
            .update(&scope, draft, &caller.key_name)
            .await?;
        Ok(Response::new(template.into()))
    }

    async fn reset_email_template(
        &self,
        request: Request<pb::ResetEmailTemplateRequest>,
    ) -> Result<Response<pb::EmailTemplate>, Status> {
        let (_, scope) = self
            .scope(
                &request,
                request.get_ref().platform,
                &request.get_ref().organisation,
            )
            .await?;
        require_for_kind(&request, &scope, email_kind(request.get_ref().kind))?;
        let r = request.into_inner();
        let (kind, lang) = kind_and_lang(r.kind, &r.locale)?;
        let template = self.templates.reset(&scope, kind, lang, &r.etag).await?;
        Ok(Response::new(template.into()))
    }

    async fn preview_email(
        &self,
        request: Request<pb::PreviewEmailRequest>,
    ) -> Result<Response<pb::PreviewEmailResponse>, Status> {
        let (_, scope) = self
            .scope(
                &request,
                request.get_ref().platform,
                &request.get_ref().organisation,
            )
            .await?;
        let r = request.into_inner();
        let previewed = match (r.notification, email_kind(r.kind)) {
            (Some(_), Some(_)) => {
                return Err(invalid(&violation(
                    "notification",
                    "give either kind (a built-in email) or notification, not both",
                )))
            }
            (Some(n), None) => {
                let Scope::Organisation(organisation) = scope else {
                    return Err(invalid(&violation(
                        "platform",
                        "a notification is sent for an organisation: leave platform false",
                    )));
                };
                let notification = Notification {
                    organisation,
                    from: n.from,
                    subject: n.subject,
                    body: n.body,
                    format: super::convert::body_format(n.format).ok_or_else(|| {
                        invalid(&violation(
                            "notification.format",
                            "is not a known BodyFormat value",
                        ))
                    })?,
                    context: super::convert::json_object(n.context),
                    idempotency_key: String::new(),
                };
                let rendered = self.notify.preview(notification, &r.to).await?;
                let preview = Preview {
                    from: rendered.from,
                    to: rendered.to,
                    now: rendered.now,
                };
                preview
                    .compose(None, rendered.subject, rendered.text, rendered.html)
                    .map_err(|v| invalid(&v))?
            }
            (None, kind) => {
                let from = self.settings.get().await?.map(|s| s.from.mailbox());
                let preview = PreviewRequest {
                    kind,
                    locale: r.locale,
                    values: super::convert::json_object(r.values),
                    to: r.to,
                };
                self.templates.preview(&scope, &preview, from).await?
            }
        };
        Ok(Response::new(previewed.into()))
    }

    async fn get_locale_settings(
        &self,
        request: Request<pb::GetLocaleSettingsRequest>,
    ) -> Result<Response<pb::LocaleSettings>, Status> {
        let (_, scope) = self
            .scope(&request, false, &request.get_ref().organisation)
            .await?;
        let settings = self.templates.locale_settings(scope.key()).await?;
        Ok(Response::new(settings.into()))
    }

    async fn update_locale_settings(
        &self,
        request: Request<pb::UpdateLocaleSettingsRequest>,
    ) -> Result<Response<pb::LocaleSettings>, Status> {
        let (caller, scope) = self
            .scope(&request, false, &request.get_ref().organisation)
            .await?;
        let r = request.into_inner();
        let settings = self
            .templates
            .update_locale_settings(scope.key(), &r.default_locale, &r.etag, &caller.key_name)
            .await?;
        Ok(Response::new(settings.into()))
    }
}

/// The domain's kind of a proto `EmailKind` (`None`: unspecified or unknown).
fn email_kind(kind: i32) -> Option<EmailKind> {
    match pb::EmailKind::try_from(kind).ok()? {
        pb::EmailKind::Unspecified => None,
        pb::EmailKind::PasswordReset => Some(EmailKind::PasswordReset),
        pb::EmailKind::Invitation => Some(EmailKind::Invitation),
        pb::EmailKind::PasswordChanged => Some(EmailKind::PasswordChanged),
        pb::EmailKind::PasswordResetNotice => Some(EmailKind::PasswordResetNotice),
        pb::EmailKind::EmailChanged => Some(EmailKind::EmailChanged),
        pb::EmailKind::SmtpTest => Some(EmailKind::SmtpTest),
    }
}

/// The proto `EmailKind` of a kind.
fn proto_kind(kind: EmailKind) -> pb::EmailKind {
    match kind {
        EmailKind::PasswordReset => pb::EmailKind::PasswordReset,
        EmailKind::Invitation => pb::EmailKind::Invitation,
        EmailKind::PasswordChanged => pb::EmailKind::PasswordChanged,
        EmailKind::PasswordResetNotice => pb::EmailKind::PasswordResetNotice,
        EmailKind::EmailChanged => pb::EmailKind::EmailChanged,
        EmailKind::SmtpTest => pb::EmailKind::SmtpTest,
    }
}

impl From<EmailTemplate> for pb::EmailTemplate {
    fn from(t: EmailTemplate) -> Self {
        let (etag, update_time, updated_by) = match t.own {
            Some((etag, time, by)) => (etag, Some(timestamp(time)), by),
            None => (String::new(), None, String::new()),
        };
        pb::EmailTemplate {
            organisation: match &t.scope {
                Scope::Organisation(org) => org.clone(),
                Scope::Platform => String::new(),
            },
            platform: t.scope == Scope::Platform,
            kind: proto_kind(t.kind).into(),
            locale: t.lang.to_string(),
            subject: t.source.subject,
            text_body: t.source.text,
            html_body: t.source.html,
            origin: match t.origin {
                Origin::Builtin => pb::TemplateOrigin::Builtin,
                Origin::Platform => pb::TemplateOrigin::Platform,
                Origin::Organisation => pb::TemplateOrigin::Organisation,
            }
            .into(),
            etag,
            update_time,
            updated_by,
        }
    }
}

impl From<Previewed> for pb::PreviewEmailResponse {
    fn from(p: Previewed) -> Self {
        pb::PreviewEmailResponse {
            locale: p.lang.map(|l| l.to_string()).unwrap_or_default(),
            subject: p.subject,
            text_body: p.text,
            html_body: p.html.unwrap_or_default(),
            headers: p
                .headers
                .into_iter()
                .map(|(name, value)| pb::Header { name, value })
                .collect(),
        }
    }
}

impl From<templates::LocaleSettings> for pb::LocaleSettings {
    fn from(s: templates::LocaleSettings) -> Self {
        pb::LocaleSettings {
            organisation: s.organisation,
            default_locale: s.default_locale,
            etag: templates::etag(s.version),
            update_time: (s.version != 0).then(|| timestamp(s.update_time)),
            updated_by: s.updated_by,
        }
    }
}
