//! Notification templates: Handlebars, as TheHive's notifiers have them, with TheHive's
//! helpers (`eq`, built in, and those of `helpers.rs`); the text part of an HTML body is
//! `text.rs`'s.
//!
//! [`Templates::compile`] parses every template of a request once, in the sandbox
//! (`sandbox.rs`), so that a broken or hostile one is reported before anything is queued,
//! naming its field; rendering then runs per message. A [`TemplateCache`] keeps compiled
//! sets, bounded in bytes: notifiers send the same templates again and again, and parsing
//! them cost more than a quarter of a `SendToAddresses` (docs/PERFORMANCE.md).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use handlebars::{no_escape, Context, Handlebars, RenderError};
use serde_json::Value;

use super::{helpers, sandbox};
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
    hb.register_helper("tlpLabel", Box::new(helpers::tlp_label));
    hb.register_helper("papLabel", Box::new(helpers::pap_label));
    hb.register_helper("severityLabel", Box::new(helpers::severity_label));
    hb.register_helper("dateFormat", Box::new(helpers::date_format));
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

    /// dateFormat's output is escaped in HTML as a value is: its pattern's literal text is
    /// the caller's (a Directory name passed as the pattern printed markup, hostile review).
    #[test]
    fn date_format_is_escaped_in_html() {
        let data = json!({"name": "'<img src=x onerror=alert(1)>'"});
        let html = render(
            "<p>{{dateFormat 0 name}}</p>",
            data.clone(),
            BodyFormat::Html,
        );
        assert_eq!(html, "<p>&lt;img src&#x3D;x onerror&#x3D;alert(1)&gt;</p>");
        let text = render("{{dateFormat 0 name}}", data, BodyFormat::Text);
        assert_eq!(text, "<img src=x onerror=alert(1)>");
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
