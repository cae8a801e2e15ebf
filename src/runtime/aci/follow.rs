//! Following a running container's output through ARM's logs API, which has no stream
//! and no offset: each poll asks for the last `tail` lines, and [`LogFollower`] finds
//! where the lines already shown end in the new window, so each line is shown once, in
//! order, however the windows overlap (the window moves as the output grows, and the copy
//! kept after the delete may reach further back than the last window did).
//!
//! While the output is shorter than a window, each window is all of it, from its first
//! line: the new lines are simply those past the ones seen. Once windows are cut, lines
//! are matched by content: output that repeats itself exactly for a whole window cannot be
//! told apart, and then lines are left out rather than shown twice. A line ARM gives
//! without its newline may still be growing: it is held back until it ends, or until the
//! output is final.

/// What one window added.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Followed {
    /// The new output, as it came (each complete line with its newline).
    pub text: String,
    /// None of the lines shown before were found in this window: output written between
    /// the two polls may have been missed.
    pub gap: bool,
}

/// The lines of the last window seen, to align the next one with.
#[derive(Debug)]
pub struct LogFollower {
    /// The lines each window asks for (ARM's `tail`).
    tail: usize,
    seen: Vec<String>,
    /// The last window had fewer lines than asked: it was all the output there was.
    seen_whole: bool,
}

impl LogFollower {
    /// A follower of windows of the last `tail` lines.
    pub fn new(tail: usize) -> Self {
        LogFollower {
            tail,
            seen: Vec::new(),
            seen_whole: true,
        }
    }

    /// Takes `window`, the last lines of the container's output (ARM's `tail`, or the whole
    /// copy kept once it ended when `finished`), and gives what was not shown yet.
    pub fn advance(&mut self, window: &str, finished: bool) -> Followed {
        let mut lines: Vec<&str> = window.split_inclusive('\n').collect();
        // The kept copy may have been cut (ACI keeps 16 KB of a stopped container's output).
        let whole = !finished && lines.len() < self.tail;
        if !finished && lines.last().is_some_and(|l| !l.ends_with('\n')) {
            lines.pop();
        }
        let n = self.seen.len();
        let continues_seen = lines.len() >= n && lines[..n].iter().zip(&self.seen).all(|(a, b)| a == b);
        let start = if self.seen_whole && continues_seen {
            n
        } else {
            self.end_of_seen(&lines)
        };
        self.seen_whole = whole;
        let gap = start == 0 && !self.seen.is_empty() && !lines.is_empty();
        let text: String = lines[start..].concat();
        self.seen = lines.iter().map(|l| l.to_string()).collect();
        Followed { text, gap }
    }

    /// Where, in `lines`, the lines already seen end: the latest position `j` such that
    /// the lines before `j` end with the seen lines' last `min(seen, j)`. Trying the latest
    /// first never shows a line twice.
    fn end_of_seen(&self, lines: &[&str]) -> usize {
        if self.seen.is_empty() {
            return 0;
        }
        for j in (1..=lines.len()).rev() {
            let m = self.seen.len().min(j);
            let seen_tail = &self.seen[self.seen.len() - m..];
            if seen_tail.iter().zip(&lines[j - m..j]).all(|(a, b)| a == b) {
                return j;
            }
        }
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TAIL: usize = 5;

    fn numbered(range: std::ops::Range<usize>) -> String {
        range.map(|i| format!("line {i}\n")).collect()
    }

    #[test]
    fn overlapping_windows_show_each_line_once_in_order() {
        let mut follower = LogFollower::new(TAIL);
        assert_eq!(follower.advance(&numbered(0..5), false).text, numbered(0..5));
        // The window moved on by three lines, and kept two of the last ones.
        let next = follower.advance(&numbered(3..8), false);
        assert_eq!(
            next,
            Followed {
                text: numbered(5..8),
                gap: false
            }
        );
        // Nothing new.
        assert_eq!(follower.advance(&numbered(3..8), false).text, "");
        // The kept copy reaches further back than the last window.
        let last = follower.advance(&numbered(0..10), true);
        assert_eq!(
            last,
            Followed {
                text: numbered(8..10),
                gap: false
            }
        );
    }

    #[test]
    fn a_window_past_everything_seen_is_shown_whole_and_said() {
        let mut follower = LogFollower::new(TAIL);
        follower.advance(&numbered(0..3), false);
        let next = follower.advance(&numbered(10..13), false);
        assert_eq!(
            next,
            Followed {
                text: numbered(10..13),
                gap: true
            }
        );
    }

    #[test]
    fn a_line_without_its_newline_waits_until_it_ends_or_the_output_is_final() {
        let mut follower = LogFollower::new(TAIL);
        assert_eq!(follower.advance("a\nhal", false).text, "a\n");
        assert_eq!(follower.advance("a\nhalf done\nb", false).text, "half done\n");
        assert_eq!(follower.advance("a\nhalf done\nbye", true).text, "bye");
    }

    #[test]
    fn repeated_lines_are_counted_not_merged() {
        let mut follower = LogFollower::new(TAIL);
        assert_eq!(follower.advance("tick\n", false).text, "tick\n");
        assert_eq!(follower.advance("tick\ntick\n", false).text, "tick\n");
        assert_eq!(follower.advance("tick\ntick\ntick\n", false).text, "tick\n");
    }

    proptest! {
        /// Distinct lines read through windows of any size that move by less than a
        /// window each poll come out exactly once each, in order.
        #[test]
        fn any_overlapping_windows_rebuild_the_output(
            total in 1usize..200,
            tail in 2usize..50,
            steps in proptest::collection::vec(0usize..50, 1..40),
        ) {
            let mut follower = LogFollower::new(tail);
            let mut shown = String::new();
            let mut written = 0usize;
            for step in steps {
                written = (written + step.min(tail - 1)).min(total);
                let window = numbered(written.saturating_sub(tail)..written);
                let followed = follower.advance(&window, false);
                prop_assert!(!followed.gap);
                shown.push_str(&followed.text);
            }
            let window = numbered(written.saturating_sub(tail)..written);
            shown.push_str(&follower.advance(&window, true).text);
            prop_assert_eq!(shown, numbered(0..written));
        }
    }
}
