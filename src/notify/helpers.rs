//! TheHive's template helpers: `tlpLabel`, `papLabel`, `severityLabel` and `dateFormat`
//! (Java-style patterns such as `EEEE dd MMMM yyyy HH:mm`, English and French names),
//! registered by `template.rs`.

use std::fmt::Write as _;

use chrono::{DateTime, Locale, Utc};
use handlebars::{
    handlebars_helper, Context, Handlebars, Helper, HelperResult, Output, RenderContext,
    RenderErrorReason,
};
use serde_json::Value;

/// TheHive's TLP numbering (0 is WHITE before TLP 2.0, CLEAR since).
pub fn tlp(level: i64) -> &'static str {
    match level {
        0 => "CLEAR",
        1 => "GREEN",
        2 => "AMBER",
        3 => "RED",
        4 => "AMBER+STRICT",
        _ => "UNKNOWN",
    }
}

/// TheHive's PAP numbering.
pub fn pap(level: i64) -> &'static str {
    match level {
        0 => "CLEAR",
        1 => "GREEN",
        2 => "AMBER",
        3 => "RED",
        _ => "UNKNOWN",
    }
}

/// TheHive's severities.
pub fn severity(level: i64) -> &'static str {
    match level {
        1 => "LOW",
        2 => "MEDIUM",
        3 => "HIGH",
        4 => "CRITICAL",
        _ => "UNKNOWN",
    }
}

handlebars_helper!(tlp_label: |level: i64| tlp(level));
handlebars_helper!(pap_label: |level: i64| pap(level));
handlebars_helper!(severity_label: |level: i64| severity(level));

/// `{{dateFormat value "pattern" "locale"}}`: `value` in epoch milliseconds (TheHive's
/// dates) or RFC 3339; the pattern in Java's SimpleDateFormat letters (default
/// `yyyy-MM-dd HH:mm:ss`); the locale `en` (default), `fr` or a `ll_CC` name. UTC.
pub(super) fn date_format(
    h: &Helper<'_>,
    registry: &Handlebars<'_>,
    _: &Context,
    rc: &mut RenderContext<'_, '_>,
    out: &mut dyn Output,
) -> HelperResult {
    let value = h
        .param(0)
        .ok_or(RenderErrorReason::ParamNotFoundForIndex("dateFormat", 0))?
        .value();
    let pattern = match h.param(1).map(|p| p.value()) {
        None => "yyyy-MM-dd HH:mm:ss",
        Some(Value::String(p)) => p.as_str(),
        Some(_) => {
            return Err(RenderErrorReason::InvalidParamType("dateFormat pattern: a string").into())
        }
    };
    if pattern.len() > 64 || value.as_str().is_some_and(|v| v.len() > 64) {
        // Bounded: each call's cost grows with them, and the context is the caller's.
        return Err(RenderErrorReason::Other(
            "dateFormat takes a date and a pattern of at most 64 characters".into(),
        )
        .into());
    }
    let locale = match h.param(2).map(|p| p.value()) {
        None => "en",
        Some(Value::String(l)) => l.as_str(),
        Some(_) => {
            return Err(RenderErrorReason::InvalidParamType("dateFormat locale: a string").into())
        }
    };
    if value.is_null() {
        return Ok(());
    }
    let formatted = format_date(value, pattern, locale).map_err(RenderErrorReason::Other)?;
    // Escaped as a value is (in HTML): a pattern's literal text is the caller's, and a
    // value that is no date may be printed whole.
    if rc.is_disable_escape() {
        out.write(&formatted)?;
    } else {
        out.write(&registry.get_escape_fn()(&formatted))?;
    }
    Ok(())
}

/// Formats a date value with a Java-style pattern in a locale.
pub fn format_date(value: &Value, pattern: &str, locale: &str) -> Result<String, String> {
    let time = parse_time(value)?;
    let locale = parse_locale(locale)?;
    let strftime = java_to_strftime(pattern)?;
    let mut out = String::new();
    write!(out, "{}", time.format_localized(&strftime, locale))
        .map_err(|_| format!("dateFormat: pattern {pattern:?} cannot be rendered"))?;
    Ok(out)
}

fn parse_time(value: &Value) -> Result<DateTime<Utc>, String> {
    let millis = match value {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(s) => match s.trim().parse::<i64>() {
            Ok(ms) => Some(ms),
            Err(_) => {
                return DateTime::parse_from_rfc3339(s.trim())
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|_| {
                        format!("dateFormat: {s:?} is neither epoch milliseconds nor RFC 3339")
                    })
            }
        },
        other => return Err(format!("dateFormat: {other} is not a date")),
    };
    millis
        .and_then(DateTime::from_timestamp_millis)
        .ok_or_else(|| format!("dateFormat: {value} is out of range"))
}

fn parse_locale(name: &str) -> Result<Locale, String> {
    let full = match name {
        "" | "en" => "en_US",
        "fr" => "fr_FR",
        "de" => "de_DE",
        "es" => "es_ES",
        "it" => "it_IT",
        "pt" => "pt_PT",
        "nl" => "nl_NL",
        other => other,
    };
    Locale::try_from(full.replace('-', "_").as_str())
        .map_err(|_| format!("dateFormat: unknown locale {name:?} (try en, fr or ll_CC)"))
}

/// Turns a Java SimpleDateFormat pattern into a chrono strftime string.
fn java_to_strftime(pattern: &str) -> Result<String, String> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' {
            // 'quoted text', with '' for a quote.
            if chars.get(i + 1) == Some(&'\'') {
                out.push('\'');
                i += 2;
                continue;
            }
            i += 1;
            while i < chars.len() {
                if chars[i] == '\'' {
                    if chars.get(i + 1) == Some(&'\'') {
                        out.push('\'');
                        i += 2;
                        continue;
                    }
                    break;
                }
                push_literal(&mut out, chars[i]);
                i += 1;
            }
            i += 1;
            continue;
        }
        if !c.is_ascii_alphabetic() {
            push_literal(&mut out, c);
            i += 1;
            continue;
        }
        let run = chars[i..].iter().take_while(|&&d| d == c).count();
        i += run;
        let spec = match (c, run) {
            ('G', _) => "AD",
            ('y' | 'u' | 'Y', 2) => "%y",
            ('y' | 'Y', _) => "%Y",
            ('M' | 'L', 1) => "%-m",
            ('M' | 'L', 2) => "%m",
            ('M' | 'L', 3) => "%b",
            ('M' | 'L', _) => "%B",
            ('d', 1) => "%-d",
            ('d', _) => "%d",
            ('D', _) => "%j",
            ('E', 1..=3) => "%a",
            ('E', _) => "%A",
            ('u', _) => "%u",
            ('w', _) => "%V",
            ('H' | 'k', 1) => "%-H",
            ('H' | 'k', _) => "%H",
            ('h' | 'K', 1) => "%-I",
            ('h' | 'K', _) => "%I",
            ('m', 1) => "%-M",
            ('m', _) => "%M",
            ('s', 1) => "%-S",
            ('s', _) => "%S",
            ('S', _) => "%3f",
            ('a', _) => "%p",
            ('z', _) => "%Z",
            ('Z', _) => "%z",
            ('X', _) => "%:z",
            (other, _) => return Err(format!("dateFormat: unknown pattern letter {other:?}")),
        };
        out.push_str(spec);
    }
    Ok(out)
}

fn push_literal(out: &mut String, c: char) {
    if c == '%' {
        out.push_str("%%");
    } else {
        out.push(c);
    }
}
