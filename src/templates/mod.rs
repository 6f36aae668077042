//! Templates: the built-in emails as each organisation's users get them. An organisation
//! overrides any built-in email in any of its languages (permission manageConfig), the
//! platform does for every organisation (managePlatform), and each organisation has a
//! default locale for users without one. A recipient's email is the organisation's
//! override, else the platform's, else the built-in, in the language [`crate::locale`]
//! chooses.
//!
//! Overrides are checked when saved, in the notifier templates' sandbox
//! (`notify::sandbox`) and rendered once over sample values, so that a broken or hostile
//! one is refused then and never at send time. [`TemplateService`] is also the notifier's
//! [`EmailSources`]; `preview.rs` renders an email as it would be sent, sending nothing.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;

use crate::clock::Clock;
use crate::locale::{self, Lang};
use crate::metrics::Metrics;
use crate::notify::sandbox;
use crate::notify::{
    builtin, Chosen, EmailKind, EmailSource, EmailSources, EmailValues, RenderThreads,
    RenderedEmail, SEND_THREADS,
};
use crate::ports::StoreError;
use crate::validation::{self, Violations};

mod model;
mod port;
mod preview;

pub use model::{Customisation, LocaleSettings, Scope, TemplateOverride};
pub use port::TemplateStore;
pub use preview::{samples, Preview, PreviewRequest, Previewed};

/// Longest subject template, in bytes.
pub const MAX_SUBJECT_BYTES: usize = 1024;
/// Most bytes a subject renders to over the sample values when saved: the values sent may
/// be longer (a subject past a header's 998 bytes is cut when sent).
pub const MAX_SAMPLE_SUBJECT_BYTES: usize = 256;
/// Longest text or HTML body template, in bytes.
pub const MAX_BODY_BYTES: usize = 256 * 1024;
/// Tries of a write that lost a race before giving up.
const SWAP_ATTEMPTS: usize = 16;

/// Where an email's template comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The binary's own.
    Builtin,
    /// The platform's override.
    Platform,
    /// The organisation's override.
    Organisation,
}

/// An email's template as a scope sees it: its own override, else what it falls back to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmailTemplate {
    /// Whose view.
    pub scope: Scope,
    /// Which email.
    pub kind: EmailKind,
    /// Which language.
    pub lang: Lang,
    /// The templates in effect.
    pub source: EmailSource,
    /// Where they come from.
    pub origin: Origin,
    /// The scope's own override, if any: its etag, when and by whom it was written.
    pub own: Option<(String, SystemTime, String)>,
}

/// An update of one override.
#[derive(Clone, Debug, Default)]
pub struct TemplateDraft {
    /// Which email (`None`: unspecified).
    pub kind: Option<EmailKind>,
    /// Which language: `en`, `fr`, `de` or `es`.
    pub locale: String,
    /// The templates.
    pub source: EmailSource,
    /// The etag the caller read; empty to write whatever is stored.
    pub etag: String,
}

/// Errors of the templates service.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// Bad fields or templates.
    #[error("invalid request: {0}")]
    Invalid(Violations),
    /// The etag is not the current one.
    #[error("the {0} changed since it was read (etag mismatch): read it again")]
    Stale(&'static str),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Reads, overrides and resets email templates, and organisations' default locales.
#[derive(Clone)]
pub struct TemplateService {
    store: Arc<dyn TemplateStore>,
    clock: Clock,
    /// The platform's name in emails (value `platform`).
    platform: Arc<str>,
    /// Where overrides are checked and previews rendered: the notifier's threads.
    threads: RenderThreads,
}

impl TemplateService {
    /// The templates kept in `store`, naming the platform `platform` in emails.
    pub fn new(store: Arc<dyn TemplateStore>, clock: Clock, platform: &str) -> Self {
        Self {
            store,
            clock,
            platform: platform.into(),
            threads: RenderThreads::new(SEND_THREADS, Metrics::default()),
        }
    }

    /// The same service, checking and previewing on `threads` (the notifier's: see
    /// [`crate::notify::NotifyService::with_render_threads`]).
    pub fn with_render_threads(mut self, threads: RenderThreads) -> Self {
        self.threads = threads;
        self
    }

    /// The platform's name in emails.
    pub fn platform(&self) -> &str {
        &self.platform
    }

    /// `kind` in `lang` as `scope` sees it.
    pub async fn get(
        &self,
        scope: &Scope,
        kind: EmailKind,
        lang: Lang,
    ) -> Result<EmailTemplate, TemplateError> {
        let own = self
            .store
            .email_override(scope.key(), kind, lang.as_str())
            .await?;
        let platform = match (&own, scope) {
            (None, Scope::Organisation(_)) => {
                self.store.email_override("", kind, lang.as_str()).await?
            }
            _ => None,
        };
        Ok(view(scope, kind, lang, own, platform))
    }

    /// Every kind in every language as `scope` sees it, kind by kind.
    pub async fn list(&self, scope: &Scope) -> Result<Vec<EmailTemplate>, TemplateError> {
        let own = self.store.email_overrides(scope.key()).await?;
        let platform = match scope {
            Scope::Organisation(_) => self.store.email_overrides("").await?,
            Scope::Platform => Vec::new(),
        };
        let find = |list: &[TemplateOverride], owner: &str, kind, lang: Lang| {
            list.iter()
                .find(|o| o.scope == owner && o.kind == kind && o.locale == lang.as_str())
                .cloned()
        };
        let mut all = Vec::new();
        for kind in EmailKind::ALL {
            for lang in Lang::ALL {
                all.push(view(
                    scope,
                    kind,
                    lang,
                    find(&own, scope.key(), kind, lang),
                    find(&platform, "", kind, lang),
                ));
            }
        }
        Ok(all)
    }

    /// Saves `draft` as `scope`'s override, once its templates pass the sandbox and render
    /// over the kind's sample values. `by`: the key's name.
    pub async fn update(
        &self,
        scope: &Scope,
        draft: TemplateDraft,
        by: &str,
    ) -> Result<EmailTemplate, TemplateError> {
        // Off the runtime's workers: compiling a template of 256 KiB takes a moment.
        let (draft, checked) = self
            .threads
            .render(scope.key(), move || {
                let checked = check_draft(&draft);
                (draft, checked)
            })
            .await?;
        let (kind, lang) = checked.map_err(TemplateError::Invalid)?;
        let now = self.clock.now();
        for _ in 0..SWAP_ATTEMPTS {
            let stored = self
                .store
                .email_override(scope.key(), kind, lang.as_str())
                .await?;
            let current = stored.as_ref().map_or(0, |o| o.version);
            if !draft.etag.is_empty() && draft.etag != etag(current) {
                return Err(TemplateError::Stale("template"));
            }
            let record = TemplateOverride {
                scope: scope.key().to_string(),
                kind,
                locale: lang.as_str().to_string(),
                source: draft.source.clone(),
                version: next_version(current, now),
                update_time: now,
                updated_by: by.to_string(),
            };
            if self
                .store
                .swap_email_override(scope.key(), kind, lang.as_str(), current, Some(&record))
                .await?
            {
                tracing::info!(kind = kind.name(), locale = %lang, scope = scope.key(), "email template overridden");
                return self.get(scope, kind, lang).await;
            }
        }
        Err(StoreError::Unavailable("the template is being changed by others; retry".into()).into())
    }

    /// Removes `scope`'s override of `kind` in `lang` (if `etag` is empty or current): the
    /// platform's or the built-in applies again. What applies now.
    pub async fn reset(
        &self,
        scope: &Scope,
        kind: EmailKind,
        lang: Lang,
        etag_read: &str,
    ) -> Result<EmailTemplate, TemplateError> {
        for _ in 0..SWAP_ATTEMPTS {
            let stored = self
                .store
                .email_override(scope.key(), kind, lang.as_str())
                .await?;
            let Some(stored) = stored else {
                if !etag_read.is_empty() {
                    return Err(TemplateError::Stale("template"));
                }
                break;
            };
            if !etag_read.is_empty() && etag_read != etag(stored.version) {
                return Err(TemplateError::Stale("template"));
            }
            if self
                .store
                .swap_email_override(scope.key(), kind, lang.as_str(), stored.version, None)
                .await?
            {
                tracing::info!(kind = kind.name(), locale = %lang, scope = scope.key(), "email template reset");
                break;
            }
        }
        self.get(scope, kind, lang).await
    }

    /// `organisation`'s locale settings (defaults when never set).
    pub async fn locale_settings(
        &self,
        organisation: &str,
    ) -> Result<LocaleSettings, TemplateError> {
        Ok(self
            .store
            .locale_settings(organisation)
            .await?
            .unwrap_or_else(|| LocaleSettings {
                organisation: organisation.to_string(),
                default_locale: String::new(),
                version: 0,
                update_time: UNIX_EPOCH,
                updated_by: String::new(),
            }))
    }

    /// Sets `organisation`'s default locale (a BCP 47 tag; empty for English) if `etag` is
    /// empty or current.
    pub async fn update_locale_settings(
        &self,
        organisation: &str,
        default_locale: &str,
        etag_read: &str,
        by: &str,
    ) -> Result<LocaleSettings, TemplateError> {
        let default_locale = locale::tag(default_locale)
            .map_err(|why| TemplateError::Invalid(validation::violation("default_locale", why)))?;
        let now = self.clock.now();
        for _ in 0..SWAP_ATTEMPTS {
            let current = self.store.locale_settings(organisation).await?;
            let version = current.as_ref().map_or(0, |s| s.version);
            if !etag_read.is_empty() && etag_read != etag(version) {
                return Err(TemplateError::Stale("locale settings"));
            }
            let settings = LocaleSettings {
                organisation: organisation.to_string(),
                default_locale: default_locale.clone(),
                version: next_version(version, now),
                update_time: now,
                updated_by: by.to_string(),
            };
            if self.store.swap_locale_settings(version, &settings).await? {
                return Ok(settings);
            }
        }
        Err(StoreError::Unavailable(
            "the locale settings are being changed by others; retry".into(),
        )
        .into())
    }

    /// The template of `kind` for a recipient of `scope` whose own locale is `locale`, in
    /// the language the chain picks: the organisation's override, else the platform's,
    /// else the built-in.
    pub async fn choose(
        &self,
        scope: &Scope,
        kind: EmailKind,
        locale: &str,
    ) -> Result<Chosen, StoreError> {
        let found = self.store.email_customisation(scope.key(), kind).await?;
        let organisation_locale = found.locale.map(|s| s.default_locale).unwrap_or_default();
        let lang = locale::choose(locale, &organisation_locale);
        // Exactly this scope's and kind's: what a prefix read found is checked, not trusted.
        let of_lang = |list: Vec<TemplateOverride>, scope: &str| {
            list.into_iter()
                .find(|o| o.scope == scope && o.kind == kind && o.locale == lang.as_str())
        };
        let source = of_lang(found.own, scope.key()).or_else(|| of_lang(found.platform, ""));
        let source = source.map_or_else(|| kind.builtin(lang).clone(), |o| o.source);
        Ok(Chosen {
            lang,
            source: Arc::new(source),
            platform: self.platform.to_string(),
        })
    }

    /// Renders `kind` for a recipient of `scope` whose own locale is `locale`.
    pub async fn render(
        &self,
        scope: &Scope,
        kind: EmailKind,
        locale: &str,
        values: &EmailValues,
    ) -> Result<RenderedEmail, TemplateError> {
        let chosen = self.choose(scope, kind, locale).await?;
        builtin::render(&chosen, values).map_err(TemplateError::Invalid)
    }
}

#[async_trait]
impl EmailSources for TemplateService {
    async fn email_source(
        &self,
        organisation: &str,
        kind: EmailKind,
        locale: &str,
    ) -> Result<Chosen, StoreError> {
        self.choose(&Scope::Organisation(organisation.to_string()), kind, locale)
            .await
    }
}

/// An etag of a version (empty for none).
pub fn etag(version: u64) -> String {
    if version == 0 {
        String::new()
    } else {
        format!("{version:x}")
    }
}

/// A version after `current`, never used before: microseconds since the epoch (so that an
/// override removed and written again does not take an etag it had).
fn next_version(current: u64, now: SystemTime) -> u64 {
    let micros = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    micros.max(current.saturating_add(1))
}

/// The view of `scope` given its own override and the platform's.
fn view(
    scope: &Scope,
    kind: EmailKind,
    lang: Lang,
    own: Option<TemplateOverride>,
    platform: Option<TemplateOverride>,
) -> EmailTemplate {
    let own_meta = own
        .as_ref()
        .map(|o| (etag(o.version), o.update_time, o.updated_by.clone()));
    let (source, origin) = match (own, platform, scope) {
        (Some(o), _, Scope::Platform) => (o.source, Origin::Platform),
        (Some(o), _, Scope::Organisation(_)) => (o.source, Origin::Organisation),
        (None, Some(p), _) => (p.source, Origin::Platform),
        (None, None, _) => (kind.builtin(lang).clone(), Origin::Builtin),
    };
    EmailTemplate {
        scope: scope.clone(),
        kind,
        lang,
        source,
        origin,
        own: own_meta,
    }
}

/// The kind of a request, which is required.
fn kind_and_lang_free(kind: Option<EmailKind>, v: &mut Violations) -> Option<EmailKind> {
    if kind.is_none() {
        v.add("kind", "is required: one of the EMAIL_KIND_* values");
    }
    kind
}

/// The kind and language of a request: a kind, and one of [`Lang::ALL`].
pub fn kind_and_lang(
    kind: Option<EmailKind>,
    locale: &str,
    v: &mut Violations,
) -> Option<(EmailKind, Lang)> {
    let kind = kind_and_lang_free(kind, v);
    let lang = Lang::exactly(locale);
    if lang.is_none() {
        v.add(
            "locale",
            format!(
                "must be one of the languages of the built-in emails: {}",
                Lang::ALL.map(Lang::as_str).join(", ")
            ),
        );
    }
    kind.zip(lang)
}

/// Checks a draft: its kind and language, each template's size, the sandbox, and a
/// rendering over the kind's sample values.
fn check_draft(draft: &TemplateDraft) -> Result<(EmailKind, Lang), Violations> {
    let mut v = Violations::new();
    let chosen = kind_and_lang(draft.kind, &draft.locale, &mut v);
    let source = &draft.source;
    v.check(
        "template.subject",
        validation::text(&source.subject, true, MAX_SUBJECT_BYTES),
    );
    if let Err(why) = body(&source.text, true) {
        v.add("template.text_body", why);
    }
    if let Err(why) = body(&source.html, false) {
        v.add("template.html_body", why);
    } else if sandbox::parse(&source.html).is_ok_and(|t| sandbox::prints_unescaped(&t)) {
        // A name or an address would go into the HTML unescaped: markup of the caller's
        // choosing in an email the platform signs. (A template that does not parse is
        // reported below.)
        v.add(
            "template.html_body",
            "values are escaped in HTML: `{{{value}}}` and `{{&value}}` are not allowed",
        );
    }
    if draft.kind.is_some_and(EmailKind::carries_token) && mentions(&source.subject, "link") {
        // A message's subject is stored and listed in clear (ListMessages, manageConfig,
        // and the export): the link (the token) stays in the bodies, which are sealed. The
        // subject is rendered without it whatever it says; this says so when saved.
        v.add(
            "template.subject",
            "must not show the link: a message's subject is stored and listed in clear, \
             and the link carries the token",
        );
    }
    if !v.is_empty() {
        return Err(v);
    }
    builtin::check_source(source, "template.")?;
    let (kind, lang) = chosen.expect("checked above");
    let sample = Chosen {
        lang,
        source: Arc::new(source.clone()),
        platform: "mailroom".into(),
    };
    let values = preview::samples(
        kind,
        "acme",
        UNIX_EPOCH + std::time::Duration::from_secs(1_764_057_600),
    );
    let rendered = builtin::render(&sample, &values);
    if let Ok(rendered) = &rendered {
        if rendered.subject.len() > MAX_SAMPLE_SUBJECT_BYTES {
            return Err(validation::violation(
                "template.subject",
                format!(
                    "renders to {} bytes over the sample values; at most \
                     {MAX_SAMPLE_SUBJECT_BYTES}, so that longer names still fit a subject",
                    rendered.subject.len()
                ),
            ));
        }
    }
    if let Err(e) = rendered {
        let mut renamed = Violations::new();
        for violation in e.iter() {
            renamed.add(
                format!("template.{}", violation.field),
                format!(
                    "does not render over sample values: {}",
                    violation.description
                ),
            );
        }
        return Err(renamed);
    }
    Ok((kind, lang))
}

/// Whether an expression (`{{…}}`) of `template` names `value`: `{{value}}`,
/// `{{#with value}}`, `{{this.value}}`, `{{[value]}}`, `{{../value}}`…
fn mentions(template: &str, value: &str) -> bool {
    template.split("{{").skip(1).any(|rest| {
        let expression = rest.split("}}").next().unwrap_or_default();
        expression
            .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '-'))
            .any(|word| word == value)
    })
}

/// Checks a body template: at most [`MAX_BODY_BYTES`], no control characters but line
/// ends and tabs.
fn body(template: &str, required: bool) -> Result<(), String> {
    if template.is_empty() && required {
        return Err("is required".into());
    }
    if template.len() > MAX_BODY_BYTES {
        return Err(format!(
            "is {} bytes; at most {MAX_BODY_BYTES}",
            template.len()
        ));
    }
    if template
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Err("must not contain control characters other than line ends and tabs".into());
    }
    Ok(())
}
