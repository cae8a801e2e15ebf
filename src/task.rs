//! Task identity and the deterministic names derived from it (DESIGN.md §1).
//!
//! A task is named by its manifest's path relative to the watched root, without the
//! extension. Every container name is a pure function of (task, attempt, index), which
//! is what lets a restarted controller adopt a container instead of creating a second.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

/// The identity of a task: `jobs/thumb` for `jobs/thumb.yaml`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TaskKey(String);

/// Longest sanitized task fragment inside a container name; keeps names within the
/// 63 characters that Docker hostnames and ACI group names allow.
const MAX_NAME_FRAGMENT: usize = 30;

impl TaskKey {
    pub fn new(key: impl Into<String>) -> Self {
        TaskKey(key.into())
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
}
