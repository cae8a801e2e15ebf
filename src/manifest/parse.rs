//! Bytes → [`ContainerTask`], with errors that name the file, line and column.

use super::wire::{API_VERSION, ContainerTask, KIND};
use serde::Deserialize;

/// Manifests are small; anything larger is a mistake (or an attack), not a task.
pub const MAX_MANIFEST_BYTES: usize = 1024 * 1024;
/// Deepest `[`/`{` nesting accepted. A manifest needs three or four levels; deeper
/// input makes the YAML scanner work in quadratic time, so it is refused up front.
pub const MAX_FLOW_DEPTH: usize = 64;

/// A user's mistake in one manifest, phrased for that user: file, place, and fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {detail}")]
pub struct ManifestError {
    /// The manifest's path as the user knows it (relative to the watched root).
    pub file: String,
    /// What is wrong and where: a line and column, or a field path, and how to fix it.
    pub detail: String,
}

impl ManifestError {
    pub fn new(file: &str, detail: impl Into<String>) -> Self {
        ManifestError {
            file: file.to_string(),
            detail: detail.into(),
        }
    }
}

/// Only the two fields that say what a document is; read before the strict parse so a
/// file of another kind is told so, instead of drowning in unknown-field errors.
#[derive(Deserialize)]
#[serde(rename = "ContainerTask")]
struct Header {
    #[serde(rename = "apiVersion")]
    api_version: Option<serde_json::Value>,
    kind: Option<serde_json::Value>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Yaml,
    Json,
}

/// Parses one manifest. `file` is the name used in messages; its extension picks the
/// format (`.json` is JSON, anything else YAML).
pub fn parse_manifest(file: &str, bytes: &[u8]) -> Result<ContainerTask, ManifestError> {
    let format = if file.ends_with(".json") {
        Format::Json
    } else {
        Format::Yaml
    };
    if bytes.len() > MAX_MANIFEST_BYTES {
        return Err(ManifestError::new(
            file,
            format!(
                "the file is {} bytes; a manifest may be at most {} bytes (1 MiB). Is this the right file?",
                bytes.len(),
                MAX_MANIFEST_BYTES
            ),
        ));
    }
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(err) => {
            let (line, column) = line_column(bytes, err.valid_up_to());
            return Err(ManifestError::new(
                file,
                format!("line {line} column {column}: the file is not UTF-8 text; save it as UTF-8"),
            ));
        }
    };
    if let Some(offset) = text.find('\0') {
        let (line, column) = line_column(bytes, offset);
        return Err(ManifestError::new(
            file,
            format!(
                "line {line} column {column}: the file holds binary data (a NUL byte); a manifest is YAML or JSON text"
            ),
        ));
    }
    if text.trim().is_empty() {
        return Err(ManifestError::new(
            file,
            format!(
                "the file is empty; a manifest needs at least `apiVersion: {API_VERSION}`, `kind: {KIND}` and `spec`"
            ),
        ));
    }

    if let Some((line, column)) = too_deep(text) {
        return Err(ManifestError::new(
            file,
            format!(
                "line {line} column {column}: brackets nest deeper than {MAX_FLOW_DEPTH} levels; a manifest needs only a few"
            ),
        ));
    }
    let header: Header = from_text(format, text).map_err(|detail| ManifestError::new(file, explain(text, detail)))?;
    match header.kind.as_ref() {
        Some(serde_json::Value::String(kind)) if kind == KIND => {}
        Some(other) => {
            return Err(ManifestError::new(
                file,
                format!(
                    "kind: this document is a {}, not a {KIND}; skiff reads only `kind: {KIND}`",
                    show(other)
                ),
            ));
        }
        None => {
            return Err(ManifestError::new(file, format!("kind: missing; add `kind: {KIND}`")));
        }
    }
    match header.api_version.as_ref() {
        Some(serde_json::Value::String(version)) if version == API_VERSION => {}
        Some(other) => {
            return Err(ManifestError::new(
                file,
                format!(
                    "apiVersion: {} is not supported; write `apiVersion: {API_VERSION}`",
                    show(other)
                ),
            ));
        }
        None => {
            return Err(ManifestError::new(
                file,
                format!("apiVersion: missing; add `apiVersion: {API_VERSION}`"),
            ));
        }
    }
    from_text(format, text).map_err(|detail| ManifestError::new(file, explain(text, detail)))
}

/// Gives a place to the parsers' messages that have none, and says what they mean.
fn explain(text: &str, detail: String) -> String {
    if detail.contains("expected struct") && !detail.contains(" at line ") {
        return "line 1 column 1: the document is not a map of fields; a manifest starts with `apiVersion: skiff/v1` and `kind: ContainerTask`".into();
    }
    if detail.contains("more than one document") {
        let line = text
            .lines()
            .enumerate()
            .filter(|(_, l)| l.starts_with("---") || l.starts_with("..."))
            .map(|(i, _)| i + 1)
            .find(|&n| {
                text.lines()
                    .take(n - 1)
                    .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
            })
            .unwrap_or(1);
        return format!("line {line} column 1: a second YAML document starts here; put one task in each file");
    }
    if let Some(field) = detail
        .strip_prefix("duplicate field `")
        .and_then(|rest| rest.split('`').next())
        && !detail.contains(" at line ")
    {
        let key = format!("{field}:");
        let mut places = text.lines().enumerate().filter_map(|(i, l)| {
            let column = l.len() - l.trim_start().len() + 1;
            (l.trim_start().starts_with(&key) || l.trim_start().starts_with(&format!("\"{field}\"")))
                .then_some((i + 1, column))
        });
        if let Some((line, column)) = places.nth(1) {
            return format!("line {line} column {column}: `{field}` is given twice; keep one");
        }
        return format!("`{field}` is given twice; keep one");
    }
    detail
}

/// The line and column where `[`/`{` nesting first exceeds [`MAX_FLOW_DEPTH`],
/// outside quotes and comments.
fn too_deep(text: &str) -> Option<(usize, usize)> {
    let (mut depth, mut line, mut column) = (0usize, 1usize, 0usize);
    let mut quote: Option<char> = None;
    let mut comment = false;
    let mut previous = '\n';
    for ch in text.chars() {
        column += 1;
        if ch == '\n' {
            line += 1;
            column = 0;
            comment = false;
            previous = ch;
            continue;
        }
        match quote {
            Some(q) if ch == q => quote = None,
            Some(_) => {}
            None if comment => {}
            None => match ch {
                '#' if previous.is_whitespace() => comment = true,
                '"' | '\'' => quote = Some(ch),
                '[' | '{' => {
                    depth += 1;
                    if depth > MAX_FLOW_DEPTH {
                        return Some((line, column));
                    }
                }
                ']' | '}' => depth = depth.saturating_sub(1),
                _ => {}
            },
        }
        previous = ch;
    }
    None
}

fn from_text<T: for<'de> Deserialize<'de>>(format: Format, text: &str) -> Result<T, String> {
    match format {
        // Both parsers already put the field path, line and column in their message.
        Format::Yaml => yaml_serde::from_str(text).map_err(|err| err.to_string()),
        Format::Json => serde_json::from_str(text).map_err(|err| err.to_string()),
    }
}

fn show(value: &serde_json::Value) -> String {
    let text = value.to_string();
    if text.len() > 60 {
        format!("{}…", text.chars().take(60).collect::<String>())
    } else {
        text
    }
}

/// 1-based line and column of a byte offset.
fn line_column(bytes: &[u8], offset: usize) -> (usize, usize) {
    let before = &bytes[..offset.min(bytes.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let column = before.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(file: &str, text: &[u8]) -> String {
        parse_manifest(file, text).unwrap_err().to_string()
    }

    #[test]
    fn parses_yaml_and_json() {
        let yaml = "apiVersion: skiff/v1\nkind: ContainerTask\nspec:\n  command: [echo, hi]\n";
        let task = parse_manifest("a.yaml", yaml.as_bytes()).unwrap();
        assert_eq!(task.spec.command, vec!["echo", "hi"]);
        let json = r#"{"apiVersion":"skiff/v1","kind":"ContainerTask","spec":{"command":["echo"]}}"#;
        assert_eq!(
            parse_manifest("a.json", json.as_bytes()).unwrap().spec.command,
            vec!["echo"]
        );
    }

    #[test]
    fn unknown_field_names_file_path_line_and_column() {
        let yaml = "apiVersion: skiff/v1\nkind: ContainerTask\nspec:\n  colour: red\n";
        let message = err("jobs/a.yaml", yaml.as_bytes());
        assert!(message.starts_with("jobs/a.yaml: "), "{message}");
        assert!(message.contains("spec: unknown field `colour`"), "{message}");
        assert!(message.contains("line 4 column 3"), "{message}");
    }

    #[test]
    fn json_syntax_error_has_line_and_column() {
        let message = err("a.json", b"{\n  \"apiVersion\": \"skiff/v1\",\n  \"kind\": }");
        assert!(message.contains("line 3 column"), "{message}");
    }

    #[test]
    fn wrong_kind_and_version_are_named() {
        let message = err(
            "d.yaml",
            b"apiVersion: apps/v1\nkind: Deployment\nspec: {replicas: 3}\n",
        );
        assert!(message.contains("not a ContainerTask"), "{message}");
        let message = err("d.yaml", b"apiVersion: skiff/v2\nkind: ContainerTask\nspec: {}\n");
        assert!(
            message.contains("apiVersion: \"skiff/v2\" is not supported"),
            "{message}"
        );
    }

    #[test]
    fn empty_binary_and_non_utf8_files_are_explained() {
        assert!(err("e.yaml", b"  \n").contains("the file is empty"));
        assert!(err("b.yaml", b"kind: \0\x01").contains("line 1 column 7"));
        assert!(err("u.yaml", b"kind: x\nname: \xff\xfe").contains("line 2 column 7: the file is not UTF-8"));
        let big = vec![b'#'; MAX_MANIFEST_BYTES + 1];
        assert!(err("big.yaml", &big).contains("at most"));
    }

    #[test]
    fn deep_nesting_is_refused_quickly_with_its_place() {
        let text = format!(
            "{}{}",
            "apiVersion: skiff/v1\nkind: ContainerTask\nspec:\n  command: ",
            "[".repeat(100_000)
        );
        let started = std::time::Instant::now();
        let message = err("d.yaml", text.as_bytes());
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert!(message.contains("line 4 column 76: brackets nest deeper"), "{message}");
        // Brackets in quotes and comments do not count.
        let fine = format!(
            "apiVersion: skiff/v1\nkind: ContainerTask\nspec:\n  command: ['{}'] # {}\n",
            "[".repeat(100),
            "{".repeat(100)
        );
        assert!(parse_manifest("f.yaml", fine.as_bytes()).is_ok());
    }

    #[test]
    fn whole_document_errors_get_a_place() {
        let message = err(
            "m.yaml",
            b"apiVersion: skiff/v1\nkind: ContainerTask\nspec: {}\n---\nkind: ContainerTask\n",
        );
        assert!(message.contains("line 4 column 1: a second YAML document"), "{message}");
        let message = err("s.yaml", b"just some words\n");
        assert!(
            message.contains("line 1 column 1: the document is not a map"),
            "{message}"
        );
        assert!(!message.contains("Header"), "{message}");
        let message = err(
            "k.yaml",
            b"apiVersion: skiff/v1\nkind: ContainerTask\nspec: {}\nspec: {}\n",
        );
        assert!(message.contains("line 4 column 1: `spec` is given twice"), "{message}");
    }
}
