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
use std::sync::Arc;
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
    #[cfg(test)]
    fn weight(&self) -> u64 {
        self.0.weight()
    }
}

/// One request's templates, by field name, ready to render.
pub struct Templates {
    headers: Handlebars<'static>,
    body: Handlebars<'static>,
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

/// The plain-text part of an HTML body, made in one pass over it: the text between tags,
/// whitespace collapsed, a line break for each block (`p`, `div`, `br`, `li`, `tr`,
/// headings…), a link's address after its text, the content of `script`, `style`, `head`
/// and `title` left out, and the common character references decoded.
///
/// By hand rather than html2text: html2text lays the body out with html5ever's tree
/// builder, whose cost on hostile markup grows much faster than the body — the square of
/// the nesting depth (16,000 nested `<div>`s: 0.76 s), every cell of a table held (a row
/// of 165,000 cells from 200 bytes of template: 455 MB), every unclosed formatting element
/// opened again in each new block (36 KB of markup: 4.6 GB), attributes compared pairwise
/// (120,000 on one tag: 52 s) — and a caller writes the body. This takes time and memory
/// in proportion to the body, whatever it holds.
pub fn html_to_text(html: &str) -> String {
    let mut text = Text::default();
    let mut rest = html;
    while let Some(at) = rest.find('<') {
        text.push_str(&rest[..at]);
        rest = &rest[at..];
        if let Some(comment) = rest.strip_prefix("<!--") {
            rest = comment.find("-->").map_or("", |end| &comment[end + 3..]);
            continue;
        }
        let Some(end) = tag_end(rest) else {
            text.push_str(rest);
            rest = "";
            break;
        };
        let tag = &rest[1..end];
        rest = &rest[end + 1..];
        let closing = tag.starts_with('/');
        let name: String = tag[usize::from(closing)..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .take(16)
            .map(|c| c.to_ascii_lowercase())
            .collect();
        if name.is_empty() {
            // Not a tag: `a < b`.
            text.push_str("<");
            text.push_str(tag);
            text.push_str(">");
            continue;
        }
        match name.as_str() {
            "script" | "style" | "head" | "title" if !closing => {
                rest = after_closing(rest, &name);
            }
            "a" if !closing => text.link = href(tag),
            "a" => {
                if let Some(href) = text.link.take() {
                    text.push_raw(&format!(" ({href})"));
                }
            }
            "br" => text.line_break(),
            "p" | "div" | "li" | "tr" | "ul" | "ol" | "table" | "blockquote" | "hr" | "h1"
            | "h2" | "h3" | "h4" | "h5" | "h6" | "pre" | "section" | "article" | "header"
            | "footer" => text.block(),
            "td" | "th" => text.push_str(" "),
            _ => {}
        }
    }
    text.push_str(rest);
    text.out.trim().to_string()
}

/// Where the tag `rest` starts with ends: its first `>` outside quoted attribute values.
fn tag_end(rest: &str) -> Option<usize> {
    let mut quote = None;
    for (at, c) in rest.char_indices().skip(1) {
        match (quote, c) {
            (None, '>') => return Some(at),
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            _ => {}
        }
    }
    None
}

/// What comes after the closing tag of `name` (case aside) in `rest`, or nothing.
fn after_closing<'a>(rest: &'a str, name: &str) -> &'a str {
    let mut from = 0;
    while let Some(at) = rest[from..].find("</") {
        let start = from + at + 2;
        let candidate = rest.get(start..start + name.len());
        if candidate.is_some_and(|c| c.eq_ignore_ascii_case(name)) {
            return rest[start..]
                .find('>')
                .map_or("", |end| &rest[start + end + 1..]);
        }
        from = start;
    }
    ""
}

/// The `href` of an `a` tag's attributes, when there is one (not `javascript:`).
fn href(tag: &str) -> Option<String> {
    let lower = tag.to_ascii_lowercase();
    let at = lower.find("href=")? + 5;
    let value = &tag[at..];
    let value = match value.chars().next()? {
        quote @ ('"' | '\'') => value[1..].split(quote).next()?,
        _ => value.split(|c: char| c.is_whitespace()).next()?,
    };
    let value = decode_references(value.trim());
    (!value.is_empty() && !value.to_ascii_lowercase().starts_with("javascript:")).then_some(value)
}

/// Text being made: whitespace collapsed, at most one blank line between blocks.
#[derive(Default)]
struct Text {
    out: String,
    /// A space is due before the next word.
    space: bool,
    /// The address of the link being read.
    link: Option<String>,
}

impl Text {
    fn push_str(&mut self, raw: &str) {
        let decoded = decode_references(raw);
        for (n, word) in decoded.split_whitespace().enumerate() {
            let blank = decoded.starts_with(char::is_whitespace);
            if (n > 0 || self.space || blank) && !self.out.is_empty() && !self.out.ends_with('\n') {
                self.out.push(' ');
            }
            self.space = false;
            self.out.push_str(word);
        }
        if decoded.ends_with(char::is_whitespace) {
            self.space = true;
        }
    }

    /// Adds `raw` as it is (already decoded: a link's address).
    fn push_raw(&mut self, raw: &str) {
        self.out.push_str(raw);
        self.space = false;
    }

    fn line_break(&mut self) {
        self.out.push('\n');
        self.space = false;
    }

    fn block(&mut self) {
        if !self.out.is_empty() && !self.out.ends_with("\n\n") {
            self.out.push_str(if self.out.ends_with('\n') {
                "\n"
            } else {
                "\n\n"
            });
        }
        self.space = false;
    }
}

/// `text` with the common character references decoded (`&amp;`, `&lt;`, `&gt;`,
/// `&quot;`, `&apos;`, `&#39;`, `&nbsp;`, and any `&#N;` or `&#xH;`); others as they are.
fn decode_references(text: &str) -> String {
    if !text.contains('&') {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        // A reference is at most 10 bytes: looking no further keeps `&&&…` linear.
        let end = rest
            .bytes()
            .take(11)
            .position(|b| b == b';')
            .filter(|e| *e > 1);
        let decoded = end.and_then(|end| {
            let name = &rest[1..end];
            let c = match name {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                "nbsp" => Some(' '),
                _ => name.strip_prefix('#').and_then(|n| {
                    let code = match n.strip_prefix(['x', 'X']) {
                        Some(hex) => u32::from_str_radix(hex, 16).ok(),
                        None => n.parse().ok(),
                    };
                    code.and_then(char::from_u32)
                }),
            };
            c.map(|c| (c, end))
        });
        match decoded {
            Some((c, end)) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
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
    fn an_html_body_becomes_text_in_one_pass() {
        let html = "<html><head><title>T</title><style>p{}</style></head><body>\
                    <h1>Alert &amp; case</h1><p>Hello <b>ana</b>,</p>\
                    <p>See <a href=\"https://x.example/c?a=1&amp;b=2\">the case</a>.<br>Bye\
                    </p><ul><li>one</li><li>two</li></ul><script>x()</script>a &lt; b\
                    <!-- <p>hidden</p> --> &#233;&#x41; &unknown;</body></html>";
        assert_eq!(
            html_to_text(html),
            "Alert & case\n\nHello ana,\n\nSee the case (https://x.example/c?a=1&b=2).\nBye\
             \n\none\n\ntwo\n\na < b éA &unknown;"
        );
        assert_eq!(html_to_text("a < b > c"), "a < b > c");
        assert_eq!(html_to_text("<b>x</b> <i>y</i>"), "x y");
        assert_eq!(
            html_to_text("<table><tr><td>a</td><td>b</td></tr></table>"),
            "a b"
        );
        assert_eq!(
            html_to_text("<a href=\"?q=&amp;lt;\">q</a>"),
            "q (?q=&lt;)",
            "an address decoded once"
        );
        assert_eq!(html_to_text("<p>unclosed <b"), "unclosed <b");
        assert_eq!(html_to_text("<script>never closed"), "");
        assert_eq!(html_to_text("<a href='javascript:x()'>no</a>"), "no");
    }

    #[test]
    fn hostile_markup_costs_its_length() {
        // Shapes that cost html2text seconds and gigabytes: here each is one pass.
        let reopened: String = (0..20_000)
            .map(|i| format!("<font x=\"</font>{i}\">"))
            .collect();
        let text = html_to_text(&format!("{reopened}{}", "<p>x".repeat(20_000)));
        assert!(text.starts_with("x\n\nx"), "{}", &text[..20]);
        let ampersands = html_to_text(&"&".repeat(1 << 20));
        assert_eq!(ampersands.len(), 1 << 20);
        let attributes: String = (0..100_000).map(|i| format!(" z{i}")).collect();
        assert_eq!(html_to_text(&format!("<p{attributes}>x</p>")), "x");
        assert_eq!(html_to_text(&"<div>".repeat(200_000)), "");
        let links = html_to_text(&"<a href=h>l".repeat(50_000));
        assert_eq!(
            links.matches("l (h)").count(),
            0,
            "unclosed links print no address"
        );
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
