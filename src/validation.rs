//! Field violations: how every layer reports bad input, one entry per bad field, so that
//! the gRPC adapter answers `INVALID_ARGUMENT` with a `BadRequest` naming each of them.

use std::fmt;

/// One bad field: its path in the request (`settings.port`) and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The field's path, as in the request.
    pub field: String,
    /// What is wrong with it, for a human.
    pub description: String,
}

/// Most violations kept for one request: a request of 4 MiB holds a million list entries,
/// each of which could be refused, and each violation is held, joined into the status
/// message and copied into its details.
pub const MAX_KEPT: usize = 32;
/// Most bytes of a violation's field path or description kept: both may quote the
/// caller's input (a map key, a rendered value of up to 1 MiB).
pub const MAX_TEXT: usize = 512;

/// The violations found in one request: the first [`MAX_KEPT`], and how many more.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Violations {
    kept: Vec<Violation>,
    omitted: usize,
}

impl Violations {
    /// No violations yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `field` is bad (counted only, past [`MAX_KEPT`]; each text cut to
    /// [`MAX_TEXT`] bytes).
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        if self.kept.len() == MAX_KEPT {
            self.omitted += 1;
            return;
        }
        self.kept.push(Violation {
            field: shortened(field.into()),
            description: shortened(description.into()),
        });
    }

    /// Adds every violation of `other`, those it only counted included.
    pub fn absorb(&mut self, other: &Violations) {
        for v in &other.kept {
            self.add(v.field.clone(), v.description.clone());
        }
        self.omitted += other.omitted;
    }

    /// How many violations were counted but not kept.
    pub fn omitted(&self) -> usize {
        self.omitted
    }

    /// Runs `check` on a value, recording its error under `field`; the value when it passed.
    pub fn check<T, E: fmt::Display>(&mut self, field: &str, check: Result<T, E>) -> Option<T> {
        check.map_err(|e| self.add(field, e.to_string())).ok()
    }

    /// Whether nothing was found.
    pub fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }

    /// `Ok(value)` when nothing was found.
    pub fn into_result<T>(self, value: T) -> Result<T, Self> {
        if self.is_empty() {
            Ok(value)
        } else {
            Err(self)
        }
    }

    /// The violations kept, in the order found.
    pub fn iter(&self) -> impl Iterator<Item = &Violation> {
        self.kept.iter()
    }
}

/// `text` cut to at most [`MAX_TEXT`] bytes (on a character boundary), marked when cut.
fn shortened(mut text: String) -> String {
    if text.len() > MAX_TEXT {
        let mut end = MAX_TEXT - '…'.len_utf8();
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

impl fmt::Display for Violations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, v) in self.kept.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", v.field, v.description)?;
        }
        if self.omitted > 0 {
            write!(f, "; and {} more", self.omitted)?;
        }
        Ok(())
    }
}

/// A single-violation error.
pub fn violation(field: impl Into<String>, description: impl Into<String>) -> Violations {
    let mut v = Violations::new();
    v.add(field, description);
    v
}

/// Checks a short free-text value (a name, an organisation): not empty when `required`,
/// at most `max` characters, no control characters (so no CR/LF reaches a header or log).
pub fn text(value: &str, required: bool, max: usize) -> Result<(), String> {
    if value.is_empty() {
        return if required {
            Err("is required".into())
        } else {
            Ok(())
        };
    }
    if value.chars().count() > max {
        return Err(format!("must be at most {max} characters"));
    }
    if value.chars().any(char::is_control) {
        return Err("must not contain control characters (CR, LF, tab, ...)".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn many_violations_keep_a_few_short_ones() {
        let mut v = Violations::new();
        let huge = "x".repeat(1024 * 1024);
        for i in 0..100_000 {
            v.add(format!("permissions[{i}]"), format!("unknown {huge:.1000}"));
        }
        v.add(huge.clone(), huge);
        assert_eq!(v.iter().count(), MAX_KEPT);
        assert_eq!(v.omitted(), 100_001 - MAX_KEPT);
        assert!(v.iter().all(|v| v.description.len() <= MAX_TEXT));
        assert!(v.iter().all(|v| v.description.ends_with('…')));
        assert!(v
            .to_string()
            .ends_with(&format!("; and {} more", 100_001 - MAX_KEPT)));

        let mut merged = violation("to", "é".repeat(MAX_TEXT));
        assert!(merged.iter().all(|v| v.description.len() <= MAX_TEXT));
        merged.absorb(&v);
        assert_eq!(
            (merged.iter().count(), merged.omitted()),
            (MAX_KEPT, 100_002 - MAX_KEPT)
        );
    }
}
