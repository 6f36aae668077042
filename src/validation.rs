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

/// The violations found in one request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Violations(Vec<Violation>);

impl Violations {
    /// No violations yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `field` is bad.
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(Violation {
            field: field.into(),
            description: description.into(),
        });
    }

    /// Runs `check` on a value, recording its error under `field`; the value when it passed.
    pub fn check<T, E: fmt::Display>(&mut self, field: &str, check: Result<T, E>) -> Option<T> {
        check.map_err(|e| self.add(field, e.to_string())).ok()
    }

    /// Whether nothing was found.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok(value)` when nothing was found.
    pub fn into_result<T>(self, value: T) -> Result<T, Self> {
        if self.is_empty() {
            Ok(value)
        } else {
            Err(self)
        }
    }

    /// The violations, in the order found.
    pub fn iter(&self) -> impl Iterator<Item = &Violation> {
        self.0.iter()
    }
}

impl fmt::Display for Violations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, v) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", v.field, v.description)?;
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
