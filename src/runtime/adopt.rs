//! The adopt-or-replace decision every runtime's `ensure` makes about a container it finds
//! under the name it was asked to make. Names are deterministic, so a container of that
//! name may be this very attempt's (made before a crash: adopt it, never create it twice,
//! invariant 2), an earlier attempt's of this controller (kept by `cleanup`, or left from
//! before its status was deleted: replace it), or someone else's (never touch it). Pure,
//! so that the table is tested once for every runtime.

/// What `ensure` does with a container found under its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict<'a> {
    /// This controller made it for this attempt (or the spec names no attempt): it is the
    /// container asked for.
    Adopt,
    /// This controller made it for another attempt: remove it (and its kept log), then
    /// make this attempt's.
    Replace,
    /// Another controller's (`owner`), or not skiff's at all (`None`): neither adopted nor
    /// removed in this controller's name; `ensure` waits for it to go.
    Foreign { owner: Option<&'a str> },
}

/// The verdict on a found container whose owner mark is `found_owner` (docker: the state
/// folder label; aci: the owner tag) and attempt id `found_attempt`, for this controller
/// (`ours`) asked to make attempt `wanted_attempt`.
pub fn verdict<'a>(
    found_owner: Option<&'a str>,
    ours: &str,
    found_attempt: Option<&str>,
    wanted_attempt: Option<&str>,
) -> Verdict<'a> {
    if found_owner != Some(ours) {
        return Verdict::Foreign { owner: found_owner };
    }
    match wanted_attempt {
        Some(wanted) if found_attempt != Some(wanted) => Verdict::Replace,
        _ => Verdict::Adopt,
    }
}

/// `ensure`'s answer to a [`Verdict::Foreign`] `thing` (e.g. "container group") found
/// under `name` by `runtime`: Transient, it waits for the thing to go. `mark` says what
/// the owner is known by (e.g. "owner", "state folder").
pub fn taken(runtime: &str, name: &str, thing: &str, owner: Option<&str>, mark: &str) -> super::RuntimeError {
    super::RuntimeError::Transient(format!(
        "{runtime}: the name {name} is taken by a {thing} that {}; waiting for it to go",
        match owner {
            Some(other) => format!("another skiff controller made ({mark} {other})"),
            None => "skiff did not make".to_string(),
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_found_container_is_adopted_replaced_or_left_alone() {
        let us = "us";
        // (found owner, found attempt, wanted attempt) → verdict
        type Row<'a> = (Option<&'a str>, Option<&'a str>, Option<&'a str>, Verdict<'a>);
        let table: [Row<'_>; 9] = [
            (Some(us), Some("a1"), Some("a1"), Verdict::Adopt),
            (Some(us), Some("a0"), Some("a1"), Verdict::Replace),
            // Made before attempt ids were labelled: not this attempt's.
            (Some(us), None, Some("a1"), Verdict::Replace),
            // A spec without an attempt id (statuses from before ids): the name decides.
            (Some(us), Some("a0"), None, Verdict::Adopt),
            (Some(us), None, None, Verdict::Adopt),
            // Another controller's, even of this very attempt id: never ours.
            (
                Some("them"),
                Some("a1"),
                Some("a1"),
                Verdict::Foreign { owner: Some("them") },
            ),
            (
                Some("them"),
                Some("a0"),
                Some("a1"),
                Verdict::Foreign { owner: Some("them") },
            ),
            (None, Some("a1"), Some("a1"), Verdict::Foreign { owner: None }),
            (None, None, None, Verdict::Foreign { owner: None }),
        ];
        for (owner, found, wanted, expected) in table {
            assert_eq!(
                verdict(owner, us, found, wanted),
                expected,
                "owner {owner:?}, found {found:?}, wanted {wanted:?}"
            );
        }
    }
}
