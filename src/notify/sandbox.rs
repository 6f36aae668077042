//! The sandbox templates run in: any caller with `manageConfig` writes them, so a template
//! must never be able to crash the process, fill its memory or hold a worker.
//!
//! - **Parsed**: at most [`MAX_SOURCE_BYTES`] of source; no partials, partial blocks or
//!   inline templates (`{{> x}}`, `{{#> x}}`, `{{#*inline}}`: a partial that includes
//!   itself overflows the stack and aborts the process); blocks and subexpressions nested
//!   at most [`MAX_DEPTH`] deep; only the documented helpers ([`HELPERS`]; not `log`, which
//!   would write values into the server log).
//! - **Rendered**: output is counted *while* it is written and stops at the message size
//!   limit ([`Bounded`]), and every item a loop runs spends a budget of [`STEPS`] per
//!   template ([`Budget`], [`Each`]), so that nested loops over the request's own lists
//!   cannot run for minutes producing nothing.

use std::cell::Cell;

use handlebars::template::{Parameter, Template, TemplateElement};
use handlebars::{
    BlockContext, BlockParams, Context, Handlebars, Helper, HelperDef, HelperResult, Output,
    RenderContext, RenderError, RenderErrorReason, Renderable,
};
use serde_json::Value;

/// Most bytes one template renders to: the most a message holds as sent.
pub const MAX_OUTPUT_BYTES: usize = 1024 * 1024;
/// Most bytes of one template's source: a larger one could not render into a message.
pub const MAX_SOURCE_BYTES: usize = MAX_OUTPUT_BYTES;
/// Most expressions (`{{…}}`) in one template.
pub const MAX_EXPRESSIONS: usize = 1000;
/// Deepest nesting of blocks (`{{#each}}`, `{{#if}}`…) and subexpressions.
pub const MAX_DEPTH: usize = 8;
/// Steps one template may take: each item a loop runs costs one, plus one for each element
/// of the block it renders.
pub const STEPS: u64 = 200_000;
/// Helpers a template may call: Handlebars' block helpers and comparisons, and TheHive's.
/// (Not `lookup`: it copies the value it finds, a few MiB of context at each call.)
pub const HELPERS: [&str; 18] = [
    "if",
    "unless",
    "each",
    "with",
    "eq",
    "ne",
    "gt",
    "gte",
    "lt",
    "lte",
    "and",
    "or",
    "not",
    "len",
    "tlpLabel",
    "papLabel",
    "severityLabel",
    "dateFormat",
];

/// Parses `source` and checks it against the sandbox's rules; the reason when it breaks one.
pub fn parse(source: &str) -> Result<Template, String> {
    if source.len() > MAX_SOURCE_BYTES {
        return Err(format!(
            "is {} bytes; a template has at most {MAX_SOURCE_BYTES}",
            source.len()
        ));
    }
    // Handlebars finds each element's line and column from the start of the source:
    // compiling costs elements × length (measured: 128 KiB of `{{a}}` took 10 s).
    let expressions = source.matches("{{").count();
    if expressions > MAX_EXPRESSIONS {
        return Err(format!(
            "has {expressions} expressions ({{{{…}}}}); a template has at most {MAX_EXPRESSIONS}"
        ));
    }
    let template = Template::compile(source).map_err(|e| match e.pos() {
        Some((line, column)) => format!(
            "template error at line {line}, column {column}: {}",
            e.reason()
        ),
        None => format!("template error: {}", e.reason()),
    })?;
    check_elements(&template.elements, 0)?;
    Ok(template)
}

/// Whether `template` prints a value unescaped anywhere (`{{{value}}}`, `{{&value}}`, with
/// whitespace control or spaces), its blocks included: parsed, not matched as text.
pub fn prints_unescaped(template: &Template) -> bool {
    template.elements.iter().any(|element| match element {
        TemplateElement::HtmlExpression(_) => true,
        TemplateElement::HelperBlock(h) => [&h.template, &h.inverse]
            .into_iter()
            .flatten()
            .any(prints_unescaped),
        _ => false,
    })
}

fn check_elements(elements: &[TemplateElement], depth: usize) -> Result<(), String> {
    for element in elements {
        match element {
            TemplateElement::RawString(_) | TemplateElement::Comment(_) => {}
            TemplateElement::Expression(h) | TemplateElement::HtmlExpression(h) => {
                check_call(&h.name, &h.params, !h.params.is_empty(), depth)?;
                check_hash(h.hash.values(), depth)?;
            }
            TemplateElement::HelperBlock(h) => {
                if depth + 1 > MAX_DEPTH {
                    return Err(too_deep());
                }
                check_call(&h.name, &h.params, true, depth + 1)?;
                check_hash(h.hash.values(), depth + 1)?;
                for inner in [&h.template, &h.inverse].into_iter().flatten() {
                    check_elements(&inner.elements, depth + 1)?;
                }
            }
            TemplateElement::PartialExpression(_) | TemplateElement::PartialBlock(_) => {
                return Err("partials ({{> name}}) are not allowed".into());
            }
            TemplateElement::DecoratorExpression(_) | TemplateElement::DecoratorBlock(_) => {
                return Err(
                    "decorators and inline templates ({{#*inline}}) are not allowed".into(),
                );
            }
            // A construct a later Handlebars adds is refused until it is looked at.
            _ => return Err("this template construct is not allowed".into()),
        }
    }
    Ok(())
}

/// Checks a helper call (or a plain value, `called` false) and its parameters.
fn check_call(
    name: &Parameter,
    params: &[Parameter],
    called: bool,
    depth: usize,
) -> Result<(), String> {
    if called {
        match name {
            Parameter::Name(n) if HELPERS.contains(&n.as_str()) => {}
            Parameter::Name(n) => {
                return Err(format!(
                    "helper {n:?} is not available; the helpers are {}",
                    HELPERS.join(", ")
                ))
            }
            _ => {}
        }
    }
    params.iter().try_for_each(|p| check_parameter(p, depth))
}

fn check_hash<'a>(values: impl Iterator<Item = &'a Parameter>, depth: usize) -> Result<(), String> {
    values
        .into_iter()
        .try_for_each(|p| check_parameter(p, depth))
}

fn check_parameter(parameter: &Parameter, depth: usize) -> Result<(), String> {
    match parameter {
        Parameter::Subexpression(sub) => {
            if depth + 1 > MAX_DEPTH {
                return Err(too_deep());
            }
            check_elements(std::slice::from_ref(&sub.element), depth + 1)
        }
        _ => Ok(()),
    }
}

fn too_deep() -> String {
    format!("blocks and subexpressions nest at most {MAX_DEPTH} deep")
}

thread_local! {
    /// Steps left to the template rendering on this thread ([`Budget`]). Rendering is
    /// synchronous: one template renders on one thread, start to end.
    static STEPS_LEFT: Cell<u64> = const { Cell::new(STEPS) };
    /// When the template rendering on this thread must end ([`RENDER_TIME`]).
    static DEADLINE: Cell<Option<std::time::Instant>> = const { Cell::new(None) };
}

/// The longest one template may render: steps bound loops, this bounds whatever a step
/// costs (a helper over a large value).
pub const RENDER_TIME: std::time::Duration = std::time::Duration::from_secs(2);

/// The longest all the renderings of one request may take together: `SendToUsers` renders
/// its templates once per user, and a template just inside [`RENDER_TIME`] would otherwise
/// hold a thread for hours over a large organisation. 100,000 users of a plain template
/// render in about a second.
pub const REQUEST_RENDER_TIME: std::time::Duration = std::time::Duration::from_secs(10);

/// The render budget of one template: given whole when it starts rendering, spent by the
/// loops it runs.
pub struct Budget;

impl Budget {
    /// Gives the template about to render its whole budget: its steps, and
    /// [`RENDER_TIME`] or the `left` of its request's, whichever is shorter.
    pub fn start(left: std::time::Duration) {
        STEPS_LEFT.with(|left| left.set(STEPS));
        let time = RENDER_TIME.min(left);
        DEADLINE.with(|d| d.set(Some(std::time::Instant::now() + time)));
    }

    /// Whether the budget ran out (why the last rendering stopped).
    pub fn exhausted() -> bool {
        STEPS_LEFT.with(Cell::get) == 0
    }

    /// Spends `steps`; an error once the budget is gone.
    fn spend(steps: usize) -> Result<(), RenderError> {
        let late = DEADLINE.with(|d| d.get().is_some_and(|at| std::time::Instant::now() > at));
        let steps = if late {
            u64::MAX
        } else {
            u64::try_from(steps).unwrap_or(u64::MAX)
        };
        STEPS_LEFT.with(|left| match left.get().checked_sub(steps) {
            Some(rest) => {
                left.set(rest);
                Ok(())
            }
            None => {
                left.set(0);
                Err(RenderErrorReason::Other(too_much_work()).into())
            }
        })
    }
}

/// Why a template whose budget ran out was refused.
pub fn too_much_work() -> String {
    format!(
        "the template does too much work (more than {STEPS} steps or {} s; a request's \
         templates render for at most {} s in all)",
        RENDER_TIME.as_secs(),
        REQUEST_RENDER_TIME.as_secs()
    )
}

/// `{{#each list}}` as Handlebars has it (`this`, `@index`, `@first`, `@last`, `@key`,
/// `as |item key|`, `{{else}}` for nothing to iterate), except that it spends the budget
/// before each item: the item itself and each element of the block it renders. Handlebars'
/// own `each` cannot be wrapped (its helpers are private), and loops that write nothing
/// would otherwise cost nothing.
pub struct Each;

impl HelperDef for Each {
    fn call<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        r: &'reg Handlebars<'reg>,
        ctx: &'rc Context,
        rc: &mut RenderContext<'reg, 'rc>,
        out: &mut dyn Output,
    ) -> HelperResult {
        let param = h
            .param(0)
            .ok_or(RenderErrorReason::ParamNotFoundForIndex("each", 0))?;
        let Some(block) = h.template() else {
            return Ok(());
        };
        // (key for `@key` and block params, path segment, value) of each item, made as the
        // loop gets to it: a list of the context may hold two million items, of which the
        // budget lets a loop reach a tenth.
        let (items, len, keyed): (Box<dyn Iterator<Item = (Value, String, &Value)>>, _, _) =
            match param.value() {
                Value::Array(list) => (
                    Box::new(
                        list.iter()
                            .enumerate()
                            .map(|(i, v)| (Value::from(i), i.to_string(), v)),
                    ),
                    list.len(),
                    false,
                ),
                Value::Object(map) => (
                    Box::new(
                        map.iter()
                            .map(|(k, v)| (Value::from(k.as_str()), k.clone(), v)),
                    ),
                    map.len(),
                    true,
                ),
                _ => (Box::new(std::iter::empty()), 0, false),
            };
        if len == 0 {
            return match h.inverse() {
                Some(otherwise) => otherwise.render(r, ctx, rc, out),
                None => Ok(()),
            };
        }
        let base = param.context_path().cloned();
        let last = len - 1;
        rc.push_block(BlockContext::new());
        for (i, (key, segment, value)) in items.enumerate() {
            Budget::spend(1 + block.elements.len())?;
            if let Some(context) = rc.block_mut() {
                context.set_local_var("index", Value::from(i));
                context.set_local_var("first", Value::from(i == 0));
                context.set_local_var("last", Value::from(i == last));
                if keyed {
                    context.set_local_var("key", key.clone());
                }
                let mut params = BlockParams::new();
                let (item, index) = match (h.block_param(), h.block_param_pair()) {
                    (Some(item), _) => (Some(item), None),
                    (None, Some((item, index))) => (Some(item), Some(index)),
                    (None, None) => (None, None),
                };
                match &base {
                    Some(path) => {
                        let mut path = path.clone();
                        path.push(segment);
                        *context.base_path_mut() = path;
                        if let Some(item) = item {
                            params.add_path(item, Vec::new())?;
                        }
                    }
                    None => {
                        context.set_base_value(value.clone());
                        if let Some(item) = item {
                            params.add_value(item, value.clone())?;
                        }
                    }
                }
                if let Some(index) = index {
                    params.add_value(index, key)?;
                }
                context.set_block_params(params);
            }
            block.render(r, ctx, rc, out)?;
        }
        rc.pop_block();
        Ok(())
    }
}

/// Output that stops at `limit` bytes as it is written (not after: a few hundred bytes of
/// nested loops can render gigabytes).
pub struct Bounded {
    buf: Vec<u8>,
    limit: usize,
    /// Set when the limit stopped the rendering.
    pub overflowed: bool,
}

impl Bounded {
    /// Empty output holding at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            buf: Vec::new(),
            limit,
            overflowed: false,
        }
    }

    /// What was written (whole `str` segments: valid UTF-8).
    pub fn into_string(self) -> String {
        String::from_utf8(self.buf)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }
}

impl std::io::Write for &mut Bounded {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        Budget::spend(0).map_err(|_| std::io::Error::other("render budget"))?;
        if self.buf.len() + bytes.len() > self.limit {
            self.overflowed = true;
            return Err(std::io::Error::other("output limit reached"));
        }
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
