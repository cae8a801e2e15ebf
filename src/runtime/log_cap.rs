//! A container's kept output, bounded (`--max-log-size`): its head and its tail, with a
//! line in between saying how much was cut. A task printing 200 MB must not keep 200 MB.
//!
//! The file is written as the output comes, so `skiff logs --follow` sees it live. Once it
//! outgrows the cap, it is compacted in place: the first half of the cap stays as it is,
//! and of what follows only the last quarter of the cap is kept. Each compaction copies at
//! most a quarter of the cap and happens once per quarter of the cap of new output, so the
//! cost stays proportional to the output, and the file never exceeds the cap.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};

/// The default `--max-log-size`.
pub const DEFAULT_MAX_LOG_BYTES: u64 = 10 * 1024 * 1024;
/// Smaller caps would leave no room for the head and tail to say anything.
pub const MIN_MAX_LOG_BYTES: u64 = 4 * 1024;

pub struct CappedLog {
    file: File,
    cap: u64,
    /// The file's length.
    len: u64,
    /// Where the kept tail starts (after the head and the note), once something was cut.
    body_start: Option<u64>,
    /// Bytes of output dropped so far.
    cut: u64,
}

impl CappedLog {
    /// Writes into `file` from its start (a new container's log replaces whatever an
    /// earlier run of the same name left), keeping at most `cap` bytes.
    pub fn new(mut file: File, cap: u64) -> io::Result<Self> {
        file.set_len(0)?;
        file.seek(SeekFrom::Start(0))?;
        Ok(CappedLog {
            file,
            cap: cap.max(MIN_MAX_LOG_BYTES),
            len: 0,
            body_start: None,
            cut: 0,
        })
    }

    /// Bytes of output dropped so far.
    pub fn cut(&self) -> u64 {
        self.cut
    }

    pub fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.seek(SeekFrom::Start(self.len))?;
        self.file.write_all(bytes)?;
        self.len += bytes.len() as u64;
        if self.len > self.cap {
            self.compact()?;
        }
        Ok(())
    }

    fn note(&self) -> String {
        format!(
            "\n[skiff: {} bytes of output cut here; --max-log-size {} keeps the first and the last bytes]\n",
            self.cut, self.cap
        )
    }

    fn compact(&mut self) -> io::Result<()> {
        let head = self.cap / 2;
        let keep = self.cap / 4;
        let body_start = self.body_start.unwrap_or(head);
        let body_len = self.len - body_start;
        let kept = body_len.min(keep);
        let mut tail = vec![0; kept as usize];
        self.file.seek(SeekFrom::Start(self.len - kept))?;
        self.file.read_exact(&mut tail)?;
        // The tail starts at a line, when it holds one: a reader sees whole lines.
        if let Some(newline) = tail.iter().position(|&b| b == b'\n')
            && newline + 1 < tail.len()
        {
            tail.drain(..=newline);
        }
        let kept = tail.len() as u64;
        self.cut += body_len - kept;
        let note = self.note();
        self.file.seek(SeekFrom::Start(head))?;
        self.file.write_all(note.as_bytes())?;
        self.file.write_all(&tail)?;
        let body_start = head + note.len() as u64;
        self.len = body_start + kept;
        self.file.set_len(self.len)?;
        self.body_start = Some(body_start);
        Ok(())
    }

    pub fn sync(&mut self) -> io::Result<()> {
        self.file.sync_all()
    }
}

const NOTE_START: &[u8] = b"\n[skiff: ";

/// Where the kept tail of a compacted log starts (just after the note of the cut), for
/// a reader following the file; `None` when nothing was cut.
pub fn kept_tail_start(bytes: &[u8]) -> Option<usize> {
    let note = bytes.windows(NOTE_START.len()).rposition(|w| w == NOTE_START)?;
    let end = bytes[note + 1..].iter().position(|&b| b == b'\n')?;
    Some(note + 1 + end + 1)
}

/// `10MiB`, `64KiB`, `1G`, `500000`: for `--max-log-size`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KB" => 1000,
        "Ki" | "KiB" => 1 << 10,
        "M" | "MB" => 1000 * 1000,
        "Mi" | "MiB" => 1 << 20,
        "G" | "GB" => 1000 * 1000 * 1000,
        "Gi" | "GiB" => 1 << 30,
        other => return Err(format!("unknown unit {other:?}; write e.g. 10MiB, 512KiB or 1GiB")),
    };
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size; write e.g. 10MiB, 512KiB or 1GiB"))?;
    let bytes = (number * factor as f64) as u64;
    if bytes < MIN_MAX_LOG_BYTES {
        return Err(format!("{text} is too small; keep at least 4KiB"));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_all(cap: u64, chunks: impl IntoIterator<Item = Vec<u8>>) -> (Vec<u8>, u64) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        std::fs::write(&path, b"an earlier run's output").unwrap();
        let file = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
        let mut log = CappedLog::new(file, cap).unwrap();
        for chunk in chunks {
            log.append(&chunk).unwrap();
            assert!(std::fs::metadata(&path).unwrap().len() <= cap, "over the cap");
        }
        (std::fs::read(&path).unwrap(), log.cut())
    }

    #[test]
    fn small_output_is_kept_whole_and_replaces_an_earlier_run() {
        let (bytes, cut) = write_all(64 * 1024, [b"hello\n".to_vec(), b"world\n".to_vec()]);
        assert_eq!(bytes, b"hello\nworld\n");
        assert_eq!(cut, 0);
        assert_eq!(kept_tail_start(&bytes), None);
    }

    #[test]
    fn large_output_keeps_head_and_tail_and_says_how_much_was_cut() {
        let cap = 64 * 1024;
        let lines: Vec<Vec<u8>> = (0..100_000).map(|i| format!("line {i:06}\n").into_bytes()).collect();
        let total: usize = lines.iter().map(Vec::len).sum();
        let (bytes, cut) = write_all(cap, lines);
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with("line 000000\nline 000001\n"));
        assert!(text.ends_with("line 099999\n"), "{}", &text[text.len() - 40..]);
        let note = format!("[skiff: {cut} bytes of output cut here");
        assert_eq!(text.matches("[skiff:").count(), 1, "one note");
        assert!(text.contains(&note), "the note counts every cut byte");
        // Everything is accounted for: what is kept, plus what was cut, is the output.
        let note_line = text.lines().find(|l| l.starts_with("[skiff:")).unwrap();
        assert_eq!(text.len() - note_line.len() - 2 + cut as usize, total);
        assert!(cut > total as u64 - cap);
        let tail = &text.as_bytes()[kept_tail_start(text.as_bytes()).expect("a cut")..];
        assert!(tail.starts_with(b"line "), "the tail starts right after the note");
    }

    #[test]
    fn one_huge_write_is_capped_too() {
        let cap = 8 * 1024;
        let (bytes, cut) = write_all(cap, [vec![b'x'; 1_000_000], b"END\n".to_vec()]);
        assert!(bytes.len() as u64 <= cap);
        assert!(bytes.ends_with(b"END\n"));
        assert!(cut >= 1_000_000 - cap);
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("10MiB"), Ok(10 << 20));
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert_eq!(parse_size("1G"), Ok(1_000_000_000));
        assert_eq!(parse_size("500000"), Ok(500_000));
        assert!(parse_size("10 parsecs").unwrap_err().contains("unknown unit"));
        assert!(parse_size("1KiB").unwrap_err().contains("too small"));
    }
}
