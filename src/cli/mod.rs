//! The command line (DESIGN.md §9). Every flag has a `SKIFF_…` environment variable,
//! and an optional config file supplies defaults: flags, then environment, then file.

mod completion;
mod config;
mod controller;
mod endpoint;
mod inspect;
mod logging;
mod logs;
mod operate;
mod progress;
mod report;
mod source;
mod validate;
mod wait;

use crate::manifest::RuntimeKind;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Exit code for a usage or configuration error (§9).
pub const EXIT_USAGE: u8 = 2;

#[derive(Parser, Debug)]
#[command(name = "skiff", version, about = "A reconciling controller for container tasks", long_about = None)]
pub struct Cli {
    /// A YAML file of defaults for the controller's flags (`max-running: 8`, ...).
    #[arg(long, env = "SKIFF_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per run: the size of the controller's flags costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Watch a folder of ContainerTask manifests and run them.
    Controller(ControllerArgs),
    /// List tasks and their status.
    Get(GetArgs),
    /// Show one task in detail.
    Describe(DescribeArgs),
    /// Print a task's output.
    Logs(LogsArgs),
    /// Check manifests without running them; exits 1 if any is invalid.
    Validate(ValidateArgs),
    /// Wait until tasks reach a phase.
    Wait(WaitArgs),
    /// Run finished tasks again from attempt 1 (what deleting their status does).
    Rerun(RerunArgs),
    /// Stop tasks' running attempts, through the running controller's API.
    Terminate(TerminateArgs),
    /// Start a run of scheduled tasks now (reason ManualTrigger), subject to their
    /// concurrencyPolicy, through the running controller's API.
    Trigger(TerminateArgs),
    /// Inside a task: send its completion event to $SKIFF_CALLBACK_URL, retrying
    /// until the controller answers (it may be restarting).
    Report(ReportArgs),
    /// Print a shell completion script: bash, zsh, fish, powershell or elvish.
    ///
    /// e.g. `skiff completion bash > /etc/bash_completion.d/skiff`, or
    /// `source <(skiff completion bash)` in ~/.bashrc.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): `skiff man > /usr/local/share/man/man1/skiff.1`.
    Man,
    /// Print the JSON Schema of a ContainerTask.
    #[command(name = "schema", hide = true)]
    Schema,
}

#[derive(Args, Debug, Clone)]
pub struct SourceArgs {
    /// The folder of manifests.
    #[arg(long, env = "SKIFF_DIR")]
    pub dir: Option<PathBuf>,
    /// An Azure Blob container of manifests: https://ACCOUNT.blob.core.windows.net/CONTAINER[/PREFIX]
    /// (credentials: a SAS in the URL, AZURE_STORAGE_CONNECTION_STRING, AZURE_STORAGE_KEY, or
    /// --azure-credential).
    #[arg(long, env = "SKIFF_BLOB")]
    pub blob: Option<String>,
    /// How often the blob listing is compared for changes.
    #[arg(long, env = "SKIFF_BLOB_POLL", default_value = "10s", value_parser = parse_duration)]
    pub blob_poll: Duration,
    /// Where Azure tokens come from: managed, workload, secret or cli (default: guessed
    /// from the environment, else cli).
    #[arg(long, env = "SKIFF_AZURE_CREDENTIAL", value_parser = parse_credential)]
    pub azure_credential: Option<crate::azure::CredentialKind>,
    /// Where skiff keeps its own state (default: `<dir>/.skiff`).
    #[arg(long, env = "SKIFF_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ControllerArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// The runtime for tasks that do not name one.
    #[arg(long, env = "SKIFF_RUNTIME", value_enum, default_value = "process")]
    pub runtime: RuntimeArg,
    /// Reconcile until every task is final, then exit: 0 if all Succeeded, else 1.
    #[arg(long, env = "SKIFF_ONCE")]
    pub once: bool,
    /// Serve the HTTP API here; without it, on an ephemeral port of 127.0.0.1, so that
    /// completion callbacks from this machine work out of the box.
    #[arg(long, env = "SKIFF_LISTEN")]
    pub listen: Option<String>,
    /// The URL containers use to reach the callback route (default: http://<--listen>).
    #[arg(long, env = "SKIFF_CALLBACK_URL")]
    pub callback_url: Option<String>,
    /// A file holding the bearer token that management routes require.
    #[arg(long, env = "SKIFF_API_TOKEN_FILE")]
    pub api_token_file: Option<PathBuf>,
    /// At most this many containers at once.
    #[arg(long, env = "SKIFF_MAX_RUNNING")]
    pub max_running: Option<usize>,
    /// At most this many host processes at once (on top of --max-running).
    #[arg(long, env = "SKIFF_MAX_RUNNING_PROCESS")]
    pub max_running_process: Option<usize>,
    /// At most this many Docker containers at once (on top of --max-running).
    #[arg(long, env = "SKIFF_MAX_RUNNING_DOCKER")]
    pub max_running_docker: Option<usize>,
    /// At most this many ACI container groups at once (on top of --max-running).
    #[arg(long, env = "SKIFF_MAX_RUNNING_ACI")]
    pub max_running_aci: Option<usize>,
    /// Create-rate token bucket, CREATES/PERIOD (e.g. 100/5m): for every runtime, or for
    /// one with RUNTIME=CREATES/PERIOD (e.g. docker=20/1m). Repeatable.
    #[arg(long, env = "SKIFF_CREATE_RATE", value_delimiter = ',')]
    pub create_rate: Vec<String>,
    /// A named semaphore, NAME=N: tasks naming it in spec.semaphores run at most N at
    /// once (e.g. gpu=2). Repeatable.
    #[arg(long, value_name = "NAME=N", env = "SKIFF_SEMAPHORE", value_delimiter = ',')]
    pub semaphore: Vec<String>,
    /// POST a CloudEvents 1.0 event to this http(s) URL for every terminal transition of
    /// a task (Succeeded, Failed, Invalid). Repeatable; delivered at least once.
    #[arg(long, value_name = "URL", env = "SKIFF_NOTIFY", value_delimiter = ',')]
    pub notify: Vec<String>,
    /// Sign each notification with this file's contents as key: header
    /// `X-Skiff-Signature: sha256=<hex HMAC-SHA256 of the body>`.
    #[arg(long, value_name = "FILE", env = "SKIFF_NOTIFY_SECRET_FILE")]
    pub notify_secret_file: Option<PathBuf>,
    /// Full relist interval (heals missed file notifications).
    #[arg(long, env = "SKIFF_RESYNC", default_value = "60s", value_parser = parse_duration)]
    pub resync: Duration,
    /// Docker network mode: host, none, or a network's name.
    #[arg(long, env = "SKIFF_DOCKER_NETWORK")]
    pub docker_network: Option<String>,
    /// Registry credentials for docker pulls: a `~/.docker/config.json`-style file of
    /// `auths` (a task's own imagePullSecrets come first).
    #[arg(long, env = "SKIFF_DOCKER_CONFIG")]
    pub docker_config: Option<PathBuf>,
    /// Allow `hostPath` volumes under this prefix (repeatable).
    #[arg(long, env = "SKIFF_ALLOW_HOST_PATH", value_delimiter = ',')]
    pub allow_host_path: Vec<PathBuf>,
    /// The most output kept of each container after it ends (process, docker): its first
    /// and last bytes, with a line saying how much was cut between them.
    #[arg(long, env = "SKIFF_MAX_LOG_SIZE", default_value = "10MiB", value_parser = parse_size)]
    pub max_log_size: u64,
    /// How other replicas sharing a blob store name this one in their warnings
    /// (default: HOST:STATE-DIR).
    #[arg(long, env = "SKIFF_REPLICA_NAME")]
    pub replica_name: Option<String>,
    /// Log filter, e.g. `info` or `skiff=debug`.
    #[arg(long, env = "SKIFF_LOG", default_value = "info")]
    pub log: String,
    /// How log lines look on stderr: text for people, json (one object per line, with
    /// task, attempt, phase and reason as fields) for log shippers.
    #[arg(long, env = "SKIFF_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// ACI: the subscription container groups are made in (default: AZURE_SUBSCRIPTION_ID).
    #[arg(long, env = "SKIFF_ACI_SUBSCRIPTION_ID")]
    pub aci_subscription_id: Option<String>,
    /// ACI: the resource group container groups are made in.
    #[arg(long, env = "SKIFF_ACI_RESOURCE_GROUP")]
    pub aci_resource_group: Option<String>,
    /// ACI: the region of container groups, e.g. westus2.
    #[arg(long, env = "SKIFF_ACI_LOCATION")]
    pub aci_location: Option<String>,
    /// ACI: at most COUNT creates in any DURATION, per window.
    #[arg(long, env = "SKIFF_ACI_CREATE_QUOTA", default_value = crate::runtime::aci::DEFAULT_CREATE_QUOTA,
          value_parser = parse_create_quota)]
    pub aci_create_quota: crate::runtime::aci::CreateQuota,
    /// Azure Resource Manager's URL (a sovereign cloud's, or a simulator's).
    #[arg(long, env = "SKIFF_ARM_ENDPOINT", default_value = crate::runtime::aci::DEFAULT_ARM_ENDPOINT)]
    pub arm_endpoint: String,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum RuntimeArg {
    Process,
    Docker,
    Aci,
}

impl From<RuntimeArg> for RuntimeKind {
    fn from(arg: RuntimeArg) -> Self {
        match arg {
            RuntimeArg::Process => RuntimeKind::Process,
            RuntimeArg::Docker => RuntimeKind::Docker,
            RuntimeArg::Aci => RuntimeKind::Aci,
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
    Yaml,
}

#[derive(Args, Debug)]
pub struct GetArgs {
    /// One task (its path without extension); all tasks when absent.
    pub task: Option<String>,
    #[command(flatten)]
    pub source: SourceArgs,
    #[arg(short, long, env = "SKIFF_OUTPUT", value_enum, default_value = "table")]
    pub output: OutputFormat,
    /// Print again whenever something changes.
    #[arg(short, long)]
    pub watch: bool,
}

#[derive(Args, Debug)]
pub struct DescribeArgs {
    pub task: String,
    #[command(flatten)]
    pub source: SourceArgs,
}

#[derive(Args, Debug)]
pub struct LogsArgs {
    pub task: String,
    #[command(flatten)]
    pub source: SourceArgs,
    /// Keep printing output as it comes, until the task is final.
    #[arg(short, long)]
    pub follow: bool,
    /// ACI: the controller's subscription, to read a running group's output from ARM
    /// (default: AZURE_SUBSCRIPTION_ID). Without `--aci-resource-group`, an ACI task's
    /// output is what the controller kept.
    #[arg(long, env = "SKIFF_ACI_SUBSCRIPTION_ID")]
    pub aci_subscription_id: Option<String>,
    /// ACI: the controller's resource group.
    #[arg(long, env = "SKIFF_ACI_RESOURCE_GROUP")]
    pub aci_resource_group: Option<String>,
    /// Azure Resource Manager's URL (a sovereign cloud's, or a simulator's).
    #[arg(long, env = "SKIFF_ARM_ENDPOINT", default_value = crate::runtime::aci::DEFAULT_ARM_ENDPOINT)]
    pub arm_endpoint: String,
}

#[derive(Args, Debug)]
pub struct ValidateArgs {
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// The runtime assumed for manifests that do not name one.
    #[arg(long, env = "SKIFF_RUNTIME", value_enum, default_value = "process")]
    pub runtime: RuntimeArg,
    /// Allow `hostPath` volumes under this prefix (repeatable).
    #[arg(long, env = "SKIFF_ALLOW_HOST_PATH", value_delimiter = ',')]
    pub allow_host_path: Vec<PathBuf>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum WaitFor {
    /// Every task Succeeded (fails at once if one Failed or is Invalid).
    Succeeded,
    /// Every task is Succeeded, Failed or Invalid.
    Terminal,
}

#[derive(Args, Debug)]
pub struct WaitArgs {
    #[arg(required = true)]
    pub tasks: Vec<String>,
    #[command(flatten)]
    pub source: SourceArgs,
    #[arg(long = "for", value_enum, default_value = "terminal")]
    pub wait_for: WaitFor,
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub timeout: Duration,
}

#[derive(Args, Debug)]
pub struct RerunArgs {
    #[arg(required = true)]
    pub tasks: Vec<String>,
    #[command(flatten)]
    pub source: SourceArgs,
    /// For a fan-out: run only its failed indexes again.
    #[arg(long)]
    pub failed: bool,
}

#[derive(Args, Debug)]
pub struct TerminateArgs {
    #[arg(required = true)]
    pub tasks: Vec<String>,
    #[command(flatten)]
    pub source: SourceArgs,
    /// The controller's API (default: the address it recorded in its state folder).
    #[arg(long, env = "SKIFF_SERVER")]
    pub server: Option<String>,
    /// The bearer token's file (default: the one the controller was started with).
    #[arg(long, env = "SKIFF_API_TOKEN_FILE")]
    pub api_token_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// The result, as JSON (at most 64 KiB).
    #[arg(long)]
    pub result: Option<String>,
    /// The exit code to report (default: success).
    #[arg(long)]
    pub exit_code: Option<i32>,
    #[arg(long)]
    pub message: Option<String>,
    /// Give up after this long.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub timeout: Duration,
}

fn parse_create_quota(text: &str) -> Result<crate::runtime::aci::CreateQuota, String> {
    text.parse()
}

fn parse_credential(text: &str) -> Result<crate::azure::CredentialKind, String> {
    text.parse()
}

fn parse_size(text: &str) -> Result<u64, String> {
    crate::runtime::log_cap::parse_size(text)
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|err| format!("{err}; write e.g. 30s, 5m or 1h30m"))
}

/// A user's mistake, reported as one line and exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

pub fn main() -> ExitCode {
    let cli = match config::parse_with_config_file() {
        Ok(cli) => cli,
        Err(err) => {
            say_error(&err.to_string());
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if !matches!(cli.command, Command::Controller(_)) {
        die_quietly_on_closed_pipe();
    }
    let result = match cli.command {
        Command::Schema => {
            print!("{}", crate::manifest::json_schema());
            return ExitCode::SUCCESS;
        }
        Command::Validate(args) => return validate::run(&args),
        Command::Rerun(args) => operate::rerun(args),
        Command::Terminate(args) => operate::terminate(args),
        Command::Trigger(args) => operate::trigger(args),
        Command::Report(args) => report::run(args),
        Command::Completion { shell } => completion::completion(shell),
        Command::Man => completion::man(),
        Command::Controller(args) => controller::run(args),
        Command::Get(args) => inspect::get(args),
        Command::Describe(args) => inspect::describe(args),
        Command::Logs(args) => logs::run(args),
        Command::Wait(args) => wait::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            say_error(&printable(&error_text(&err)));
            let usage = err.downcast_ref::<UsageError>().is_some();
            ExitCode::from(if usage { EXIT_USAGE } else { 1 })
        }
    }
}

use source::open_store;

/// The last word of a failed command. Not `eprintln!`: it panics when stderr is closed,
/// turning exit 1 or 2 into 101.
fn say_error(message: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "error: {message}");
}

/// `skiff get | head -1`: like any Unix filter, a command whose reader went away ends
/// there, silently, instead of panicking in `println!` (Rust ignores SIGPIPE). The
/// controller keeps ignoring it: a closed pipe must never stop it.
fn die_quietly_on_closed_pipe() {
    use nix::sys::signal::{SigHandler, Signal, signal};
    // SAFETY: done before any thread starts, and SIG_DFL installs no Rust code.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
}

/// An error and its causes on one line, each said once: many errors already quote
/// their cause in their own text, which `{:#}` would print a second time.
fn error_text(err: &anyhow::Error) -> String {
    let mut text = err.to_string();
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

/// `text` with control characters escaped (`\n`, `\u{1b}`), for a terminal: a file name
/// or message holding ESC must not recolour or rewrite the user's screen, and a
/// newline must not break a table row.
pub(crate) fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

fn state_dir(source: &SourceArgs) -> PathBuf {
    match (&source.state_dir, &source.dir) {
        (Some(state), _) => state.clone(),
        (None, Some(dir)) => dir.join(".skiff"),
        (None, None) => PathBuf::from(".skiff"),
    }
}

fn tokio_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_escapes_control_characters_only() {
        assert_eq!(printable("plain/ok-1.yaml"), "plain/ok-1.yaml");
        assert_eq!(printable("a\u{1b}[31mb\nc\td é"), "a\\u{1b}[31mb\\nc\\td é");
    }

    #[test]
    fn an_error_quoting_its_cause_prints_it_once() {
        let io = std::io::Error::other("Is a directory (os error 21)");
        let err: anyhow::Error = crate::store::StoreError::Io {
            path: "/d/x.status.json".into(),
            source: io,
        }
        .into();
        assert_eq!(error_text(&err), "/d/x.status.json: Is a directory (os error 21)");
        let wrapped = anyhow::anyhow!(std::io::Error::other("inner")).context("outer");
        assert_eq!(error_text(&wrapped), "outer: inner");
    }
}
