//! The built-in emails — password reset, invitation, the three account notices, the SMTP
//! test — in every language of [`Lang::ALL`], and how one is rendered for a recipient.
//!
//! Each is a set of three Handlebars templates (subject, text body, HTML body) per
//! language, read from `locales/<lang>/<kind>.{subject,txt,html}` when the binary is built;
//! the HTML body is put inside the one layout (`locales/layout.html`) and each body ends
//! with the language's footer. Templates, not message bundles: a built-in is the very
//! template an organisation starts from to override it (`templates::TemplateService`), in
//! the one template language and sandbox notifier templates already use.
//!
//! Which template and language a recipient gets is asked of [`EmailSources`]: the
//! templates service (organisation override → platform override → built-in, and the
//! organisation's default locale), or [`BuiltinOnly`] where none is wired.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::template::{BodyFormat, Data, TemplateCache};
use super::{NotifyError, NotifyService, MAX_HEADER_BYTES};
use crate::locale::{self, Lang};
use crate::ports::StoreError;
use crate::validation::Violations;

/// The platform's name in emails when none is configured.
pub const DEFAULT_PLATFORM_NAME: &str = "mailroom";

/// Which built-in email.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum EmailKind {
    /// The password-reset link (IssueToken, purpose PASSWORD_RESET).
    PasswordReset,
    /// The invitation link (IssueToken, purpose INVITATION).
    Invitation,
    /// Account notice: the password was changed.
    PasswordChanged,
    /// Account notice: the password was reset.
    PasswordResetNotice,
    /// Account notice: the email address was changed.
    EmailChanged,
    /// The email of TestSmtpSettings.
    SmtpTest,
}

/// Values every kind receives.
const COMMON: [&str; 3] = ["platform", "organisation", "locale"];

impl EmailKind {
    /// Every kind.
    pub const ALL: [EmailKind; 6] = [
        EmailKind::PasswordReset,
        EmailKind::Invitation,
        EmailKind::PasswordChanged,
        EmailKind::PasswordResetNotice,
        EmailKind::EmailChanged,
        EmailKind::SmtpTest,
    ];

    /// Its name in files and keys (`password_reset`).
    pub fn name(self) -> &'static str {
        match self {
            EmailKind::PasswordReset => "password_reset",
            EmailKind::Invitation => "invitation",
            EmailKind::PasswordChanged => "password_changed",
            EmailKind::PasswordResetNotice => "password_reset_notice",
            EmailKind::EmailChanged => "email_changed",
            EmailKind::SmtpTest => "smtp_test",
        }
    }

    /// The kind named `name` (see [`EmailKind::name`]).
    pub fn named(name: &str) -> Option<EmailKind> {
        EmailKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The values its templates receive besides `platform`, `organisation` and `locale`
    /// (documented in the proto and the README; a test checks the built-ins use no other).
    pub fn own_values(self) -> &'static [&'static str] {
        match self {
            EmailKind::PasswordReset | EmailKind::Invitation => {
                &["name", "login", "link", "validity", "expires"]
            }
            EmailKind::PasswordChanged | EmailKind::PasswordResetNotice => {
                &["name", "login", "time"]
            }
            EmailKind::EmailChanged => &["name", "login", "time", "previous", "current"],
            EmailKind::SmtpTest => &[
                "time", "host", "port", "security", "helo", "username", "sender",
            ],
        }
    }

    /// Whether it carries a token's secret (in `link`): a template of it could send the
    /// secret anywhere (a remote image's address), so that overriding it is for those who
    /// may issue tokens anyway.
    pub fn carries_token(self) -> bool {
        matches!(self, EmailKind::PasswordReset | EmailKind::Invitation)
    }

    /// Every value its templates receive.
    pub fn values(self) -> impl Iterator<Item = &'static str> {
        COMMON.into_iter().chain(self.own_values().iter().copied())
    }

    /// Whether `name` is one of its values given as a time (in words in the recipient's
    /// language) or a length of time (likewise).
    pub fn value_type(name: &str) -> ValueType {
        match name {
            "time" | "expires" => ValueType::Time,
            "validity" => ValueType::Length,
            _ => ValueType::Text,
        }
    }

    /// Its built-in template in `lang`.
    pub fn builtin(self, lang: Lang) -> &'static EmailSource {
        &BUILTINS[self as usize * Lang::ALL.len() + lang as usize]
    }
}

/// How a value is given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueType {
    /// As it is.
    Text,
    /// A time: rendered as a date in words in the recipient's language.
    Time,
    /// A length of time: rendered in words in the recipient's language.
    Length,
}

/// An email's three templates (Handlebars).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmailSource {
    /// The subject.
    pub subject: String,
    /// The text body (always sent).
    pub text: String,
    /// The HTML body, sent with the text as its alternative; none when empty.
    pub html: String,
}

/// A value given to an email's templates.
#[derive(Clone, Debug, PartialEq)]
pub enum EmailValue {
    /// Inserted as it is (escaped in HTML).
    Text(String),
    /// A time, as a date in words in the recipient's language.
    Time(SystemTime),
    /// A length of time, in words in the recipient's language.
    Length(Duration),
}

impl From<&str> for EmailValue {
    fn from(s: &str) -> Self {
        EmailValue::Text(s.to_string())
    }
}

impl From<String> for EmailValue {
    fn from(s: String) -> Self {
        EmailValue::Text(s)
    }
}

/// The values of one email, by name.
pub type EmailValues = BTreeMap<String, EmailValue>;

/// A rendered email.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenderedEmail {
    /// Subject.
    pub subject: String,
    /// Text body.
    pub text: String,
    /// HTML body, when there is one.
    pub html: Option<String>,
}

/// The template of an email for one recipient, and what it renders with.
#[derive(Clone, Debug)]
pub struct Chosen {
    /// The language chosen for the recipient.
    pub lang: Lang,
    /// The template: an override's, or the built-in.
    pub source: Arc<EmailSource>,
    /// The platform's name (value `platform`).
    pub platform: String,
}

/// Where the template of an email comes from (`templates::TemplateService`: overrides and
/// the organisations' default locales).
#[async_trait]
pub trait EmailSources: Send + Sync {
    /// The template of `kind` for a recipient of `organisation` whose own locale is
    /// `locale` (a BCP 47 tag, or empty), and the language chosen.
    async fn email_source(
        &self,
        organisation: &str,
        kind: EmailKind,
        locale: &str,
    ) -> Result<Chosen, StoreError>;
}

/// The built-in emails alone, in the recipient's own language or English.
pub struct BuiltinOnly;

#[async_trait]
impl EmailSources for BuiltinOnly {
    async fn email_source(
        &self,
        _: &str,
        kind: EmailKind,
        locale: &str,
    ) -> Result<Chosen, StoreError> {
        let lang = locale::choose(locale, "");
        Ok(Chosen {
            lang,
            source: Arc::new(kind.builtin(lang).clone()),
            platform: DEFAULT_PLATFORM_NAME.to_string(),
        })
    }
}

/// Compiled email templates, built-in and overrides, bounded in bytes.
static COMPILED: LazyLock<TemplateCache> = LazyLock::new(|| TemplateCache::new(32 * 1024 * 1024));

/// Checks an email's templates in the notifier's sandbox: one violation per broken part,
/// named `<prefix>subject`, `<prefix>text_body`, `<prefix>html_body`.
pub fn check_source(source: &EmailSource, prefix: &str) -> Result<(), Violations> {
    let mut v = Violations::new();
    for (field, template, format) in parts(source) {
        if let Err(e) = COMPILED.compile(&[("body", template)], format) {
            for violation in e.iter() {
                v.add(format!("{prefix}{field}"), violation.description.clone());
            }
        }
    }
    v.into_result(())
}

/// The parts of `source`: (field, template, format).
fn parts(source: &EmailSource) -> [(&'static str, &str, BodyFormat); 3] {
    [
        ("subject", source.subject.as_str(), BodyFormat::Text),
        ("text_body", source.text.as_str(), BodyFormat::Text),
        ("html_body", source.html.as_str(), BodyFormat::Html),
    ]
}

/// Renders `chosen` over `values` (with `platform` and `locale` added): times and lengths
/// of time in words in the chosen language. A violation names the part that failed.
pub fn render(chosen: &Chosen, values: &EmailValues) -> Result<RenderedEmail, Violations> {
    let mut data = Map::new();
    for (name, value) in values {
        let value = match value {
            EmailValue::Text(s) => s.clone(),
            EmailValue::Time(t) => chosen.lang.date(*t),
            EmailValue::Length(d) => chosen.lang.duration(*d),
        };
        data.insert(name.clone(), Value::String(value));
    }
    data.insert("platform".into(), Value::String(chosen.platform.clone()));
    data.insert("locale".into(), Value::String(chosen.lang.to_string()));
    // The subject never sees the link, whatever its template says: a message's subject is
    // stored and listed in clear, and the link carries the token.
    let mut without_link = data.clone();
    without_link.remove("link");
    let (data, without_link) = (Data::new(data), Data::new(without_link));
    let mut rendered = Vec::with_capacity(3);
    for (field, template, format) in parts(&chosen.source) {
        let data = if field == "subject" {
            &without_link
        } else {
            &data
        };
        if template.is_empty() {
            rendered.push(String::new());
            continue;
        }
        let compiled = COMPILED
            .compile(&[("body", template)], format)
            .map_err(|e| renamed(&e, field))?;
        let out = compiled
            .render("body", data)
            .map_err(|e| renamed(&e, field))?;
        rendered.push(out);
    }
    let html = rendered.pop().filter(|h| !h.is_empty());
    let text = rendered.pop().unwrap_or_default();
    let subject = rendered.pop().unwrap_or_default();
    // A subject is one line: a template's line ends (a file's last) are not part of it.
    let subject = subject.split(['\r', '\n']).collect::<Vec<_>>().join(" ");
    Ok(RenderedEmail {
        subject: fitted(subject.trim()),
        text,
        html,
    })
}

/// `subject` within a header's [`MAX_HEADER_BYTES`]: cut, with an ellipsis, where a
/// Directory name longer than the template's author foresaw would pass it.
fn fitted(subject: &str) -> String {
    if subject.len() <= MAX_HEADER_BYTES {
        return subject.to_string();
    }
    let mut end = MAX_HEADER_BYTES - '…'.len_utf8();
    while !subject.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &subject[..end])
}

/// `violations` with every field named `field`.
fn renamed(violations: &Violations, field: &str) -> Violations {
    let mut v = Violations::new();
    for violation in violations.iter() {
        v.add(field, violation.description.clone());
    }
    v
}

impl NotifyService {
    /// The same notifier, taking the templates of its built-in emails from `sources`.
    pub fn with_email_sources(mut self, sources: Arc<dyn EmailSources>) -> Self {
        self.email_sources = sources;
        self
    }

    /// Renders the email `kind` for a recipient of `organisation` whose own locale is
    /// `locale`, over `values`.
    pub async fn render_email(
        &self,
        organisation: &str,
        kind: EmailKind,
        locale: &str,
        values: &EmailValues,
    ) -> Result<RenderedEmail, NotifyError> {
        let chosen = self
            .email_sources
            .email_source(organisation, kind, locale)
            .await?;
        // An override compiles and renders for as long as a notification's template may.
        let values = values.clone();
        self.threads
            .render(organisation, move || render(&chosen, &values))
            .await?
            .map_err(NotifyError::Invalid)
    }
}

/// Every built-in, kind by kind and in each kind language by language ([`Lang::ALL`]'s
/// order): the body in the layout, the footer after it.
static BUILTINS: LazyLock<Vec<EmailSource>> = LazyLock::new(|| {
    let layout = include_str!("../../locales/layout.html");
    FILES
        .iter()
        .flat_map(|languages| {
            Lang::ALL
                .into_iter()
                .zip(languages)
                .map(|(lang, files)| assemble(layout, lang, files))
        })
        .collect()
});

/// The files of one built-in in one language: subject, text, HTML, text footer, HTML footer.
type Files = [&'static str; 5];

/// One built-in email from its files.
fn assemble(
    layout: &str,
    lang: Lang,
    [subject, text, html, text_footer, html_footer]: &Files,
) -> EmailSource {
    EmailSource {
        subject: subject.trim().to_string(),
        text: format!("{}\n-- \n{}", text.trim_end(), text_footer.trim_end()) + "\n",
        html: layout
            .replace("%LANG%", lang.as_str())
            .replace("%CONTENT%", html.trim_end())
            .replace("%FOOTER%", html_footer.trim_end()),
    }
}

/// The files of `kind` in `lang` (`include_str!` of `locales/<lang>/<kind>.*`).
macro_rules! files {
    ($lang:literal, $kind:literal) => {
        [
            include_str!(concat!("../../locales/", $lang, "/", $kind, ".subject")),
            include_str!(concat!("../../locales/", $lang, "/", $kind, ".txt")),
            include_str!(concat!("../../locales/", $lang, "/", $kind, ".html")),
            include_str!(concat!("../../locales/", $lang, "/footer.txt")),
            include_str!(concat!("../../locales/", $lang, "/footer.html")),
        ]
    };
}

/// The files of `kind` in every language of [`Lang::ALL`].
macro_rules! languages {
    ($kind:literal) => {
        [
            files!("en", $kind),
            files!("fr", $kind),
            files!("de", $kind),
            files!("es", $kind),
        ]
    };
}

/// The files of every kind of [`EmailKind::ALL`].
const FILES: [[Files; 4]; 6] = [
    languages!("password_reset"),
    languages!("invitation"),
    languages!("password_changed"),
    languages!("password_reset_notice"),
    languages!("email_changed"),
    languages!("smtp_test"),
];

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn locales() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("locales")
    }

    /// The file names of a language's folder.
    fn files(lang: &str) -> BTreeSet<String> {
        std::fs::read_dir(locales().join(lang))
            .unwrap_or_else(|e| panic!("locales/{lang}: {e}"))
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    /// The values a template names (`{{name}}`, `{{#if username}}`…), helpers and
    /// keywords aside.
    fn named_values(template: &str) -> BTreeSet<String> {
        let mut names = BTreeSet::new();
        for expression in template.split("{{").skip(1) {
            let inner = expression.split("}}").next().unwrap_or_default();
            for word in inner.split_whitespace() {
                let word = word.trim_start_matches(['#', '/', '{']);
                if !["if", "else", "unless", ""].contains(&word) {
                    names.insert(word.to_string());
                }
            }
        }
        names
    }

    #[test]
    fn every_language_has_every_file_of_english() {
        let english = files("en");
        let folders: BTreeSet<String> = std::fs::read_dir(locales())
            .unwrap()
            .filter_map(|e| {
                let e = e.unwrap();
                e.file_type()
                    .unwrap()
                    .is_dir()
                    .then(|| e.file_name().to_string_lossy().into_owned())
            })
            .collect();
        let known: BTreeSet<String> = Lang::ALL.iter().map(|l| l.to_string()).collect();
        assert_eq!(
            folders, known,
            "a folder of locales/ is not a language of Lang::ALL"
        );
        for lang in Lang::ALL {
            let these = files(lang.as_str());
            let missing: Vec<_> = english.difference(&these).collect();
            let extra: Vec<_> = these.difference(&english).collect();
            assert!(
                missing.is_empty() && extra.is_empty(),
                "locales/{lang}: missing {missing:?}, not in English {extra:?}"
            );
        }
    }

    #[test]
    fn every_translation_uses_the_values_english_does_and_no_other() {
        for kind in EmailKind::ALL {
            let english = kind.builtin(Lang::En);
            let allowed: BTreeSet<String> = kind.values().map(String::from).collect();
            for lang in Lang::ALL {
                let source = kind.builtin(lang);
                for ((field, template, _), (_, en, _)) in
                    parts(source).into_iter().zip(parts(english))
                {
                    let names = named_values(template);
                    assert_eq!(
                        names,
                        named_values(en),
                        "{lang}/{}: {field} names other values than English",
                        kind.name()
                    );
                    assert!(
                        names.is_subset(&allowed),
                        "{lang}/{}: {field} names {:?}, not a value of the kind",
                        kind.name(),
                        names.difference(&allowed).collect::<Vec<_>>()
                    );
                    assert!(
                        !template.trim().is_empty(),
                        "{lang}/{}: {field} is empty",
                        kind.name()
                    );
                }
                check_source(source, "").unwrap_or_else(|e| panic!("{lang}/{}: {e}", kind.name()));
                assert!(
                    !["%LANG%", "%CONTENT%", "%FOOTER%"]
                        .iter()
                        .any(|m| source.html.contains(m)),
                    "{lang}/{}: a layout marker is left",
                    kind.name()
                );
                assert!(source.html.contains(&format!("lang=\"{lang}\"")));
            }
        }
    }

    #[test]
    fn a_missing_value_in_a_translation_is_found() {
        let mut source = EmailKind::PasswordReset.builtin(Lang::Fr).clone();
        source.text = source.text.replace("{{link}}", "");
        assert_ne!(
            named_values(&source.text),
            named_values(&EmailKind::PasswordReset.builtin(Lang::En).text)
        );
    }

    #[test]
    fn each_language_renders_its_own_words() {
        let values: EmailValues = [
            ("name", EmailValue::from("Ana")),
            ("login", "ana".into()),
            ("organisation", "acme".into()),
            ("link", "https://x.example/r?t=1&u=2".into()),
            ("validity", EmailValue::Length(Duration::from_secs(600))),
            (
                "expires",
                EmailValue::Time(SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_057_600)),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let expected = [
            (
                Lang::En,
                "Reset your password",
                "valid for 10 minutes",
                "10 minutes",
            ),
            (
                Lang::Fr,
                "Réinitialisez votre mot de passe",
                "expire dans 10 minutes",
                "10 minutes",
            ),
            (
                Lang::De,
                "Setzen Sie Ihr Passwort zurück",
                "läuft in 10 Minuten ab",
                "10 Minuten",
            ),
            (
                Lang::Es,
                "Restablezca su contraseña",
                "caduca en 10 minutos",
                "10 minutos",
            ),
        ];
        for (lang, subject, validity, words) in expected {
            let chosen = Chosen {
                lang,
                source: Arc::new(EmailKind::PasswordReset.builtin(lang).clone()),
                platform: "TheHive".into(),
            };
            let email = render(&chosen, &values).unwrap();
            assert_eq!(email.subject, subject);
            assert!(email.text.contains(validity), "{lang}: {}", email.text);
            assert!(email.text.contains("https://x.example/r?t=1&u=2"));
            assert!(
                email.text.contains("TheHive"),
                "the footer names the platform"
            );
            let html = email.html.unwrap();
            assert!(html.contains(words), "{lang}: {html}");
            assert!(html.contains("&amp;u"), "escaped in HTML: {html}");
        }
    }
}
