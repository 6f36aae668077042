//! The plain-text part of an HTML body ([`html_to_text`]), made by hand in one pass: every
//! HTML notification and built-in email carries one.

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
}
