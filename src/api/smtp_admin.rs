//! `mailroom.v1.SmtpAdmin`: the SMTP settings (permission managePlatform).

use tonic::{Request, Response, Status};

use super::convert;
use super::status::invalid;
use crate::mail::probe;
use crate::notify::EmailKind;
use crate::proto::v1 as pb;
use crate::proto::v1::smtp_admin_server::SmtpAdmin;
use crate::settings::SettingsService;
use crate::templates::{Scope, TemplateService};
use crate::validation::violation;

/// The SmtpAdmin service.
pub struct SmtpAdminApi {
    settings: SettingsService,
    /// The test email's templates.
    templates: TemplateService,
}

impl SmtpAdminApi {
    /// The service over `settings`, its test email from `templates`.
    pub fn new(settings: SettingsService, templates: TemplateService) -> Self {
        Self {
            settings,
            templates,
        }
    }
}

#[tonic::async_trait]
impl SmtpAdmin for SmtpAdminApi {
    async fn get_smtp_settings(
        &self,
        request: Request<pb::GetSmtpSettingsRequest>,
    ) -> Result<Response<pb::SmtpSettings>, Status> {
        super::caller(&request)?;
        let settings = self.settings.get().await?;
        Ok(Response::new(convert::settings(settings.as_deref())))
    }

    async fn update_smtp_settings(
        &self,
        request: Request<pb::UpdateSmtpSettingsRequest>,
    ) -> Result<Response<pb::SmtpSettings>, Status> {
        let caller = super::caller(&request)?;
        let request = request.into_inner();
        let settings = request
            .settings
            .ok_or_else(|| invalid(&violation("settings", "is required")))?;
        let mask = request.update_mask.map(|m| m.paths).unwrap_or_default();
        let updated = self
            .settings
            .update(settings.into(), &mask, &caller.key_name)
            .await?;
        tracing::info!(etag = %updated.etag(), host = %updated.host, port = updated.port.get(), "SMTP settings updated");
        Ok(Response::new(convert::settings(Some(&updated))))
    }

    async fn test_smtp_settings(
        &self,
        request: Request<pb::TestSmtpSettingsRequest>,
    ) -> Result<Response<pb::TestSmtpSettingsResponse>, Status> {
        let caller = super::caller(&request)?;
        let request = request.into_inner();
        let to = probe::recipient(&request.recipient)
            .map_err(|why| invalid(&violation("recipient", why)))?;
        crate::locale::tag(&request.locale).map_err(|why| invalid(&violation("locale", why)))?;
        let settings = self
            .settings
            .candidate(request.settings.map(Into::into))
            .await?;
        let now = self.settings.now();
        let email = self
            .templates
            .render(
                &Scope::Organisation(caller.organisation.clone()),
                EmailKind::SmtpTest,
                &request.locale,
                &probe::test_values(&settings, now),
            )
            .await?;
        let report = probe::run(
            &settings,
            self.settings.master_key(),
            self.settings.address_guard(),
            self.settings.oauth2_tokens(),
            &to,
            &email,
            now,
        )
        .await;
        tracing::info!(
            success = report.success,
            host = %settings.host,
            port = settings.port.get(),
            summary = %report.summary,
            "SMTP settings tested"
        );
        Ok(Response::new(report.into()))
    }
}
