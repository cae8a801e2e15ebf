//! Task identity and the deterministic names derived from it (DESIGN.md §1).
//!
//! A task is named by its manifest's path relative to the watched root, without the
//! extension. Every container name is a pure function of (task, attempt, index), which
//! is what lets a restarted controller adopt a container instead of creating a second.
//!
//! A [`TaskKey`] is checked once, where it is made ([`TaskKey::parse`]), so that every
//! layer that turns it into a path or a blob name may trust it (DESIGN.md §12).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

/// The identity of a task: `jobs/thumb` for `jobs/thumb.yaml`. Never empty, absolute,
/// nor holding `..`, `.`, `.skiff`, an empty segment, a NUL or a backslash.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TaskKey(String);

/// Why a string cannot name a task. The offending text is not repeated: it may be
/// anything a client sent, and callers name where it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadTaskKey {
    #[error("a task key cannot be empty")]
    Empty,
    #[error("a task key cannot contain a NUL byte")]
    Nul,
    #[error("a task key cannot contain a backslash; separate folders with '/'")]
    Backslash,
    #[error("a task key is relative to the watched folder; it cannot start with '/'")]
    Absolute,
    #[error("a task key cannot have an empty segment ('//' or a trailing '/')")]
    EmptySegment,
    #[error("a task key cannot have a '.' or '..' segment")]
    DotSegment,
    #[error("a task key cannot name the state folder '.skiff'")]
    StateFolder,
}

/// Longest sanitized task fragment inside a container name; keeps names within the
/// 63 characters that Docker hostnames and ACI group names allow.
const MAX_NAME_FRAGMENT: usize = 30;

impl TaskKey {
    /// The only way to make a key from text that came from outside (a file name, a blob
    /// name, a route, an argument, `dependsOn`).
    pub fn parse(key: &str) -> Result<Self, BadTaskKey> {
        if key.is_empty() {
            return Err(BadTaskKey::Empty);
        }
        if key.contains('\0') {
            return Err(BadTaskKey::Nul);
        }
        if key.contains('\\') {
            return Err(BadTaskKey::Backslash);
        }
        if key.starts_with('/') {
            return Err(BadTaskKey::Absolute);
        }
        for segment in key.split('/') {
            match segment {
                "" => return Err(BadTaskKey::EmptySegment),
                "." | ".." => return Err(BadTaskKey::DotSegment),
                // Case-blind: the folder may sit on a case-insensitive filesystem.
                s if s.eq_ignore_ascii_case(".skiff") => return Err(BadTaskKey::StateFolder),
                _ => {}
            }
        }
        Ok(TaskKey(key.to_string()))
    }

    /// For tests' literals only: panics on a bad key.
    #[cfg(test)]
    pub fn new(key: impl Into<String>) -> Self {
        let key = key.into();
        match TaskKey::parse(&key) {
            Ok(key) => key,
            Err(err) => panic!("{key:?}: {err}"),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// First 8 hex digits of the SHA-256 of the identity; disambiguates tasks whose
    /// sanitized names collide (`a/b` and `a-b`).
    pub fn identity_hash8(&self) -> String {
        let digest = Sha256::digest(self.0.as_bytes());
        hex::encode(&digest[..4])
    }

    /// The prefix shared by every container of this task, across attempts.
    pub fn container_prefix(&self) -> String {
        format!("skiff-{}-{}-", sanitize(&self.0), self.identity_hash8())
    }

    /// `skiff-<sanitized task>-<8 hex>-<attempt>[-<index>]` (DESIGN.md §1).
    pub fn container_name(&self, attempt: u32, index: Option<u32>) -> String {
        match index {
            Some(index) => format!("{}{attempt}-{index}", self.container_prefix()),
            None => format!("{}{attempt}", self.container_prefix()),
        }
    }
}

impl TaskKey {
    /// A scheduled task's container: `skiff-<sanitized task>-<8 hex>-r<run>-<attempt>[-<index>]`,
    /// so that two runs never share a name.
    pub fn run_container_name(&self, run: u32, attempt: u32, index: Option<u32>) -> String {
        match index {
            Some(index) => format!("{}r{run}-{attempt}-{index}", self.container_prefix()),
            None => format!("{}r{run}-{attempt}", self.container_prefix()),
        }
    }
}

impl TryFrom<String> for TaskKey {
    type Error = BadTaskKey;

    fn try_from(key: String) -> Result<Self, BadTaskKey> {
        TaskKey::parse(&key)
    }
}

impl From<TaskKey> for String {
    fn from(key: TaskKey) -> String {
        key.0
    }
}

impl std::str::FromStr for TaskKey {
    type Err = BadTaskKey;

    fn from_str(key: &str) -> Result<Self, BadTaskKey> {
        TaskKey::parse(key)
    }
}

impl fmt::Display for TaskKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Lowercase ASCII letters and digits, everything else folded to single dashes.
fn sanitize(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for ch in raw.chars() {
        let ch = ch.to_ascii_lowercase();
        if ch.is_ascii_lowercase() || ch.is_ascii_digit() {
            out.push(ch);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let trimmed: String = out.trim_matches('-').chars().take(MAX_NAME_FRAGMENT).collect();
    let trimmed = trimmed.trim_end_matches('-').to_string();
    if trimmed.is_empty() {
        "task".to_string()
    } else {
        trimmed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_names_are_deterministic_and_safe() {
        let key = TaskKey::new("jobs/Thumb_Nail");
        let name = key.container_name(2, None);
        assert!(name.starts_with("skiff-jobs-thumb-nail-"), "{name}");
        assert!(name.ends_with("-2"));
        assert_eq!(name, key.container_name(2, None));
        assert_eq!(key.container_name(1, Some(3)), format!("{}1-3", key.container_prefix()));
        assert_ne!(
            TaskKey::new("a/b").container_name(1, None),
            TaskKey::new("a-b").container_name(1, None)
        );
    }

    #[test]
    fn long_and_odd_names_stay_short_and_valid() {
        let key = TaskKey::new("ÄÖÜ/".repeat(40) + &"x".repeat(200));
        let name = key.container_name(100, Some(999));
        assert!(name.len() <= 63, "{} chars: {name}", name.len());
        assert!(
            name.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        );
        assert_eq!(
            TaskKey::new("___").container_name(1, None).split('-').nth(1),
            Some("task")
        );
    }

    #[test]
    fn bad_keys_are_refused_with_the_problem_named() {
        let cases = [
            ("", BadTaskKey::Empty),
            ("a\0b", BadTaskKey::Nul),
            ("a\\b", BadTaskKey::Backslash),
            ("/etc/passwd", BadTaskKey::Absolute),
            ("a//b", BadTaskKey::EmptySegment),
            ("a/", BadTaskKey::EmptySegment),
            ("..", BadTaskKey::DotSegment),
            ("../../outside/outman", BadTaskKey::DotSegment),
            ("jobs/../../x", BadTaskKey::DotSegment),
            ("jobs/./x", BadTaskKey::DotSegment),
            (".skiff/events/x", BadTaskKey::StateFolder),
            ("a/.SKIFF/x", BadTaskKey::StateFolder),
        ];
        for (raw, problem) in cases {
            assert_eq!(TaskKey::parse(raw), Err(problem), "{raw:?}");
            assert!(
                serde_json::from_value::<TaskKey>(serde_json::json!(raw)).is_err(),
                "{raw:?}"
            );
        }
        for good in ["a", "jobs/thumb", "a b/c", "..a/b..", ".hidden-ish/x", "a.skiff/b"] {
            assert_eq!(TaskKey::parse(good).map(|k| k.to_string()), Ok(good.to_string()));
        }
        let back: TaskKey = serde_json::from_value(serde_json::json!("jobs/a")).unwrap();
        assert_eq!(back, TaskKey::new("jobs/a"));
    }
}
