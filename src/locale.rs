//! Locales: the BCP 47 tags users and organisations are given ([`tag`]), the languages
//! the built-in emails are written in ([`Lang`]), the chain that picks one for a recipient
//! ([`choose`]: the user's tag, its language, the organisation's, then `en`), and dates and
//! lengths of time in words in each ([`Lang::date`], [`Lang::duration`]).
//!
//! The words come from `locales/<lang>/locale.json`, a resource file per language beside
//! the emails' templates (`locales/README.md` says how to add a language). Imports nothing
//! of the crate: the Directory, the notifier and the templates all use it.

use std::sync::LazyLock;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use serde::Deserialize;

/// Longest tag accepted: a language, script, region and a few variants or extensions.
pub const MAX_TAG: usize = 64;

/// `value` as a BCP 47 tag in its canonical case (`fr-ca` → `fr-CA`), or why it is not
/// one. Empty stays empty: no locale.
pub fn tag(value: &str) -> Result<String, String> {
    if value.is_empty() {
        return Ok(String::new());
    }
    if value.len() > MAX_TAG {
        return Err(format!("is longer than {MAX_TAG} characters"));
    }
    icu_locale_core::Locale::try_from_str(value)
        .map(|l| l.to_string())
        .map_err(|e| format!("is not a BCP 47 language tag such as fr or fr-CA ({e})"))
}

/// The languages the built-in emails are written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Lang {
    /// English: the platform's default.
    En,
    /// French.
    Fr,
    /// German.
    De,
    /// Spanish.
    Es,
}

impl Lang {
    /// Every language, the default first.
    pub const ALL: [Lang; 4] = [Lang::En, Lang::Fr, Lang::De, Lang::Es];

    /// Its tag: `en`, `fr`, `de`, `es`.
    pub fn as_str(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Fr => "fr",
            Lang::De => "de",
            Lang::Es => "es",
        }
    }

    /// The language of exactly this tag (any case), if it is one of [`Lang::ALL`].
    pub fn exactly(tag: &str) -> Option<Lang> {
        Lang::ALL
            .into_iter()
            .find(|l| l.as_str().eq_ignore_ascii_case(tag))
    }

    /// This language's words.
    fn words(self) -> &'static Words {
        &WORDS[self as usize]
    }

    /// `time` in words, in UTC (`Tuesday 25 November 2025, 08:00 UTC`, `mardi 25 novembre
    /// 2025 à 08:00 UTC`).
    pub fn date(self, time: SystemTime) -> String {
        let words = self.words();
        // Within chrono's range (`From<SystemTime>` panics past year 262,143): a time past
        // it reads as the last one, a time before it as the first.
        let (secs, last) = match time.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(since) => (
                i64::try_from(since.as_secs()).ok(),
                DateTime::<Utc>::MAX_UTC,
            ),
            Err(before) => (
                i64::try_from(before.duration().as_secs()).ok().map(|s| -s),
                DateTime::<Utc>::MIN_UTC,
            ),
        };
        let time = secs
            .and_then(|secs| DateTime::<Utc>::from_timestamp(secs, 0))
            .unwrap_or(last);
        let locale = chrono::Locale::try_from(words.chrono_locale.as_str()).unwrap_or_default();
        time.format_localized(&words.date, locale).to_string()
    }

    /// `length` in words, its two largest units (`10 minutes`, `1 day and 2 hours`,
    /// `1 Tag und 2 Stunden`); below a second, `0 seconds`.
    pub fn duration(self, length: Duration) -> String {
        let words = self.words();
        let mut left = length.as_secs();
        let mut parts = Vec::new();
        for (unit, seconds) in [
            (&words.day, 86_400),
            (&words.hour, 3_600),
            (&words.minute, 60),
            (&words.second, 1),
        ] {
            let count = left / seconds;
            left %= seconds;
            if count > 0 {
                parts.push(unit.of(count));
            }
        }
        parts.truncate(2);
        match parts.as_slice() {
            [] => words.second.of(0),
            [one] => one.clone(),
            [first, second] => format!("{first}{}{second}", words.and),
            _ => unreachable!("at most two parts"),
        }
    }
}

impl std::fmt::Display for Lang {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The language for a recipient whose own tag is `user` and whose organisation's default
/// is `organisation` (either may be empty): the user's tag itself, else its language
/// (`fr-CA` → `fr`), else the organisation's tag or its language, else [`Lang::En`].
pub fn choose(user: &str, organisation: &str) -> Lang {
    [user, organisation]
        .into_iter()
        .find_map(|tag| Lang::exactly(tag).or_else(|| Lang::exactly(language(tag))))
        .unwrap_or(Lang::En)
}

/// The language subtag of `tag` (`fr-CA` → `fr`).
fn language(tag: &str) -> &str {
    tag.split(['-', '_']).next().unwrap_or_default()
}

/// One unit of time in words: its singular and its plural.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Unit {
    one: String,
    other: String,
}

impl Unit {
    fn of(&self, count: u64) -> String {
        let word = if count == 1 { &self.one } else { &self.other };
        format!("{count} {word}")
    }
}

/// What `locales/<lang>/locale.json` holds: every key is required, so a language missing
/// one does not load (a unit test loads them all).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Words {
    /// chrono's name of the locale its dates are written in (`fr_FR`).
    chrono_locale: String,
    /// A date and time, as a chrono (strftime) pattern.
    date: String,
    second: Unit,
    minute: Unit,
    hour: Unit,
    day: Unit,
    /// Between the two units of a length of time (` and `).
    and: String,
}

/// The words of each language, in [`Lang::ALL`]'s order.
static WORDS: LazyLock<Vec<Words>> = LazyLock::new(|| {
    let sources = [
        include_str!("../locales/en/locale.json"),
        include_str!("../locales/fr/locale.json"),
        include_str!("../locales/de/locale.json"),
        include_str!("../locales/es/locale.json"),
    ];
    sources
        .iter()
        .zip(Lang::ALL)
        .map(|(source, lang)| {
            serde_json::from_str(source)
                .unwrap_or_else(|e| panic!("locales/{lang}/locale.json: {e} (see its unit test)"))
        })
        .collect()
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_language_has_every_word() {
        for lang in Lang::ALL {
            let path = format!("{}/locales/{lang}/locale.json", env!("CARGO_MANIFEST_DIR"));
            let source = std::fs::read_to_string(&path).unwrap();
            if let Err(e) = serde_json::from_str::<Words>(&source) {
                panic!("{path}: {e}");
            }
            let words = lang.words();
            chrono::Locale::try_from(words.chrono_locale.as_str())
                .unwrap_or_else(|_| panic!("{path}: unknown chrono_locale"));
        }
    }

    #[test]
    fn a_missing_word_is_refused() {
        let en = include_str!("../locales/en/locale.json");
        let mut value: serde_json::Value = serde_json::from_str(en).unwrap();
        value.as_object_mut().unwrap().remove("hour");
        let err = serde_json::from_value::<Words>(value)
            .err()
            .expect("refused");
        assert!(err.to_string().contains("hour"), "{err}");
    }

    #[test]
    fn tags_are_checked_and_put_in_canonical_case() {
        assert_eq!(tag("fr-ca").unwrap(), "fr-CA");
        assert_eq!(tag("EN").unwrap(), "en");
        assert_eq!(tag("").unwrap(), "");
        assert_eq!(tag("zh-hant-tw").unwrap(), "zh-Hant-TW");
        assert!(tag("not a tag").is_err());
        assert!(tag("x").is_err());
        assert!(tag(&"a".repeat(65)).is_err());
    }

    #[test]
    fn the_chain_goes_from_the_users_tag_to_english() {
        assert_eq!(choose("fr", "de"), Lang::Fr);
        assert_eq!(choose("fr-CA", "de"), Lang::Fr, "the user's language");
        assert_eq!(choose("pt-BR", "de-AT"), Lang::De, "the organisation's");
        assert_eq!(choose("", "es"), Lang::Es);
        assert_eq!(choose("it", "ja"), Lang::En, "the platform's default");
        assert_eq!(choose("", ""), Lang::En);
    }

    #[test]
    fn lengths_of_time_in_words() {
        let m = |n: u64| Duration::from_secs(n * 60);
        assert_eq!(Lang::En.duration(m(10)), "10 minutes");
        assert_eq!(Lang::Fr.duration(m(10)), "10 minutes");
        assert_eq!(Lang::De.duration(m(10)), "10 Minuten");
        assert_eq!(Lang::Es.duration(m(10)), "10 minutos");
        assert_eq!(Lang::En.duration(m(60)), "1 hour");
        assert_eq!(Lang::Fr.duration(m(24 * 60)), "1 jour");
        assert_eq!(Lang::En.duration(m(26 * 60 + 1)), "1 day and 2 hours");
        assert_eq!(Lang::De.duration(m(90)), "1 Stunde und 30 Minuten");
        assert_eq!(Lang::Es.duration(m(7 * 24 * 60)), "7 días");
        assert_eq!(Lang::En.duration(Duration::from_millis(5)), "0 seconds");
    }

    #[test]
    fn dates_in_words() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_057_600);
        assert_eq!(Lang::En.date(t), "Tuesday 25 November 2025, 08:00 UTC");
        assert_eq!(Lang::Fr.date(t), "mardi 25 novembre 2025 à 08:00 UTC");
        assert_eq!(Lang::De.date(t), "Dienstag, 25. November 2025, 08:00 UTC");
        assert_eq!(
            Lang::Es.date(t),
            "martes, 25 de noviembre de 2025, 08:00 UTC"
        );
    }

    /// chrono's `From<SystemTime>` panics past the year 262,143: a time a caller gives
    /// (a preview's values) must not end its request.
    #[test]
    fn a_date_past_chrono_s_range_does_not_panic() {
        let far = SystemTime::UNIX_EPOCH + Duration::from_secs(8_210_298_412_800);
        for lang in [Lang::En, Lang::Fr, Lang::De, Lang::Es] {
            assert!(!lang.date(far).is_empty());
        }
    }

    /// A time before 1970 reads as itself, not as the last time chrono knows.
    #[test]
    fn a_date_before_1970_reads_as_itself() {
        let before = SystemTime::UNIX_EPOCH - Duration::from_secs(1);
        assert_eq!(
            Lang::En.date(before),
            "Wednesday 31 December 1969, 23:59 UTC"
        );
    }
}
