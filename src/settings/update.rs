//! How an update of the SMTP settings applies: the field mask (which fields a request
//! replaces), the merge of a draft into the stored settings with every rule checked, what
//! happens to each stored secret, and the rule that a stored secret is reused only on terms
//! at least as strict as those it was given with ([`weakened`]).

use super::*;

/// The settings fields an update mask may name; a message name covers its fields.
pub(super) const FIELDS: &[&str] = &[
    "host",
    "port",
    "from",
    "security",
    "username",
    "password",
    "tls.ca_certificates_pem",
    "tls.accept_invalid_certificates",
    "tls.server_name",
    "tls.client_certificate_pem",
    "tls.client_key_pem",
    "helo_name",
    "timeout",
    "token_expiration.reset_password",
    "token_expiration.invitation",
    "link_origins",
    "sender_domains",
    "auth.mechanism",
    "auth.oauth2.provider",
    "auth.oauth2.tenant_id",
    "auth.oauth2.token_url",
    "auth.oauth2.client_id",
    "auth.oauth2.client_secret",
    "auth.oauth2.scope",
    "auth.oauth2.private_key_pem",
    "auth.oauth2.subject",
];

/// Fields that are output only: naming them in a mask is a mistake worth reporting.
pub(super) const OUTPUT_FIELDS: &[&str] = &[
    "password_set",
    "tls.client_key_set",
    "auth.oauth2.client_secret_set",
    "auth.oauth2.private_key_set",
    "etag",
    "update_time",
    "updated_by",
    "configured",
];

/// Which fields an update changes: every field for an empty mask.
pub(super) struct Mask {
    fields: BTreeSet<&'static str>,
    explicit: bool,
}

impl Mask {
    pub(super) fn parse(paths: &[String], violations: &mut Violations) -> Self {
        if paths.is_empty() {
            return Self {
                fields: FIELDS.iter().copied().collect(),
                explicit: false,
            };
        }
        let mut fields = BTreeSet::new();
        for path in paths {
            let covered: Vec<&'static str> = FIELDS
                .iter()
                .copied()
                .filter(|f| {
                    *f == path
                        || f.strip_prefix(path.as_str())
                            .is_some_and(|r| r.starts_with('.'))
                })
                .collect();
            if covered.is_empty() {
                let why = if OUTPUT_FIELDS.contains(&path.as_str()) {
                    format!("`{path}` is output only")
                } else {
                    format!("`{path}` is not a field of SmtpSettings")
                };
                violations.add("update_mask", why);
            }
            fields.extend(covered);
        }
        Self {
            fields,
            explicit: true,
        }
    }

    pub(super) fn has(&self, field: &str) -> bool {
        self.fields.contains(field)
    }
}

/// What to do with a stored secret.
pub(super) enum SecretChange {
    Keep,
    Set(SecretString),
    Clear,
}

impl SecretChange {
    /// An empty value keeps the stored secret on a full replace (secrets are never read
    /// back, so a read-modify-write cannot carry them), and clears it when the mask names
    /// the field.
    pub(super) fn decide(mask: &Mask, field: &str, given: SecretString) -> Self {
        match (
            mask.has(field),
            given.expose_secret().is_empty(),
            mask.explicit,
        ) {
            (false, _, _) => Self::Keep,
            (true, false, _) => Self::Set(given),
            (true, true, true) => Self::Clear,
            (true, true, false) => Self::Keep,
        }
    }

    pub(super) fn apply(
        self,
        key: &MasterKey,
        purpose: &str,
        stored: Option<Sealed>,
    ) -> Option<Sealed> {
        match self {
            Self::Keep => stored,
            Self::Set(plain) => Some(key.seal(purpose, plain.expose_secret())),
            Self::Clear => None,
        }
    }
}

/// The settings `draft` makes of `current`, or every violation found.
pub(super) fn merge(
    current: Option<&SmtpSettings>,
    draft: SettingsDraft,
    mask: &[String],
    key: &MasterKey,
    now: SystemTime,
    updated_by: &str,
) -> Result<SmtpSettings, Violations> {
    let mut v = Violations::new();
    let mask = Mask::parse(mask, &mut v);
    let pick = |field: &str, given: String, stored: Option<&str>| -> String {
        if mask.has(field) {
            given
        } else {
            stored.unwrap_or_default().to_string()
        }
    };
    let host = pick("host", draft.host, current.map(|c| c.host.as_str()));
    let port = if mask.has("port") {
        draft.port
    } else {
        current.map_or(0, |c| u32::from(c.port))
    };
    let from = pick("from", draft.from, current.map(|c| c.from.as_str()));
    let security = if mask.has("security") {
        draft.security
    } else {
        Some(current.map(|c| c.security).unwrap_or_default())
    };
    let username = pick(
        "username",
        draft.username,
        current.map(|c| c.username.as_str()),
    );
    let ct = current.map(|c| &c.tls);
    let ca = pick(
        "tls.ca_certificates_pem",
        draft.tls.ca_certificates_pem,
        ct.map(|t| t.ca_certificates_pem.as_str()),
    );
    let accept_invalid = if mask.has("tls.accept_invalid_certificates") {
        draft.tls.accept_invalid_certificates
    } else {
        ct.is_some_and(|t| t.accept_invalid_certificates)
    };
    let server_name = pick(
        "tls.server_name",
        draft.tls.server_name,
        ct.map(|t| t.server_name.as_str()),
    );
    let client_cert = pick(
        "tls.client_certificate_pem",
        draft.tls.client_certificate_pem,
        ct.map(|t| t.client_certificate_pem.as_str()),
    );
    let helo_name = pick(
        "helo_name",
        draft.helo_name,
        current.map(|c| c.helo_name.as_str()),
    );
    let duration = |field: &str, given: Option<Duration>, stored: Option<Duration>, default| {
        if mask.has(field) {
            given.unwrap_or(default)
        } else {
            stored.unwrap_or(default)
        }
    };
    let timeout = duration(
        "timeout",
        draft.timeout,
        current.map(|c| c.timeout),
        DEFAULT_TIMEOUT,
    );
    let reset = duration(
        "token_expiration.reset_password",
        draft.reset_password_expiration,
        current.map(|c| c.reset_password_expiration),
        DEFAULT_RESET_PASSWORD,
    );
    let invitation = duration(
        "token_expiration.invitation",
        draft.invitation_expiration,
        current.map(|c| c.invitation_expiration),
        DEFAULT_INVITATION,
    );
    let list = |field: &str, given: Vec<String>, stored: Vec<String>| {
        if mask.has(field) {
            given
        } else {
            stored
        }
    };
    let link_origins = list(
        "link_origins",
        draft.link_origins,
        current.map_or_else(Vec::new, |c| {
            c.link_origins.iter().cloned().map(String::from).collect()
        }),
    );
    let sender_domains = list(
        "sender_domains",
        draft.sender_domains,
        current.map_or_else(Vec::new, |c| {
            c.sender_domains.iter().cloned().map(String::from).collect()
        }),
    );
    let password = SecretChange::decide(&mask, "password", draft.password);
    let stored_auth = current.map(|c| &c.auth);
    let co = stored_auth.and_then(|a| a.oauth2.as_ref());
    let mechanism = if mask.has("auth.mechanism") {
        draft.auth.mechanism
    } else {
        Some(stored_auth.map(|a| a.mechanism).unwrap_or_default())
    };
    let od = draft.auth.oauth2;
    let provider = if mask.has("auth.oauth2.provider") {
        od.provider
    } else {
        Some(co.map(|o| o.provider).unwrap_or_default())
    };
    let tenant_id = pick(
        "auth.oauth2.tenant_id",
        od.tenant_id,
        co.map(|o| o.tenant_id.as_str()),
    );
    let token_url = pick(
        "auth.oauth2.token_url",
        od.token_url,
        co.map(|o| o.token_url.as_str()),
    );
    let client_id = pick(
        "auth.oauth2.client_id",
        od.client_id,
        co.map(|o| o.client_id.as_str()),
    );
    let scope = pick("auth.oauth2.scope", od.scope, co.map(|o| o.scope.as_str()));
    let subject = pick(
        "auth.oauth2.subject",
        od.subject,
        co.map(|o| o.subject.as_str()),
    );
    let client_secret = SecretChange::decide(&mask, "auth.oauth2.client_secret", od.client_secret);
    // A key pasted from a service account's JSON file keeps its `\n`s.
    let private_key_pem = auth::unescape_pem(od.private_key_pem.expose_secret())
        .map_or(od.private_key_pem, SecretString::from);
    let private_key = SecretChange::decide(&mask, "auth.oauth2.private_key_pem", private_key_pem);
    // On a full replace, the one secret given says which grant: the other one goes.
    let (client_secret, private_key) = match (mask.explicit, client_secret, private_key) {
        (false, SecretChange::Keep, key @ SecretChange::Set(_)) => (SecretChange::Clear, key),
        (false, secret @ SecretChange::Set(_), SecretChange::Keep) => (secret, SecretChange::Clear),
        (_, secret, key) => (secret, key),
    };
    let client_key = SecretChange::decide(&mask, "tls.client_key_pem", draft.tls.client_key_pem);

    let host = v.check("settings.host", Host::try_from(host));
    let port = v.check("settings.port", Port::try_from(port));
    let from = v.check("settings.from", FromAddress::try_from(from));
    if security.is_none() {
        v.add(
            "settings.security",
            "is not a known ConnectionSecurity value",
        );
    }
    v.check("settings.username", validation::text(&username, false, 256));
    if let SecretChange::Set(p) = &password {
        v.check(
            "settings.password",
            validation::text(p.expose_secret(), false, 1024),
        );
        if username.is_empty() {
            v.add("settings.username", "is required when a password is set");
        }
    }
    if !ca.is_empty() {
        v.check(
            "settings.tls.ca_certificates_pem",
            fields::certificates_pem(&ca),
        );
    }
    if !server_name.is_empty() {
        v.check(
            "settings.tls.server_name",
            Host::try_from(server_name.clone()),
        );
    }
    let certificate_read = client_cert.is_empty()
        || v.check(
            "settings.tls.client_certificate_pem",
            fields::certificates_pem(&client_cert),
        )
        .is_some();
    let key_read = match &client_key {
        SecretChange::Set(k) => v
            .check(
                "settings.tls.client_key_pem",
                fields::private_key_pem(k.expose_secret()),
            )
            .is_some(),
        _ => true,
    };
    // The certificate and its key as TLS will use them, whenever either is new: each
    // certificate X.509, a key TLS signs with, and the certificate's own.
    let certificate_changed =
        ct.map(|t| t.client_certificate_pem.as_str()) != Some(client_cert.as_str());
    let pair_key = match &client_key {
        SecretChange::Set(k) => Some(k.clone()),
        SecretChange::Keep if certificate_changed => {
            current.and_then(|c| c.client_key_pem(key).ok().flatten())
        }
        _ => None,
    };
    if let (false, true, true, Some(k)) =
        (client_cert.is_empty(), certificate_read, key_read, pair_key)
    {
        if let Err((field, why)) = ClientIdentity::parse(&client_cert, k.expose_secret()) {
            v.add(format!("settings.{}", field.name()), why);
        }
    }
    let key_stored = ct.is_some_and(|t| t.client_key.is_some());
    let has_key = match &client_key {
        SecretChange::Keep => key_stored,
        SecretChange::Set(_) => true,
        SecretChange::Clear => false,
    };
    if !client_cert.is_empty() && !has_key {
        v.add(
            "settings.tls.client_key_pem",
            "is required with a client certificate",
        );
    }
    if client_cert.is_empty() && has_key {
        v.add(
            "settings.tls.client_certificate_pem",
            "is required with a client key",
        );
    }
    if !helo_name.is_empty() {
        v.check("settings.helo_name", Host::try_from(helo_name.clone()));
    }
    v.check("settings.timeout", within(timeout, TIMEOUT_RANGE));
    v.check(
        "settings.token_expiration.reset_password",
        within(reset, RESET_PASSWORD_RANGE),
    );
    v.check(
        "settings.token_expiration.invitation",
        within(invitation, INVITATION_RANGE),
    );
    let link_origins = checked_list::<LinkOrigin>(&mut v, "settings.link_origins", link_origins);
    let sender_domains =
        checked_list::<SenderDomain>(&mut v, "settings.sender_domains", sender_domains);
    if let (Some(from), Some(domains)) = (&from, &sender_domains) {
        if !domains.is_empty() {
            v.check(
                "settings.from",
                sender_within(domains, from, &from.mailbox()),
            );
        }
    }

    let xoauth2 = mechanism == Some(Mechanism::Xoauth2);
    check_auth(
        &mut v,
        mechanism,
        security,
        &username,
        &password,
        co,
        provider,
        (&tenant_id, &token_url, &client_id, &scope, &subject),
        (&client_secret, &private_key),
    );

    // A stored secret stays only on terms at least as strict as those it was given with.
    if let Some(c) = current {
        let next = Terms {
            host: host.as_ref(),
            port,
            security,
            tls: (&ca, accept_invalid, &server_name),
        };
        let mut why = weakened(c, &next);
        let keeps_key = c.tls.client_key.is_some() && matches!(client_key, SecretChange::Keep);
        if keeps_key && !client_cert.is_empty() && !why.is_empty() {
            v.add(
                "settings.tls.client_key_pem",
                required_again("client key", &why),
            );
        }
        if c.username != username {
            why.insert(0, "username changed".into());
        }
        let keeps_password = c.password.is_some() && matches!(password, SecretChange::Keep);
        if keeps_password && !xoauth2 && !username.is_empty() && !why.is_empty() {
            v.add("settings.password", required_again("password", &why));
        }
        // The OAuth2 client's secrets travel to the token endpoint, and the token they get
        // to the SMTP server: a change of either path, or of who they act for, needs them.
        if let (Some(co), true, Some(provider)) = (co, xoauth2, provider) {
            let mut why = why;
            if provider != co.provider {
                why.push("auth.oauth2.provider changed".into());
            }
            if auth::effective_token_url(provider, &tenant_id, &token_url) != co.token_url() {
                why.push("auth.oauth2.token_url changed".into());
            }
            if client_id != co.client_id {
                why.push("auth.oauth2.client_id changed".into());
            }
            if co.client_secret.is_some()
                && matches!(client_secret, SecretChange::Keep)
                && !why.is_empty()
            {
                v.add(
                    "settings.auth.oauth2.client_secret",
                    required_again("client secret", &why),
                );
            }
            if auth::effective_subject(provider, &subject, &username) != co.subject(&c.username) {
                why.push("auth.oauth2.subject changed".into());
            }
            if co.private_key.is_some()
                && matches!(private_key, SecretChange::Keep)
                && !why.is_empty()
            {
                v.add(
                    "settings.auth.oauth2.private_key_pem",
                    required_again("private key", &why),
                );
            }
        }
    }

    let (
        Some(host),
        Some(port),
        Some(from),
        Some(security),
        Some(link_origins),
        Some(sender_domains),
    ) = (host, port, from, security, link_origins, sender_domains)
    else {
        return Err(v);
    };
    // An access token takes the password's place.
    let password = if username.is_empty() || xoauth2 {
        None
    } else {
        password.apply(
            key,
            PASSWORD_PURPOSE,
            current.and_then(|c| c.password.clone()),
        )
    };
    let client_key = client_key.apply(
        key,
        CLIENT_KEY_PURPOSE,
        ct.and_then(|t| t.client_key.clone()),
    );
    let oauth2 = xoauth2.then(|| OAuth2 {
        provider: provider.unwrap_or_default(),
        tenant_id,
        token_url,
        client_id,
        client_secret: client_secret.apply(
            key,
            CLIENT_SECRET_PURPOSE,
            co.and_then(|o| o.client_secret.clone()),
        ),
        scope,
        private_key: private_key.apply(
            key,
            PRIVATE_KEY_PURPOSE,
            co.and_then(|o| o.private_key.clone()),
        ),
        subject,
    });
    v.into_result(SmtpSettings {
        host,
        port,
        from,
        security,
        username,
        password,
        tls: Tls {
            ca_certificates_pem: ca,
            accept_invalid_certificates: accept_invalid,
            server_name,
            client_certificate_pem: client_cert,
            client_key,
        },
        helo_name,
        timeout,
        reset_password_expiration: reset,
        invitation_expiration: invitation,
        link_origins,
        sender_domains,
        auth: Auth {
            mechanism: mechanism.unwrap_or_default(),
            oauth2,
        },
        revision: current.map_or(0, |c| c.revision) + 1,
        update_time: now,
        updated_by: updated_by.to_string(),
    })
}

/// The login fields of an update, checked (violations in `v`): with XOAUTH2, a username,
/// an encrypted connection, no password, and an OAuth2 client with one secret that its
/// provider's grant uses.
#[allow(clippy::too_many_arguments)]
pub(super) fn check_auth(
    v: &mut Violations,
    mechanism: Option<Mechanism>,
    security: Option<Security>,
    username: &str,
    password: &SecretChange,
    stored: Option<&OAuth2>,
    provider: Option<Provider>,
    (tenant_id, token_url, client_id, scope, subject): (&str, &str, &str, &str, &str),
    (client_secret, private_key): (&SecretChange, &SecretChange),
) {
    const F: &str = "settings.auth.oauth2";
    let Some(mechanism) = mechanism else {
        v.add(
            "settings.auth.mechanism",
            "is not a known AuthMechanism value",
        );
        return;
    };
    let Some(provider) = provider else {
        v.add(
            format!("{F}.provider"),
            "is not a known OAuth2Provider value",
        );
        return;
    };
    if mechanism != Mechanism::Xoauth2 {
        for (secret, field) in [
            (client_secret, "client_secret"),
            (private_key, "private_key_pem"),
        ] {
            if matches!(secret, SecretChange::Set(_)) {
                v.add(
                    format!("{F}.{field}"),
                    "is used only with auth.mechanism XOAUTH2",
                );
            }
        }
        return;
    }
    if username.is_empty() {
        v.add(
            "settings.username",
            "is required with auth.mechanism XOAUTH2: the mailbox to log in as",
        );
    }
    if security == Some(Security::None) {
        v.add(
            "settings.auth.mechanism",
            "XOAUTH2 sends a bearer token, only over an encrypted connection: it needs \
             security STARTTLS or SSL (or STARTTLS_OPPORTUNISTIC, whose AUTH then fails \
             when STARTTLS is not offered), not NONE",
        );
    }
    if matches!(password, SecretChange::Set(_)) {
        v.add(
            "settings.password",
            "is not used with auth.mechanism XOAUTH2 (an access token takes its place): \
             leave it empty",
        );
    }
    v.check(
        &format!("{F}.client_id"),
        validation::text(client_id, true, 256),
    );
    v.check(&format!("{F}.scope"), validation::text(scope, false, 1024));
    v.check(
        &format!("{F}.subject"),
        validation::text(subject, false, 320),
    );
    if !tenant_id.is_empty() {
        v.check(&format!("{F}.tenant_id"), auth::tenant_id(tenant_id));
    }
    let effective = auth::effective_token_url(provider, tenant_id, token_url);
    if effective.is_empty() {
        let (field, why) = match provider {
            Provider::Microsoft365 => (
                "tenant_id",
                "is required with provider MICROSOFT_365 (or give token_url)",
            ),
            _ => (
                "token_url",
                "is required with XOAUTH2 (or choose a provider: MICROSOFT_365, GOOGLE)",
            ),
        };
        v.add(format!("{F}.{field}"), why);
    } else {
        v.check(&format!("{F}.token_url"), auth::token_url(&effective));
    }
    if let SecretChange::Set(secret) = client_secret {
        v.check(
            &format!("{F}.client_secret"),
            validation::text(secret.expose_secret(), false, 1024),
        );
    }
    if let SecretChange::Set(pem) = private_key {
        v.check(
            &format!("{F}.private_key_pem"),
            auth::private_key_pem(pem.expose_secret()),
        );
    }
    let has = |change: &SecretChange, stored: bool| match change {
        SecretChange::Keep => stored,
        SecretChange::Set(_) => true,
        SecretChange::Clear => false,
    };
    let has_secret = has(
        client_secret,
        stored.is_some_and(|o| o.client_secret.is_some()),
    );
    let has_key = has(private_key, stored.is_some_and(|o| o.private_key.is_some()));
    match (has_secret, has_key) {
        (false, false) => v.add(
            format!("{F}.client_secret"),
            "is required with XOAUTH2: a client secret (client-credentials grant), or \
             auth.oauth2.private_key_pem (JWT-bearer grant)",
        ),
        (true, true) => v.add(
            format!("{F}.private_key_pem"),
            "give either client_secret or private_key_pem, not both (clear the other by \
             naming it in update_mask with an empty value)",
        ),
        _ => {}
    }
    if provider == Provider::Google && !has_key {
        v.add(
            format!("{F}.private_key_pem"),
            "is required with provider GOOGLE: the service account's key (Google's SMTP \
             takes the JWT-bearer grant of a service account with domain-wide delegation)",
        );
    }
    // Microsoft's certificate credentials are a client-credentials grant authenticated by a
    // `client_assertion` (a JWT whose header carries the certificate's `x5t#S256`, with
    // `jti`), not the JWT-bearer grant mailroom signs for Google: sent to Microsoft, that
    // grant is refused. Said here, at the update, rather than at the first send.
    if has_key && (provider == Provider::Microsoft365 || auth::is_microsoft_endpoint(&effective)) {
        v.add(
            format!("{F}.private_key_pem"),
            "Microsoft 365 certificate credentials (a client assertion signed with the \
             application's certificate) are not supported: give the application's client \
             secret (auth.oauth2.client_secret) instead",
        );
    }
    if provider == Provider::Microsoft365 && !has_secret {
        v.add(
            format!("{F}.client_secret"),
            "is required with provider MICROSOFT_365: the application's client secret",
        );
    }
}

/// Each entry of a list setting parsed as a `T` (violations on `field[i]`), at most
/// [`MAX_LIST`] of them, duplicates dropped.
pub(super) fn checked_list<T>(v: &mut Violations, field: &str, given: Vec<String>) -> Option<Vec<T>>
where
    T: TryFrom<String, Error = String> + PartialEq,
{
    if given.len() > MAX_LIST {
        v.add(field, format!("must hold at most {MAX_LIST} entries"));
        return None;
    }
    let mut list: Vec<T> = Vec::with_capacity(given.len());
    let mut ok = true;
    for (i, value) in given.into_iter().enumerate() {
        match T::try_from(value) {
            Ok(item) if !list.contains(&item) => list.push(item),
            Ok(_) => {}
            Err(why) => {
                v.add(format!("{field}[{i}]"), why);
                ok = false;
            }
        }
    }
    ok.then_some(list)
}

/// Where and how a stored secret would travel under new settings.
pub(super) struct Terms<'a> {
    host: Option<&'a Host>,
    port: Option<Port>,
    security: Option<Security>,
    /// CA certificates, accept invalid certificates, server name.
    tls: (&'a str, bool, &'a str),
}

/// Why `next` would send a secret stored with `stored` elsewhere or less protected: the
/// changes that weaken where or how it travels (empty: none). The username, which concerns
/// the password only, is the caller's to add.
pub(super) fn weakened(stored: &SmtpSettings, next: &Terms<'_>) -> Vec<String> {
    let mut why = Vec::new();
    if next.host != Some(&stored.host) {
        why.push("host changed".to_string());
    }
    if next.port != Some(stored.port) {
        why.push("port changed".to_string());
    }
    if let Some(security) = next.security {
        if security.strength() < stored.security.strength() {
            why.push(format!(
                "security lowered from {} to {}",
                stored.security.name(),
                security.name()
            ));
        }
    }
    let (ca, accept_invalid, server_name) = next.tls;
    if accept_invalid && !stored.tls.accept_invalid_certificates {
        why.push("tls.accept_invalid_certificates turned on".to_string());
    }
    if server_name != stored.tls.server_name {
        why.push("tls.server_name changed".to_string());
    }
    if ca != stored.tls.ca_certificates_pem {
        why.push("tls.ca_certificates_pem changed".to_string());
    }
    why
}

/// The violation of a stored secret that the new settings would weaken.
pub(super) fn required_again(secret: &str, why: &[String]) -> String {
    format!(
        "is required again ({}): the stored {secret} is reused only on terms at least as \
         strict as those it was given with",
        why.join(", ")
    )
}

pub(super) fn within(value: Duration, (min, max): (Duration, Duration)) -> Result<(), String> {
    if value < min || value > max {
        Err(format!(
            "must be between {} and {}, not {}",
            human(min),
            human(max),
            human(value)
        ))
    } else {
        Ok(())
    }
}
