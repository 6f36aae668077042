//! Notification templates: Handlebars, as TheHive's notifiers have them, with TheHive's
//! helpers — `eq` (built in), `tlpLabel`, `papLabel`, `severityLabel` and `dateFormat`
//! (Java-style patterns such as `EEEE dd MMMM yyyy HH:mm`, English and French names).
//!
//! [`Templates::compile`] parses every template of a request once, in the sandbox
//! (`sandbox.rs`), so that a broken or hostile one is reported before anything is queued,
//! naming its field; rendering then runs per message. A [`TemplateCache`] keeps compiled
//! sets, bounded in bytes: notifiers send the same templates again and again, and parsing
//! them cost more than a quarter of a `SendToAddresses` (docs/PERFORMANCE.md).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Locale, Utc};
use handlebars::{
    handlebars_helper, no_escape, Context, Handlebars, Helper, HelperResult, Output, RenderContext,
    RenderError, RenderErrorReason,
};
use serde_json::Value;

use super::sandbox;
use crate::validation::Violations;

/// How a body is rendered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum BodyFormat {
    /// Plain text: values are inserted as they are.
    #[default]
    Text,
    /// HTML: values are escaped; a text part is derived for the message.
    Html,
}

/// A set of templates: the body format and each (field, template).
type TemplatesKey = (BodyFormat, Vec<(String, String)>);

/// Compiled template sets by their sources, at most a given number of bytes in all, as
/// [`CompiledBytes`] weighs them (least recently and least often used go first): notifiers send the same templates again
/// and again, and any caller can send new ones.
pub struct TemplateCache(quick_cache::sync::Cache<TemplatesKey, Arc<Templates>, CompiledBytes>);

/// Weighs a cached set by what it holds compiled: its source (field names included), which
/// the compiled text keeps, [`EXPRESSION_BYTES`] for each expression and [`SEGMENT_BYTES`]
/// for each segment of a path.
#[derive(Clone)]
struct CompiledBytes;

/// What one expression (`{{…}}`) costs compiled, about: Handlebars makes a node of each,
/// with its parameters and their paths, each in its own allocation. A source of nothing
/// but short expressions compiles to tens of times its size.
const EXPRESSION_BYTES: usize = 512;
/// What one segment of a path (`a.b.c`: three) costs compiled, about: a string of its own.
/// 1,000 expressions of 500 segments each (1 MB of source) took 17 MB compiled.
const SEGMENT_BYTES: usize = 40;

impl quick_cache::Weighter<TemplatesKey, Arc<Templates>> for CompiledBytes {
    fn weight(&self, (_, fields): &TemplatesKey, _: &Arc<Templates>) -> u64 {
        let bytes: usize = fields
            .iter()
            .map(|(f, t)| {
                // Every `.` and `/` counted, in text too: an estimate that errs high.
                let separators = t.bytes().filter(|b| matches!(b, b'.' | b'/')).count();
                f.len()
                    + t.len()
                    + t.matches("{{").count() * EXPRESSION_BYTES
                    + separators * SEGMENT_BYTES
            })
            .sum();
        u64::try_from(bytes).unwrap_or(u64::MAX).max(1)
    }
}

impl TemplateCache {
    /// A cache of at most `bytes` of compiled templates (as [`CompiledBytes`] weighs them).
    pub fn new(bytes: u64) -> Self {
        // quick_cache sizes its tables from the expected count: sets of a few KiB.
        let expected = usize::try_from(bytes / 4096).unwrap_or(usize::MAX).max(16);
        Self(quick_cache::sync::Cache::with_weighter(
            expected,
            bytes,
            CompiledBytes,
        ))
    }

    /// The compiled set of `fields` (see [`Templates::compile`]), from the cache or
    /// compiled and kept.
    pub fn compile(
        &self,
        fields: &[(&str, &str)],
        format: BodyFormat,
    ) -> Result<Arc<Templates>, Violations> {
        let key: TemplatesKey = (
            format,
            fields
                .iter()
                .map(|(name, template)| (name.to_string(), template.to_string()))
                .collect(),
        );
        if let Some(templates) = self.0.get(&key) {
            return Ok(templates);
        }
        let templates = Arc::new(Templates::compile(fields, format)?);
        self.0.insert(key, templates.clone());
        Ok(templates)
    }

    /// The bytes kept now, as [`CompiledBytes`] weighs them.
    pub fn weight(&self) -> u64 {
        self.0.weight()
    }
}

/// The built-in emails' templates: the binary's own, a fixed few.
static BUILTIN: LazyLock<TemplateCache> = LazyLock::new(|| TemplateCache::new(1024 * 1024));

/// One request's templates, by field name, ready to render.
pub struct Templates {
    headers: Handlebars<'static>,
    body: Handlebars<'static>,
}

/// What a message's templates rendered to.
#[derive(Clone, Debug)]
pub struct Rendered {
    /// Sender (empty: the settings' `from`).
    pub from: String,
    /// Recipient.
    pub to: String,
    /// Subject.
    pub subject: String,
    /// Body as rendered (HTML for [`BodyFormat::Html`]).
    pub body: String,
}

impl Templates {
    /// Compiles `fields` (name, template) — headers (`from`, `to…`, `subject`) without
    /// escaping, `body` with HTML escaping for [`BodyFormat::Html`]. Every broken template
    /// is a violation naming its field, line and column.
    pub fn compile(fields: &[(&str, &str)], format: BodyFormat) -> Result<Self, Violations> {
        let mut headers = registry();
        headers.register_escape_fn(no_escape);
        let mut body = registry();
        if format == BodyFormat::Text {
            body.register_escape_fn(no_escape);
        }
        let mut v = Violations::new();
        for (name, template) in fields {
            let target = if *name == "body" {
                &mut body
            } else {
                &mut headers
            };
            match sandbox::parse(template) {
                Ok(parsed) => target.register_template(name, parsed),
                Err(why) => v.add(*name, why),
            }
        }
        v.into_result(Self { headers, body })
    }

    /// Renders the template registered as `field` over `data`; the error names the field.
    pub fn render(&self, field: &str, data: &Data) -> Result<String, Violations> {
        let registry = if field == "body" {
            &self.body
        } else {
            &self.headers
        };
        if !registry.has_template(field) {
            return Ok(String::new());
        }
        let started = Instant::now();
        sandbox::Budget::start(data.left());
        let mut out = sandbox::Bounded::new(sandbox::MAX_OUTPUT_BYTES);
        let rendered = registry.render_with_context_to_write(field, &data.context, &mut out);
        data.spend(started.elapsed());
        match rendered {
            Ok(()) => Ok(out.into_string()),
            Err(e) => {
                let why = if out.overflowed {
                    format!(
                        "renders to more than {} bytes, the most a message holds",
                        sandbox::MAX_OUTPUT_BYTES
                    )
                } else if sandbox::Budget::exhausted() {
                    sandbox::too_much_work()
                } else {
                    render_error(&e)
                };
                Err(crate::validation::violation(field, why))
            }
        }
    }
}

/// What templates render over, made once for every template and message of a request:
/// Handlebars copies whatever else it is given at each rendering, and a request's context
/// decodes to millions of values (4 MiB of empty ones: 2 million).
/// It also holds the request's render time so far: each template renders for at most
/// [`sandbox::RENDER_TIME`], and all of a request's renderings for at most
/// [`sandbox::REQUEST_RENDER_TIME`] (`SendToUsers` renders once per user).
pub struct Data {
    context: Context,
    /// Nanoseconds spent rendering over this data.
    spent: AtomicU64,
}

impl Data {
    /// The values of `context`.
    pub fn new(context: serde_json::Map<String, Value>) -> Self {
        Self {
            context: Context::from(Value::Object(context)),
            spent: AtomicU64::new(0),
        }
    }

    /// Render time left to the request.
    fn left(&self) -> Duration {
        sandbox::REQUEST_RENDER_TIME
            .saturating_sub(Duration::from_nanos(self.spent.load(Ordering::Relaxed)))
    }

    /// Counts `took` as render time of the request (what else it spends on its messages
    /// per recipient: the text part of an HTML body).
    pub fn spend(&self, took: Duration) {
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.spent.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Sets `key` to `value` (each recipient's `user`), replacing what it held.
    pub fn set(&mut self, key: &str, value: Value) {
        if let Value::Object(values) = self.context.data_mut() {
            values.insert(key.to_string(), value);
        }
    }
}

impl From<Value> for Data {
    fn from(value: Value) -> Self {
        Self {
            context: Context::from(value),
            spent: AtomicU64::new(0),
        }
    }
}

/// A built-in email (reset, invitation, account notices): Handlebars templates for the
/// subject, the text body and the HTML body.
pub struct Builtin {
    /// Subject template.
    pub subject: &'static str,
    /// Text body template.
    pub text: &'static str,
    /// HTML body template (values escaped).
    pub html: &'static str,
}

/// A rendered built-in email.
pub struct RenderedBuiltin {
    /// Subject.
    pub subject: String,
    /// Text body.
    pub text: String,
    /// HTML body.
    pub html: String,
}

impl Builtin {
    /// Renders the three parts over `data`.
    pub fn render(&self, data: &Value) -> Result<RenderedBuiltin, Violations> {
        let text = BUILTIN.compile(
            &[("subject", self.subject), ("body", self.text)],
            BodyFormat::Text,
        )?;
        let html = BUILTIN.compile(&[("body", self.html)], BodyFormat::Html)?;
        let data = Data::from(data.clone());
        let data = &data;
        Ok(RenderedBuiltin {
            subject: text.render("subject", data)?,
            text: text.render("body", data)?,
            html: html.render("body", data)?,
        })
    }
}

fn registry() -> Handlebars<'static> {
    let mut hb = Handlebars::new();
    // The sandbox (see sandbox.rs): `log` would write values into the server log, and
    // `each` must spend the render budget.
    hb.unregister_helper("log");
    hb.unregister_helper("lookup");
    hb.register_helper("each", Box::new(sandbox::Each));
    hb.register_helper("tlpLabel", Box::new(tlp_label));
    hb.register_helper("papLabel", Box::new(pap_label));
    hb.register_helper("severityLabel", Box::new(severity_label));
    hb.register_helper("dateFormat", Box::new(date_format));
    hb
}

fn render_error(e: &RenderError) -> String {
    match (e.line_no, e.column_no) {
        (Some(line), Some(column)) => {
            format!(
                "rendering failed at line {line}, column {column}: {}",
                e.reason()
            )
        }
        _ => format!("rendering failed: {}", e.reason()),
    }
}

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
fn date_format(
    h: &Helper<'_>,
    _: &Handlebars<'_>,
    _: &Context,
    _: &mut RenderContext<'_, '_>,
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
    out.write(&formatted)?;
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

/// The most elements an HTML body may have for its text part to be laid out by
/// html2text. html2text's cost grows faster than the body: html5ever's tree builder
/// rescans its stack of open elements as it inserts some of them (time in the square of
/// the depth: 16,000 nested `<div>`s took 0.76 s), and its table layout holds every cell
/// (one row of 165,000 cells, rendered from 200 bytes of template, took 455 MB). Mail
/// written for people has a few hundred elements.
pub const MAX_LAID_OUT_ELEMENTS: usize = 5000;

/// The most formatting elements (`<b>`, `<a>`, `<font>`…) an HTML body may leave open at
/// once for its text part to be laid out by html2text. HTML's parser opens every
/// formatting element still open again in each new block: `<b>` left open 600 times,
/// then 600 paragraphs, made 360,000 elements of 1,201 tags (14.6 s, 1 GB). Mail closes
/// what it opens.
pub const MAX_OPEN_FORMATTING: usize = 32;

/// HTML's formatting elements, those its parser reopens (the "list of active formatting
/// elements").
const FORMATTING: [&str; 14] = [
    "a", "b", "big", "code", "em", "font", "i", "nobr", "s", "small", "strike", "strong", "tt", "u",
];

/// The plain-text part of an HTML body: laid out by html2text when the body has at most
/// [`MAX_LAID_OUT_ELEMENTS`] tags and never leaves more than [`MAX_OPEN_FORMATTING`]
/// formatting elements open, else its text with the tags taken out (linear time, never
/// longer than the body).
pub fn html_to_text(html: &str) -> String {
    if tags(html) > MAX_LAID_OUT_ELEMENTS || open_formatting(html) > MAX_OPEN_FORMATTING {
        return strip_tags(html);
    }
    html2text::from_read(html.as_bytes(), 78).unwrap_or_else(|_| strip_tags(html))
}

/// How many tags `html` opens or closes, at most: every `<` before a letter or `/`. An
/// upper bound on the elements a parser makes of them, up to the few it implies for each
/// (a `<td>` alone becomes a table, a body, a row and a cell).
fn tags(html: &str) -> usize {
    html.as_bytes()
        .windows(2)
        .filter(|w| w[0] == b'<' && (w[1].is_ascii_alphabetic() || w[1] == b'/'))
        .count()
}

/// The most formatting elements `html` leaves open at once: each start tag of one opens
/// it (`<b/>` too: HTML ignores the slash), each end tag of the same name closes one.
fn open_formatting(html: &str) -> usize {
    let mut open = [0usize; FORMATTING.len()];
    let mut most = 0;
    let bytes = html.as_bytes();
    for (at, _) in html.match_indices('<') {
        let closing = bytes.get(at + 1) == Some(&b'/');
        let start = at + 1 + usize::from(closing);
        let name: String = bytes[start.min(bytes.len())..]
            .iter()
            .take_while(|b| b.is_ascii_alphanumeric())
            .map(|b| b.to_ascii_lowercase() as char)
            .collect();
        let Some(kind) = FORMATTING.iter().position(|f| *f == name) else {
            continue;
        };
        if closing {
            open[kind] = open[kind].saturating_sub(1);
        } else {
            open[kind] += 1;
            most = most.max(open.iter().sum());
        }
    }
    most
}

/// `html` without its tags and comments: what is between them, as it is.
fn strip_tags(html: &str) -> String {
    let mut out = String::with_capacity(html.len() / 2);
    let mut rest = html;
    while let Some(at) = rest.find('<') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let end = if rest.starts_with("<!--") {
            rest.find("-->").map(|e| e + 3)
        } else {
            rest.find('>').map(|e| e + 1)
        };
        match end {
            Some(end) => rest = &rest[end..],
            None => {
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(template: &str, data: Value, format: BodyFormat) -> String {
        let t = Templates::compile(&[("body", template)], format).unwrap();
        t.render("body", &Data::from(data)).unwrap()
    }

    #[test]
    fn the_cache_weighs_sets_by_their_expressions_and_keeps_to_its_bound() {
        let cache = TemplateCache::new(64 * 1024);
        let text = "x".repeat(1000);
        let dotted = "a.b".repeat(10);
        cache
            .compile(&[("subject", &dotted)], BodyFormat::Text)
            .unwrap();
        assert_eq!(cache.weight(), 7 + 30 + 10 * SEGMENT_BYTES as u64);
        let cache = TemplateCache::new(64 * 1024);
        cache.compile(&[("body", &text)], BodyFormat::Text).unwrap();
        assert_eq!(cache.weight(), 1004, "plain text weighs its source");
        let expressions = "{{a}}".repeat(100);
        cache
            .compile(&[("body", &expressions)], BodyFormat::Text)
            .unwrap();
        assert_eq!(cache.weight(), 1004 + 504 + 100 * EXPRESSION_BYTES as u64);
        for i in 0..100 {
            let many = format!("{i}{expressions}");
            cache.compile(&[("body", &many)], BodyFormat::Text).unwrap();
            assert!(cache.weight() <= 64 * 1024, "{}", cache.weight());
        }
    }

    #[test]
    fn an_html_body_of_too_many_elements_gets_its_tags_taken_out() {
        assert_eq!(tags("<p>a<br><img src=x/><b>b</b></p><hr/> a < b"), 7);
        let laid_out = format!("<p>{}</p><p>end</p>", "<b>x</b>".repeat(100));
        assert!(
            html_to_text(&laid_out).contains("\n"),
            "paragraphs laid out"
        );
        let many = format!(
            "{}<!-- <b> -->end",
            "<div/>x".repeat(MAX_LAID_OUT_ELEMENTS + 1)
        );
        let text = html_to_text(&many);
        assert_eq!(
            text,
            format!("{}end", "x".repeat(MAX_LAID_OUT_ELEMENTS + 1))
        );
        assert_eq!(strip_tags("a <b unclosed"), "a ");
        let closed = format!("{}<p>end", "<b>bold</b> <A href=x>link</a>".repeat(100));
        assert_eq!(open_formatting(&closed), 1);
        assert!(html_to_text(&closed).contains("**bold**"), "laid out");
        let reopened: String = (0..33).map(|i| format!("<b x={i}>")).collect();
        let reopened = format!("<p>{reopened}{}", "<p>x".repeat(33));
        assert_eq!(open_formatting(&reopened), 33);
        assert_eq!(html_to_text(&reopened), "x".repeat(33), "tags taken out");
    }

    #[test]
    fn helpers_as_thehive_has_them() {
        let data =
            json!({"case": {"tlp": 2, "pap": 3, "severity": 4, "date": 1_764_057_600_000_i64}});
        assert_eq!(
            render("{{tlpLabel case.tlp}}", data.clone(), BodyFormat::Text),
            "AMBER"
        );
        assert_eq!(
            render(
                "{{tlpLabel 0}} {{tlpLabel 4}}",
                data.clone(),
                BodyFormat::Text
            ),
            "CLEAR AMBER+STRICT"
        );
        assert_eq!(
            render("{{papLabel case.pap}}", data.clone(), BodyFormat::Text),
            "RED"
        );
        assert_eq!(
            render(
                "{{severityLabel case.severity}}",
                data.clone(),
                BodyFormat::Text
            ),
            "CRITICAL"
        );
        assert_eq!(
            render(
                "{{#if (eq case.severity 4)}}urgent{{else}}later{{/if}}",
                data.clone(),
                BodyFormat::Text
            ),
            "urgent"
        );
        assert_eq!(
            render(
                r#"{{dateFormat case.date "EEEE dd MMMM yyyy HH:mm"}}"#,
                data.clone(),
                BodyFormat::Text
            ),
            "Tuesday 25 November 2025 08:00"
        );
        assert_eq!(
            render(
                r#"{{dateFormat case.date "EEEEE dd MMMMM yyyy" "fr"}}"#,
                data.clone(),
                BodyFormat::Text
            ),
            "mardi 25 novembre 2025"
        );
        assert_eq!(
            render(
                r#"{{dateFormat "2025-11-25T08:00:00Z" "d/M/yy 'at' h:mm a"}}"#,
                data,
                BodyFormat::Text
            ),
            "25/11/25 at 8:00 AM"
        );
    }

    #[test]
    fn html_escapes_values_and_text_does_not() {
        let data = json!({"title": "<b>x</b> & y"});
        assert_eq!(
            render("{{title}}", data.clone(), BodyFormat::Text),
            "<b>x</b> & y"
        );
        assert_eq!(
            render("{{title}}", data, BodyFormat::Html),
            "&lt;b&gt;x&lt;/b&gt; &amp; y"
        );
    }

    #[test]
    fn broken_templates_name_field_and_position() {
        let err = Templates::compile(
            &[("subject", "ok"), ("body", "line\n{{#if x}}open")],
            BodyFormat::Text,
        )
        .err()
        .unwrap();
        let v: Vec<_> = err.iter().collect();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].field, "body");
        assert!(v[0].description.contains("line 2"), "{}", v[0].description);
        let t = Templates::compile(&[("body", "{{dateFormat when \"QQ\"}}")], BodyFormat::Text)
            .unwrap();
        let err = t
            .render("body", &Data::from(json!({"when": 0})))
            .unwrap_err();
        assert!(err.to_string().contains("unknown pattern letter"), "{err}");
    }
}
