//! The records of the templates service: an override of a built-in email (one kind in one
//! language, for one organisation or for the platform) and an organisation's locale
//! settings.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::locale::Lang;
use crate::notify::{EmailKind, EmailSource};

/// Whose overrides: the platform's (every organisation's, below their own) or one
/// organisation's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The platform's (permission managePlatform).
    Platform,
    /// One organisation's (permission manageConfig).
    Organisation(String),
}

impl Scope {
    /// How the store keys it: the organisation, or empty for the platform (an
    /// organisation's name is never empty).
    pub fn key(&self) -> &str {
        match self {
            Scope::Platform => "",
            Scope::Organisation(org) => org,
        }
    }

    /// The scope a store key names.
    pub fn of_key(key: &str) -> Scope {
        if key.is_empty() {
            Scope::Platform
        } else {
            Scope::Organisation(key.to_string())
        }
    }
}

/// A stored override of a built-in email.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateOverride {
    /// Whose: the organisation, empty for the platform ([`Scope::key`]).
    pub scope: String,
    /// Which email.
    pub kind: EmailKind,
    /// In which language (`en`, `fr`, `de`, `es`).
    pub locale: String,
    /// Its templates.
    pub source: EmailSource,
    /// Changes with every write, never the same twice (the etag).
    pub version: u64,
    /// When last written.
    pub update_time: SystemTime,
    /// The name of the key that wrote it.
    pub updated_by: String,
}

impl TemplateOverride {
    /// Its language.
    pub fn lang(&self) -> Option<Lang> {
        Lang::exactly(&self.locale)
    }
}

/// An organisation's locale settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocaleSettings {
    /// The organisation.
    pub organisation: String,
    /// Its default locale (BCP 47, canonical case), for users without one of their own;
    /// empty for the platform's, English.
    pub default_locale: String,
    /// Changes with every write (the etag).
    pub version: u64,
    /// When last written.
    pub update_time: SystemTime,
    /// The name of the key that wrote it.
    pub updated_by: String,
}

/// What an email of one kind to a recipient of one organisation may use
/// ([`super::TemplateStore::email_customisation`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Customisation {
    /// The organisation's locale settings.
    pub locale: Option<LocaleSettings>,
    /// The organisation's overrides of the kind.
    pub own: Vec<TemplateOverride>,
    /// The platform's overrides of the kind.
    pub platform: Vec<TemplateOverride>,
}
