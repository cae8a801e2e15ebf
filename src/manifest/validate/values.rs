//! The values a manifest spells as text: names, variable names, durations, host paths,
//! cpu and memory quantities, and the argument size Linux accepts.

use crate::manifest::wire::Quantity;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

/// The longest task name (`metadata.name`, or the file's stem when it is not set).
const MAX_NAME_LEN: usize = 63;

/// Linux refuses to start a program given one argument or `NAME=value` of this many
/// bytes or more (MAX_ARG_STRLEN, counting the terminating NUL), in a container too.
pub(super) const MAX_ARG_BYTES: usize = 128 * 1024;

pub(super) fn too_long(len: usize) -> String {
    format!(
        "is {len} bytes; Linux refuses to start a program given a single argument or variable of {MAX_ARG_BYTES} bytes or more; put large data in a file (a volume) and pass its path"
    )
}

pub(super) fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("is empty; give the task a name");
    }
    if name.len() > MAX_NAME_LEN {
        return Err("is longer than 63 characters; shorten it");
    }
    if name.contains("..") {
        return Err("may not contain \"..\"; use letters, digits, '-', '_' and '.'");
    }
    if name.starts_with(['.', '-']) {
        return Err("may not start with '.' or '-'");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err("may hold only letters, digits, '-', '_' and '.'");
    }
    Ok(())
}

pub(super) fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

pub(super) fn parse_duration(text: &str) -> Result<Duration, ()> {
    humantime::parse_duration(text.trim()).map_err(|_| ())
}

pub(super) fn is_allowed_host_path(path: &Path, prefixes: &[PathBuf]) -> bool {
    if path.components().any(|c| matches!(c, Component::ParentDir)) {
        return false;
    }
    prefixes.iter().any(|prefix| path.starts_with(prefix))
}

pub(super) fn parse_cpu(q: &Quantity) -> Result<f64, String> {
    let value = match q {
        Quantity::Number(n) => *n,
        Quantity::Text(text) => {
            let text = text.trim();
            let parsed = match text.strip_suffix('m') {
                Some(milli) => milli.parse::<f64>().map(|m| m / 1000.0),
                None => text.parse::<f64>(),
            };
            parsed.map_err(|_| format!("{text:?} is not a CPU amount; write e.g. 1, 0.5 or \"500m\""))?
        }
    };
    if !(value.is_finite() && value > 0.0) {
        return Err(format!("{value} must be more than zero; write e.g. 1 or 0.5"));
    }
    Ok(value)
}

pub(super) fn parse_memory(q: &Quantity) -> Result<u64, String> {
    let bytes = match q {
        Quantity::Number(n) => *n,
        Quantity::Text(text) => {
            let text = text.trim();
            const UNITS: [(&str, f64); 8] = [
                ("Ki", 1024.0),
                ("Mi", 1024.0 * 1024.0),
                ("Gi", 1024.0 * 1024.0 * 1024.0),
                ("Ti", 1024.0 * 1024.0 * 1024.0 * 1024.0),
                ("k", 1e3),
                ("M", 1e6),
                ("G", 1e9),
                ("T", 1e12),
            ];
            let (number, scale) = UNITS
                .iter()
                .find_map(|(suffix, scale)| text.strip_suffix(suffix).map(|n| (n, *scale)))
                .unwrap_or((text, 1.0));
            let number: f64 = number
                .trim()
                .parse()
                .map_err(|_| format!("{text:?} is not a memory amount; write e.g. 512Mi or 1.5Gi"))?;
            number * scale
        }
    };
    if !(bytes.is_finite() && bytes >= 1.0) {
        return Err(format!("{bytes} must be more than zero; write e.g. 512Mi or 1.5Gi"));
    }
    Ok(bytes as u64)
}
