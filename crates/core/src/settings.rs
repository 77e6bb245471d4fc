//! Settings, parsed rather than validated: every module that has settings owns a raw serde
//! section (what a TOML file or an environment variable may say, with the defaults) and
//! converts it once into typed parameters (`Duration`, `PairKey`, enums) that cannot be
//! invalid. This module holds what those conversions share: the error that names the field,
//! and the checked conversions of numbers into durations and bounded values.
//!
//! An owner names fields relative to its own section (`fsm.cooldown_minutes`); whoever mounts
//! the section prefixes it ([`FieldError::within`]), so that the message a user reads names
//! the full path (`signal.fsm.cooldown_minutes`). This module never reads files or the
//! environment: the composition root does, and adds where a bad value came from.

use std::fmt;
use std::time::Duration;

/// A value that cannot be used, with the field it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The dotted path of the field (`server.bind`).
    pub field: String,
    /// What is wrong, as a phrase that follows the field name ("is out of range").
    pub message: String,
    /// The value as given, and what was allowed.
    pub value: String,
}

impl FieldError {
    pub fn new(field: &str, message: impl Into<String>, value: impl fmt::Display) -> FieldError {
        FieldError {
            field: field.to_string(),
            message: message.into(),
            value: value.to_string(),
        }
    }

    /// The same error seen from the section that mounts this one under `prefix`.
    pub fn within(mut self, prefix: &str) -> FieldError {
        if !prefix.is_empty() {
            self.field = format!("{prefix}.{}", self.field);
        }
        self
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "field `{}` {} (got {})",
            self.field, self.message, self.value
        )
    }
}

impl std::error::Error for FieldError {}

/// `x` as a finite number in `[lo, hi]`.
pub fn in_range(field: &str, x: f64, lo: f64, hi: f64) -> Result<f64, FieldError> {
    if x.is_finite() && x >= lo && x <= hi {
        Ok(x)
    } else {
        Err(FieldError::new(
            field,
            "is out of range",
            format!("{x}; allowed {lo}..={hi}"),
        ))
    }
}

/// `x` at least `lo`.
pub fn at_least<T: PartialOrd + fmt::Display + Copy>(
    field: &str,
    x: T,
    lo: T,
) -> Result<T, FieldError> {
    if x >= lo {
        Ok(x)
    } else {
        Err(FieldError::new(
            field,
            "is too small",
            format!("{x}; minimum {lo}"),
        ))
    }
}

/// A number of seconds in `[lo, hi]` as a duration.
pub fn seconds(field: &str, x: f64, lo: f64, hi: f64) -> Result<Duration, FieldError> {
    in_range(field, x, lo, hi).map(Duration::from_secs_f64)
}

/// A number of minutes in `[lo, hi]` as a duration.
pub fn minutes(field: &str, x: f64, lo: f64, hi: f64) -> Result<Duration, FieldError> {
    in_range(field, x, lo, hi).map(|m| Duration::from_secs_f64(m * 60.0))
}

/// A number of hours in `[lo, hi]` as a duration.
pub fn hours(field: &str, x: f64, lo: f64, hi: f64) -> Result<Duration, FieldError> {
    in_range(field, x, lo, hi).map(|h| Duration::from_secs_f64(h * 3600.0))
}

/// A duration in whole milliseconds (the unit the sans-IO code computes in), saturating.
pub fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A duration in fractional minutes (ages and windows are compared in minutes).
pub fn as_minutes(d: Duration) -> f64 {
    d.as_secs_f64() / 60.0
}

/// A URL with any user information (`user:password@`, `token@`) replaced by `***`, for
/// messages: a secret in a URL is never printed.
pub fn redact_url(raw: &str) -> String {
    match raw.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            match rest[..authority_end].rfind('@') {
                Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
                None => raw.to_string(),
            }
        }
        None => raw.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_check_and_name_the_field() {
        assert_eq!(minutes("a.b", 1.5, 0.0, 10.0), Ok(Duration::from_secs(90)));
        let e = minutes("b", f64::NAN, 0.0, 10.0).unwrap_err().within("a");
        assert_eq!(e.field, "a.b");
        assert!(
            e.to_string().starts_with("field `a.b` is out of range"),
            "{e}"
        );
        assert!(seconds("s", -1.0, 0.0, 5.0).is_err());
        assert_eq!(at_least("n", 3u64, 1), Ok(3));
        assert!(at_least("n", 0u64, 1)
            .unwrap_err()
            .to_string()
            .contains("minimum 1"));
        assert_eq!(ms(Duration::from_secs(2)), 2_000);
        assert_eq!(ms(Duration::MAX), i64::MAX);
        assert_eq!(FieldError::new("x", "m", 1).within("").field, "x");
    }
}
