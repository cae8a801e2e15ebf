//! One bad manifest never stops the others (DESIGN.md §4 invariant 5, §2, §9).
//!
//! A corpus of bad manifests, generated here, goes through the controller (`--once`)
//! next to good ones, and through `skiff validate`. Every bad file must end `Invalid`
//! with a message that names the file and the place: a line and column for syntax
//! errors, a field path for semantic ones (or, for a file that cannot be read at all,
//! what is wrong with the file). The good tasks must still run, and nothing may panic.

mod support;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};
use support::{SKIFF, Workspace};

/// How long `--once` may take over the whole corpus. Everything in it is judged in
/// well under a second; this only guards against a hang.
const ONCE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `skiff validate` may take over one file.
const VALIDATE_TIMEOUT: Duration = Duration::from_secs(15);

const HEAD: &str = "apiVersion: skiff/v1\nkind: ContainerTask\n";

/// Stands for "some `line N column M`", where the exact place is a matter of taste.
const ANY_LINE_COLUMN: &str = "<line N column M>";

enum Content {
    Bytes(Vec<u8>),
    /// A symlink to this target (relative to the folder).
    Symlink(&'static str),
    /// A file nobody may read (chmod 000); see [`write_unreadable`].
    Unreadable,
    /// A named pipe (mkfifo) that no one ever writes to.
    Fifo,
}

struct Bad {
    /// The file's name in the watched folder.
    file: &'static str,
    /// The task it belongs to: the file name without its extension.
    task: &'static str,
    content: Content,
    /// What the message must contain besides the file's name: the place, and for
    /// errors found by validation the field path.
    expect: &'static [&'static str],
    /// Bad on its own: `skiff validate FILE` refuses it. (Two files that are each
    /// fine but clash with each other are bad only in the controller's folder.)
    alone: bool,
}

fn yaml(text: &str) -> Content {
    Content::Bytes(text.as_bytes().to_vec())
}

fn head(rest: &str) -> Content {
    yaml(&format!("{HEAD}{rest}"))
}

/// The classic "billion laughs": ten levels of ten aliases, 10^10 strings if expanded.
fn alias_bomb() -> Content {
    let mut text = format!("{HEAD}metadata:\n  labels:\n");
    text.push_str(&format!("    l0: &l0 [{}]\n", ["lol"; 10].join(", ")));
    for level in 1..10 {
        let refs = vec![format!("*l{}", level - 1); 10].join(", ");
        text.push_str(&format!("    l{level}: &l{level} [{refs}]\n"));
    }
    text.push_str("spec:\n  command: [sh, -c, 'exit 0']\n  args: *l9\n");
    yaml(&text)
}

/// A valid-looking manifest padded with comments to 10 MB.
fn huge() -> Content {
    let mut text = format!("{HEAD}spec:\n  command: [sh, -c, 'exit 0']\n");
    let line = format!("# {}\n", "padding ".repeat(12));
    while text.len() < 10 * 1024 * 1024 {
        text.push_str(&line);
    }
    yaml(&text)
}

/// Text saved as Latin-1: `café` with a lone 0xE9 byte, at line 4 column 12.
fn latin1() -> Content {
    let mut bytes = format!("{HEAD}metadata:\n  name: caf").into_bytes();
    bytes.push(0xe9);
    bytes.extend_from_slice(b"\nspec:\n  command: [sh, -c, 'exit 0']\n");
    Content::Bytes(bytes)
}

/// A PNG signature followed by pseudo-random bytes: not text at all.
fn binary_garbage() -> Content {
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    for _ in 0..4096 {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        bytes.push((state >> 56) as u8);
    }
    Content::Bytes(bytes)
}

/// The corpus. Every entry is bad, and says what its message must contain.
fn corpus() -> Vec<Bad> {
    let deep = 100_000;
    vec![
        // --- Syntax errors: a line and a column.
        Bad {
            file: "syntax-unclosed.yaml",
            task: "syntax-unclosed",
            content: head("spec:\n  command: [sh, -c, 'exit 0'\n"),
            // Where the unclosed `[` opens.
            expect: &["line 4 column 12"],
            alone: true,
        },
        Bad {
            file: "syntax-indent.yaml",
            task: "syntax-indent",
            content: head("spec:\n  command: [sh, -c, 'exit 0']\n retries: 1\n"),
            expect: &["line 5 column 2"],
            alone: true,
        },
        Bad {
            file: "tabs.yaml",
            task: "tabs",
            content: head("spec:\n\tcommand: [sh, -c, 'exit 0']\n"),
            expect: &["line 4 column 1"],
            alone: true,
        },
        Bad {
            file: "syntax-comma.json",
            task: "syntax-comma",
            content: yaml(
                "{\n  \"apiVersion\": \"skiff/v1\",\n  \"kind\": \"ContainerTask\",\n  \"spec\": {\n    \"command\": [\"sh\", \"-c\", \"exit 0\"],\n  }\n}\n",
            ),
            expect: &["line 6 column 3"],
            alone: true,
        },
        Bad {
            file: "syntax-truncated.json",
            task: "syntax-truncated",
            content: yaml(
                "{\n  \"apiVersion\": \"skiff/v1\",\n  \"kind\": \"ContainerTask\",\n  \"spec\": {\"command\": [\"sh\"",
            ),
            expect: &["line 4 column"],
            alone: true,
        },
        Bad {
            file: "yaml-in-json.json",
            task: "yaml-in-json",
            content: head("spec:\n  command: [sh, -c, 'exit 0']\n"),
            expect: &["line 1 column 1"],
            alone: true,
        },
        Bad {
            file: "multi-doc.yaml",
            task: "multi-doc",
            content: head(
                "spec:\n  command: [sh, -c, 'exit 0']\n---\napiVersion: skiff/v1\nkind: ContainerTask\nspec:\n  command: [sh, -c, 'exit 1']\n",
            ),
            // Where the second document starts.
            expect: &["line 5"],
            alone: true,
        },
        Bad {
            file: "duplicate-key.yaml",
            task: "duplicate-key",
            content: head("spec:\n  command: [sh, -c, 'exit 0']\nspec:\n  command: [sh, -c, 'exit 1']\n"),
            expect: &["`spec`", ANY_LINE_COLUMN],
            alone: true,
        },
        Bad {
            file: "not-a-mapping.yaml",
            task: "not-a-mapping",
            content: yaml("just some words\n"),
            expect: &[ANY_LINE_COLUMN],
            alone: true,
        },
        // --- Wrong types: the field path and the line and column.
        Bad {
            file: "retries-string.yaml",
            task: "retries-string",
            content: head("spec:\n  command: [sh, -c, 'exit 0']\n  retries: \"two\"\n"),
            expect: &["spec.retries", "line 5 column 12"],
            alone: true,
        },
        Bad {
            file: "command-string.yaml",
            task: "command-string",
            content: head("spec:\n  command: sh -c 'exit 0'\n"),
            expect: &["spec.command", "line 4 column 12"],
            alone: true,
        },
        Bad {
            file: "runtime-unknown.yaml",
            task: "runtime-unknown",
            content: head("spec:\n  runtime: podman\n  command: [sh, -c, 'exit 0']\n"),
            expect: &["spec.runtime", "line 4 column 12"],
            alone: true,
        },
        Bad {
            file: "timeout-number.json",
            task: "timeout-number",
            content: yaml(
                "{\n  \"apiVersion\": \"skiff/v1\",\n  \"kind\": \"ContainerTask\",\n  \"spec\": {\n    \"command\": [\"sh\", \"-c\", \"exit 0\"],\n    \"timeout\": 30\n  }\n}\n",
            ),
            expect: &["line 6 column 17"],
            alone: true,
        },
        // --- Unknown fields: a typo must not pass silently.
        Bad {
            file: "unknown-top.yaml",
            task: "unknown-top",
            content: head("colour: red\nspec:\n  command: [sh, -c, 'exit 0']\n"),
            expect: &["`colour`", "line 3 column 1"],
            alone: true,
        },
        Bad {
            file: "unknown-spec.yaml",
            task: "unknown-spec",
            content: head("spec:\n  command: [sh, -c, 'exit 0']\n  colour: red\n"),
            expect: &["spec", "`colour`", "line 5 column 3"],
            alone: true,
        },
        Bad {
            file: "unknown-env.yaml",
            task: "unknown-env",
            content: head(
                "spec:\n  command: [sh, -c, 'exit 0']\n  env:\n    - {name: MODE, value: fast, vaule: slow}\n",
            ),
            expect: &["spec.env[0]", "`vaule`", "line 6 column"],
            alone: true,
        },
        Bad {
            file: "unknown-env-json.json",
            task: "unknown-env-json",
            content: yaml(
                "{\n  \"apiVersion\": \"skiff/v1\",\n  \"kind\": \"ContainerTask\",\n  \"spec\": {\n    \"command\": [\"sh\", \"-c\", \"exit 0\"],\n    \"env\": [{\"name\": \"A\", \"value\": \"1\", \"secret\": true}]\n  }\n}\n",
            ),
            expect: &["`secret`", "line 6 column"],
            alone: true,
        },
        // --- Not a manifest at all.
        Bad {
            file: "empty.yaml",
            task: "empty",
            content: yaml(""),
            expect: &["empty"],
            alone: true,
        },
        Bad {
            file: "blank.json",
            task: "blank",
            content: yaml("  \n\n"),
            expect: &["empty"],
            alone: true,
        },
        Bad {
            file: "huge.yaml",
            task: "huge",
            content: huge(),
            expect: &["at most"],
            alone: true,
        },
        Bad {
            file: "binary.yaml",
            task: "binary",
            content: binary_garbage(),
            expect: &["line 1 column 1"],
            alone: true,
        },
        Bad {
            file: "binary-nul.yaml",
            task: "binary-nul",
            // An ELF header: \x7fELF is ASCII, the NUL is the 8th byte.
            content: Content::Bytes(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\x03\0>\0".to_vec()),
            expect: &["line 1 column 8"],
            alone: true,
        },
        Bad {
            file: "latin1.yaml",
            task: "latin1",
            content: latin1(),
            expect: &["line 4 column 12"],
            alone: true,
        },
        Bad {
            file: "deployment.yaml",
            task: "deployment",
            content: yaml(
                "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 3\n  template:\n    spec:\n      containers: [{name: web, image: nginx}]\n",
            ),
            expect: &["kind", "Deployment"],
            alone: true,
        },
        Bad {
            file: "wrong-api.yaml",
            task: "wrong-api",
            content: yaml("apiVersion: skiff/v2\nkind: ContainerTask\nspec:\n  command: [sh, -c, 'exit 0']\n"),
            expect: &["apiVersion", "skiff/v2"],
            alone: true,
        },
        Bad {
            file: "missing-spec.yaml",
            task: "missing-spec",
            content: yaml(HEAD),
            expect: &["`spec`"],
            alone: true,
        },
        // --- Hostile documents: judged quickly, without exhausting anything.
        Bad {
            file: "alias-bomb.yaml",
            task: "alias-bomb",
            content: alias_bomb(),
            expect: &["line 5 column"],
            alone: true,
        },
        Bad {
            file: "deep-top.yaml",
            task: "deep-top",
            content: yaml(&"[".repeat(deep)),
            expect: &[ANY_LINE_COLUMN],
            alone: true,
        },
        Bad {
            file: "deep-spec.yaml",
            task: "deep-spec",
            // Unclosed: where the nesting goes too deep, or where the file ends.
            content: head(&format!("spec:\n  command: {}", "[".repeat(deep))),
            expect: &[ANY_LINE_COLUMN],
            alone: true,
        },
        Bad {
            file: "deep.json",
            task: "deep",
            content: yaml(&"[".repeat(deep)),
            expect: &["line 1 column"],
            alone: true,
        },
        // --- Semantic errors: the field path and the fix.
        Bad {
            file: "name-dotdot.yaml",
            task: "name-dotdot",
            content: head("metadata:\n  name: ../etc\nspec:\n  command: [sh, -c, 'exit 0']\n"),
            expect: &["metadata.name", ".."],
            alone: true,
        },
        Bad {
            file: "bad-timeout.yaml",
            task: "bad-timeout",
            content: head("spec:\n  command: [sh, -c, 'exit 0']\n  timeout: forever\n"),
            expect: &["spec.timeout", "forever"],
            alone: true,
        },
        Bad {
            file: "bad-intervals.yaml",
            task: "bad-intervals",
            content: head(
                "spec:\n  command: [sh, -c, 'exit 0']\n  backoff: 5 parsecs\n  completion: {pollInterval: soon}\n",
            ),
            // Every mistake at once, not only the first.
            expect: &["spec.backoff", "spec.completion.pollInterval"],
            alone: true,
        },
        Bad {
            file: "bad-memory.yaml",
            task: "bad-memory",
            content: head("spec:\n  command: [sh, -c, 'exit 0']\n  resources: {cpu: 1, memory: lots}\n"),
            expect: &["spec.resources.memory", "lots"],
            alone: true,
        },
        Bad {
            file: "env-both.yaml",
            task: "env-both",
            content: head(
                "spec:\n  command: [sh, -c, 'exit 0']\n  env:\n    - {name: MODE, value: fast}\n    - {name: KEY, value: x, valueFrom: {env: HOME}}\n",
            ),
            expect: &["spec.env[1]", "valueFrom"],
            alone: true,
        },
        Bad {
            file: "missing-command.yaml",
            task: "missing-command",
            content: head("spec:\n  retries: 1\n"),
            expect: &["spec.command"],
            alone: true,
        },
        Bad {
            file: "too-many-completions.yaml",
            task: "too-many-completions",
            content: head("spec:\n  command: [sh, -c, 'exit 0']\n  completions: 5000\n"),
            expect: &["spec.completions", "at most 1000", "split the work"],
            alone: true,
        },
        Bad {
            file: "aci-too-big.yaml",
            task: "aci-too-big",
            content: head(
                "spec:\n  runtime: aci\n  image: busybox\n  command: [sh, -c, 'exit 0']\n  resources: {cpu: 8}\n",
            ),
            expect: &["spec.resources.cpu", "at most 4"],
            alone: true,
        },
        // --- Files that cannot be read: no line or column exists, so the message says
        // what is wrong with the file itself.
        Bad {
            file: "loop.yaml",
            task: "loop",
            content: Content::Symlink("loop.yaml"),
            expect: &["cannot read"],
            alone: true,
        },
        Bad {
            file: "unreadable.yaml",
            task: "unreadable",
            content: Content::Unreadable,
            expect: &["cannot read"],
            alone: true,
        },
        // --- Files no reader may block on or read forever: a FIFO has no end and blocked
        // the open itself; /dev/zero never ends.
        Bad {
            file: "fifo.yaml",
            task: "fifo",
            content: Content::Fifo,
            expect: &["named pipe", "regular file"],
            alone: true,
        },
        Bad {
            file: "zero.yaml",
            task: "zero",
            content: Content::Symlink("/dev/zero"),
            expect: &["a device", "regular file"],
            alone: true,
        },
        // --- A NUL no process can be given: it passed validation, then the create was
        // retried twice a second forever.
        Bad {
            file: "env-nul.yaml",
            task: "env-nul",
            content: head("spec:\n  command: [sh, -c, 'exit 0']\n  env: [{name: A, value: \"a\\0b\"}]\n"),
            expect: &["spec.env[0].value", "NUL"],
            alone: true,
        },
        Bad {
            file: "workdir-nul.yaml",
            task: "workdir-nul",
            content: head("spec:\n  command: [sh, -c, 'exit 0']\n  workingDir: \"/tmp\\0x\"\n"),
            expect: &["spec.workingDir", "NUL"],
            alone: true,
        },
        // --- A variable past the kernel's limit: the create failed, and was retried forever.
        Bad {
            file: "env-huge.yaml",
            task: "env-huge",
            content: head(&format!(
                "spec:\n  command: [sh, -c, 'exit 0']\n  env: [{{name: A, value: {}}}]\n",
                "x".repeat(200_000)
            )),
            expect: &["spec.env[0].value", "put large data in a file"],
            alone: true,
        },
        // --- A name the file gave, not metadata.name: the message blames the file name.
        Bad {
            file: "has space.yaml",
            task: "has space",
            content: head("spec:\n  command: [sh, -c, 'exit 0']\n"),
            expect: &["file name", "rename the file"],
            alone: true,
        },
        // --- Two files, one task identity (`same`): each file is fine on its own, so
        // `skiff validate` accepts either; together they are Invalid, naming both.
        Bad {
            file: "same.yaml",
            task: "same",
            content: head("spec:\n  command: [sh, -c, 'exit 0']\n"),
            expect: &["same.yaml", "same.json"],
            alone: false,
        },
        Bad {
            file: "same.json",
            task: "same",
            content: yaml(
                r#"{"apiVersion": "skiff/v1", "kind": "ContainerTask", "spec": {"command": ["sh", "-c", "exit 0"]}}"#,
            ),
            expect: &["same.yaml", "same.json"],
            alone: false,
        },
    ]
}

const GOOD: [(&str, &str); 3] = [
    ("good-1.yaml", "good-1"),
    ("good-2.yaml", "good-2"),
    ("good-3.json", "good-3"),
];

/// Two good files that claim the same `metadata.name`; `twin-1` is older (seen first).
const TWINS: [(&str, &str); 2] = [("twin-1.yaml", "twin-1"), ("twin-2.yaml", "twin-2")];

fn good_text(file: &str) -> String {
    if file.ends_with(".json") {
        r#"{"apiVersion": "skiff/v1", "kind": "ContainerTask", "spec": {"command": ["sh", "-c", "exit 0"]}}"#.into()
    } else {
        format!("{HEAD}spec:\n  command: [sh, -c, 'exit 0']\n")
    }
}

/// Files already in place for an hour: judged at once, not taken for files still
/// being written. `age` orders them, as first come, first served does.
fn backdate(path: &Path, age: Duration) {
    let file = std::fs::File::options()
        .write(true)
        .open(path)
        .expect("open to backdate");
    file.set_modified(SystemTime::now() - age).expect("backdate");
}

/// A file that cannot be read. chmod 000 does that for a normal user, but root (and
/// CAP_DAC_OVERRIDE) reads it anyway, and tests often run as root: then the path is a
/// dangling symlink instead, which no one can read. (A directory named `x.yaml` is not
/// used: to the directory store that is a folder, whose manifests are tasks
/// `x.yaml/...`, not an unreadable manifest.)
fn write_unreadable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, format!("{HEAD}spec:\n  command: [sh, -c, 'exit 0']\n")).unwrap();
    backdate(path, Duration::from_secs(3600));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o000)).unwrap();
    if std::fs::File::open(path).is_ok() {
        // Running with the power to read anything: use a dangling symlink.
        std::fs::remove_file(path).unwrap();
        std::os::unix::fs::symlink("no-such-file-anywhere.yaml", path).unwrap();
    }
}

fn write_corpus(root: &Path) -> Vec<Bad> {
    let corpus = corpus();
    for bad in &corpus {
        let path = root.join(bad.file);
        match &bad.content {
            Content::Bytes(bytes) => {
                std::fs::write(&path, bytes).unwrap();
                backdate(&path, Duration::from_secs(3600));
            }
            Content::Symlink(target) => std::os::unix::fs::symlink(target, &path).unwrap(),
            Content::Unreadable => write_unreadable(&path),
            Content::Fifo => nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap(),
        }
    }
    corpus
}

fn write_good(root: &Path) {
    for (file, _) in GOOD {
        let path = root.join(file);
        std::fs::write(&path, good_text(file)).unwrap();
        backdate(&path, Duration::from_secs(3600));
    }
    for (i, (file, _)) in TWINS.iter().enumerate() {
        let path = root.join(file);
        std::fs::write(
            &path,
            format!("{HEAD}metadata:\n  name: twin\nspec:\n  command: [sh, -c, 'exit 0']\n"),
        )
        .unwrap();
        backdate(&path, Duration::from_secs(3000 - 100 * i as u64));
    }
}

/// Whether `text` holds `line N column M` for some numbers N and M.
fn has_line_column(text: &str) -> bool {
    text.match_indices("line ").any(|(at, _)| {
        let rest = &text[at + 5..];
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        digits > 0
            && rest[digits..]
                .strip_prefix(" column ")
                .is_some_and(|tail| tail.starts_with(|c: char| c.is_ascii_digit()))
    })
}

/// The expectations `message` misses, described.
fn missing(message: &str, file: &str, expect: &[&str]) -> Vec<String> {
    let mut missing = Vec::new();
    if !message.contains(file) {
        missing.push(format!("the file name {file:?}"));
    }
    for needle in expect {
        let found = if *needle == ANY_LINE_COLUMN {
            has_line_column(message)
        } else {
            message.contains(needle)
        };
        if !found {
            missing.push(format!("{needle:?}"));
        }
    }
    missing
}

fn short(text: &str) -> String {
    if text.len() > 400 {
        let mut end = 400;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &text[..end])
    } else {
        text.to_string()
    }
}

#[test]
fn controller_marks_every_bad_manifest_invalid_and_runs_the_good_ones() {
    let ws = Workspace::new();
    let corpus = write_corpus(ws.root());
    write_good(ws.root());
    assert!(corpus.len() >= 25, "the corpus holds {} bad manifests", corpus.len());

    let started = Instant::now();
    let mut controller = ws.controller(&["--once"]);
    let mut failures = Vec::new();
    let code = loop {
        if let Some(status) = controller.child.try_wait().expect("poll the controller") {
            break status.code();
        }
        if started.elapsed() > ONCE_TIMEOUT {
            let _ = controller.child.kill();
            let _ = controller.child.wait();
            let mut tasks: Vec<&str> = corpus.iter().map(|b| b.task).collect();
            tasks.extend(GOOD.iter().chain(&TWINS).map(|(_, task)| *task));
            tasks.dedup();
            let pending: Vec<String> = tasks
                .iter()
                .filter(|task| !matches!(ws.phase(task).as_deref(), Some("Succeeded" | "Failed" | "Invalid")))
                .map(|task| format!("{task} ({})", ws.phase(task).unwrap_or_else(|| "no status".into())))
                .collect();
            failures.push(format!(
                "`skiff controller --once` did not exit within {ONCE_TIMEOUT:?}; tasks not final: {}",
                pending.join(", ")
            ));
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if code.is_some() && code != Some(1) {
        failures.push(format!(
            "`skiff controller --once` exited with {code:?}, expected 1 (some tasks are Invalid)"
        ));
    }

    for (file, task) in GOOD {
        let phase = ws.phase(task);
        if phase.as_deref() != Some("Succeeded") {
            let message = ws.status(task).map(|s| s["message"].to_string()).unwrap_or_default();
            failures.push(format!(
                "{file}: good task ended {phase:?}, expected Succeeded; message: {message}"
            ));
        }
    }

    for bad in &corpus {
        let Some(status) = ws.status(bad.task) else {
            failures.push(format!("{}: no status file for task {}", bad.file, bad.task));
            continue;
        };
        let phase = status["phase"].as_str().unwrap_or_default();
        let message = status["message"].as_str().unwrap_or_default();
        if phase != "Invalid" {
            failures.push(format!(
                "{}: phase {phase:?}, expected \"Invalid\"; message: {}",
                bad.file,
                short(message)
            ));
            continue;
        }
        let missing = missing(message, bad.file, bad.expect);
        if !missing.is_empty() {
            failures.push(format!(
                "{}: the message lacks {}; message: {:?}",
                bad.file,
                missing.join(" and "),
                short(message)
            ));
        }
    }

    // Same metadata.name in two files: exactly one keeps it and runs; the other is
    // Invalid, naming its own file, the field, and the task that holds the name.
    let phases: Vec<Option<String>> = TWINS.iter().map(|(_, task)| ws.phase(task)).collect();
    let invalid: Vec<usize> = (0..2).filter(|&i| phases[i].as_deref() == Some("Invalid")).collect();
    if invalid.len() != 1 {
        failures.push(format!(
            "twin-1.yaml, twin-2.yaml share metadata.name twin: phases {phases:?}, expected exactly one Invalid"
        ));
    } else {
        let (loser, winner) = (invalid[0], 1 - invalid[0]);
        if phases[winner].as_deref() != Some("Succeeded") {
            failures.push(format!(
                "{}: kept the name but ended {:?}, expected Succeeded",
                TWINS[winner].0, phases[winner]
            ));
        }
        let message = ws.status(TWINS[loser].1).unwrap()["message"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let missing = missing(&message, TWINS[loser].0, &["metadata.name", TWINS[winner].1]);
        if !missing.is_empty() {
            failures.push(format!(
                "{}: duplicate metadata.name message lacks {}; message: {message:?}",
                TWINS[loser].0,
                missing.join(" and ")
            ));
        }
    }

    let log = ws.controller_log();
    if log.contains("panicked") {
        let line = log.lines().find(|l| l.contains("panicked")).unwrap_or_default();
        failures.push(format!("the controller panicked: {line}"));
    }
    assert!(
        failures.is_empty(),
        "{} problem(s) with the bad-manifest corpus (took {:?}):\n- {}",
        failures.len(),
        started.elapsed(),
        failures.join("\n- ")
    );
}

#[test]
fn validate_refuses_every_bad_file_and_accepts_the_good_ones() {
    let ws = Workspace::new();
    let corpus = write_corpus(ws.root());
    write_good(ws.root());
    let out_dir = ws.root().join(".out");
    std::fs::create_dir(&out_dir).unwrap();

    // One `skiff validate FILE` per bad file, all at once, each with a deadline.
    let mut runs = Vec::new();
    for (i, bad) in corpus.iter().filter(|b| b.alone).enumerate() {
        let out_path = out_dir.join(format!("{i}.out"));
        let out = std::fs::File::create(&out_path).unwrap();
        let child = Command::new(SKIFF)
            .current_dir(ws.root())
            .args(["validate", bad.file])
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("run skiff validate");
        runs.push((bad, child, out_path));
    }
    let started = Instant::now();
    let mut failures = Vec::new();
    for (bad, mut child, out_path) in runs {
        let code = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status.code());
            }
            if started.elapsed() > VALIDATE_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let output = std::fs::read_to_string(&out_path).unwrap_or_default();
        match code {
            None => failures.push(format!(
                "skiff validate {}: did not finish within {VALIDATE_TIMEOUT:?}",
                bad.file
            )),
            Some(code) if code != Some(1) => failures.push(format!(
                "skiff validate {}: exit code {code:?}, expected 1; output: {:?}",
                bad.file,
                short(&output)
            )),
            Some(_) => {
                let missing = missing(&output, bad.file, bad.expect);
                if !missing.is_empty() {
                    failures.push(format!(
                        "skiff validate {}: the output lacks {}; output: {:?}",
                        bad.file,
                        missing.join(" and "),
                        short(&output)
                    ));
                }
            }
        }
        if output.contains("panicked") {
            failures.push(format!("skiff validate {} panicked: {}", bad.file, short(&output)));
        }
    }

    let goods: Vec<&str> = GOOD.iter().chain(&TWINS).map(|(file, _)| *file).collect();
    let output = Command::new(SKIFF)
        .current_dir(ws.root())
        .arg("validate")
        .args(&goods)
        .output()
        .expect("run skiff validate");
    let stdout = String::from_utf8_lossy(&output.stdout);
    if output.status.code() != Some(0) {
        failures.push(format!(
            "skiff validate over the good files: exit code {:?}, expected 0; output: {stdout}{}",
            output.status.code(),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    for file in goods {
        if !stdout.lines().any(|line| line == format!("{file}: ok")) {
            failures.push(format!(
                "skiff validate {file}: expected a line \"{file}: ok\"; output: {stdout}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} problem(s):\n- {}",
        failures.len(),
        failures.join("\n- ")
    );
}

/// Writes the first `cut` bytes of `text` straight into `rel` (no temporary file and
/// rename), waits `pause`, then appends the rest, as a slow writer does. Polls the
/// status every 20 ms throughout, and returns every phase seen until `Succeeded`.
fn write_slowly(ws: &Workspace, rel: &str, task: &str, text: &str, cut: usize, pause: Duration) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    let observe = |seen: &mut Vec<String>| {
        if let Some(phase) = ws.phase(task)
            && seen.last() != Some(&phase)
        {
            seen.push(phase);
        }
    };
    let path = ws.root().join(rel);
    let mut file = std::fs::File::create(&path).unwrap();
    file.write_all(&text.as_bytes()[..cut]).unwrap();
    file.flush().unwrap();
    let written = Instant::now();
    while written.elapsed() < pause {
        observe(&mut seen);
        std::thread::sleep(Duration::from_millis(20));
    }
    file.write_all(&text.as_bytes()[cut..]).unwrap();
    drop(file);
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.last().map(String::as_str) != Some("Succeeded") && Instant::now() < deadline {
        observe(&mut seen);
        std::thread::sleep(Duration::from_millis(20));
    }
    seen
}

fn started_controller(ws: &Workspace) -> support::Controller {
    // A first task proves the controller is up and watching before the slow write.
    ws.task("ready.yaml", "exit 0", "");
    let controller = ws.controller(&[]);
    ws.wait_phase("ready", "Succeeded", Duration::from_secs(20));
    controller
}

#[test]
fn a_manifest_still_being_written_is_not_judged() {
    let ws = Workspace::new();
    let _controller = started_controller(&ws);
    let text = format!("{HEAD}metadata:\n  name: slow\nspec:\n  command: [sh, -c, 'exit 0']\n  retries: 0\n");
    // Cut in the middle of the quoted script: a syntax error until the rest arrives.
    let cut = text.find("'exit").unwrap() + 3;
    let seen = write_slowly(&ws, "slow.yaml", "slow", &text, cut, Duration::from_millis(800));
    assert!(
        !seen.iter().any(|p| p == "Invalid"),
        "slow.yaml was judged Invalid while still being written; phases seen: {seen:?}; status: {:?}",
        ws.status("slow")
    );
    assert_eq!(
        seen.last().map(String::as_str),
        Some("Succeeded"),
        "phases seen: {seen:?}; status: {:?}",
        ws.status("slow")
    );
    assert!(!ws.controller_log().contains("panicked"), "the controller panicked");
}

#[test]
fn a_manifest_cut_at_a_line_end_is_not_judged_while_being_written() {
    let ws = Workspace::new();
    let _controller = started_controller(&ws);
    // The first part is well-formed YAML and a well-formed manifest, only incomplete:
    // it has no command yet. A writer flushing line by line leaves exactly this.
    let text = format!("{HEAD}spec:\n  retries: 0\n  command: [sh, -c, 'exit 0']\n");
    let cut = text.find("  command").unwrap();
    let seen = write_slowly(&ws, "lines.yaml", "lines", &text, cut, Duration::from_millis(800));
    assert!(
        !seen.iter().any(|p| p == "Invalid"),
        "lines.yaml was judged Invalid while still being written; phases seen: {seen:?}; status: {:?}",
        ws.status("lines")
    );
    assert_eq!(
        seen.last().map(String::as_str),
        Some("Succeeded"),
        "phases seen: {seen:?}; status: {:?}",
        ws.status("lines")
    );
}
