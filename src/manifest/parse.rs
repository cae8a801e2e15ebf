//! Bytes → [`ContainerTask`], with errors that name the file, line and column.

use super::{API_VERSION, ContainerTask, KIND};
use serde::Deserialize;

/// Manifests are small; anything larger is a mistake (or an attack), not a task.
pub const MAX_MANIFEST_BYTES: usize = 1024 * 1024;

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

    let header: Header = from_text(format, text).map_err(|detail| ManifestError::new(file, detail))?;
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
    from_text(format, text).map_err(|detail| ManifestError::new(file, detail))
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
}
