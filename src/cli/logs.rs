//! `skiff logs TASK [--follow]`: the output of the task's current (or last) attempt,
//! asked of the runtime it ran on ([`Runtime::output`]) when this machine can reach it;
//! else the copy kept in the state folder, else the one its controller saved in the store.

use super::{LogsArgs, UsageError, inspect, open_store, state_dir};
use crate::azure::CredentialKind;
use crate::runtime::aci::{AciConfig, AciCredential, AciRuntime, LogFollower};
use crate::runtime::docker::DockerRuntime;
use crate::runtime::process::ProcessRuntime;
use crate::runtime::{Runtime, kept_logs};
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

/// How often `--follow` asks ARM for a running ACI container's output.
const ACI_FOLLOW_PAUSE: Duration = Duration::from_secs(2);
/// The lines `--follow` asks ARM for each time (ACI keeps about 1,000 lines of a stopped
/// container): output growing by more than this between two polls is partly missed, and
/// said so.
const ACI_FOLLOW_TAIL: u32 = 1000;

/// The aci runtime, to read a running group's output from ARM, when the controller's
/// resource group is given (the groups of tasks placed elsewhere are found through the
/// state folder's records).
fn aci_runtime(args: &LogsArgs, state: &std::path::Path) -> anyhow::Result<Option<AciRuntime>> {
    let given = |v: &Option<String>| v.clone().filter(|v| !v.trim().is_empty());
    let Some(group) = given(&args.aci_resource_group) else {
        return Ok(None);
    };
    let Some(subscription) =
        given(&args.aci_subscription_id).or_else(|| given(&std::env::var("AZURE_SUBSCRIPTION_ID").ok()))
    else {
        return Err(
            UsageError("--aci-resource-group needs --aci-subscription-id (or AZURE_SUBSCRIPTION_ID)".into()).into(),
        );
    };
    let kind = args.source.azure_credential.unwrap_or_else(CredentialKind::guess);
    // The location is only for creates, which `logs` never makes.
    let mut config = AciConfig::new(subscription, group, "unused", AciCredential::Azure(kind));
    config.arm_endpoint = args.arm_endpoint.clone();
    let aci = AciRuntime::new(state, config).map_err(|err| UsageError(err.to_string()))?;
    Ok(Some(aci))
}

pub fn run(args: LogsArgs) -> anyhow::Result<ExitCode> {
    let key = inspect::task_key(&args.task)?;
    let store = open_store(&args.source)?;
    let state = state_dir(&args.source);
    // With --blob and no --state-dir there is no local state to read (nor to create):
    // the output comes from what the controller saved in the store.
    let local = args.source.blob.is_none() || args.source.state_dir.is_some();
    // The runtimes this machine reaches with no configuration (aci needs its own; what
    // it kept is read from the state folder all the same).
    let mut runtimes: Vec<Box<dyn Runtime>> = Vec::new();
    if local {
        runtimes.push(Box::new(ProcessRuntime::open(&state)));
        if let Ok(docker) = DockerRuntime::connect(&state, None) {
            runtimes.push(Box::new(docker));
        }
        if let Some(aci) = aci_runtime(&args, &state)? {
            runtimes.push(Box::new(aci));
        }
    }
    // A running ACI container is followed through ARM's `tail` windows, aligned line by
    // line (ARM gives no offsets); the other runtimes' output only grows, read by offset.
    let aci_live = if local && args.follow {
        aci_runtime(&args, &state)?
    } else {
        None
    };
    let logs = state.join("logs");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut shown: Option<String> = None;
        let mut offset = 0usize;
        let mut follower = LogFollower::new(ACI_FOLLOW_TAIL as usize);
        // The last error said, so that --follow does not repeat it every turn.
        let mut said: Option<String> = None;
        let mut stdout = std::io::stdout();
        loop {
            let Some(status) = store.read_status(&key).await? else {
                if store.list_one(&key).await?.is_none() {
                    return Err(UsageError(format!("no task {key} in {}", store.location())).into());
                }
                if !args.follow {
                    println!("(task {key} has not started yet)");
                    return Ok(ExitCode::SUCCESS);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            };
            let current = status.current().map(|a| (a.container.clone(), a.runtime, a.number));
            if let Some((container, runtime, number)) = &current {
                if shown.as_ref() != Some(container) {
                    if shown.is_some() {
                        writeln!(stdout, "--- attempt {number} ---")?;
                    }
                    shown = Some(container.clone());
                    offset = 0;
                    follower = LogFollower::new(ACI_FOLLOW_TAIL as usize);
                }
                if let Some(aci) = aci_live
                    .as_ref()
                    .filter(|_| *runtime == crate::manifest::RuntimeKind::Aci)
                {
                    let kept = kept_logs::read(&logs, container, None).await.ok().flatten();
                    let window = match kept {
                        Some(bytes) => Some((bytes, true)),
                        None => match aci.live_logs(container, ACI_FOLLOW_TAIL).await {
                            Ok(text) => text.map(|t| (t.into_bytes(), false)),
                            Err(err) => {
                                if said.as_ref() != Some(&err.to_string()) {
                                    eprintln!("{}", super::printable(&err.to_string()));
                                    said = Some(err.to_string());
                                }
                                None
                            }
                        },
                    };
                    // Another machine's controller deleted it: the output it saved in the store.
                    let window = match window {
                        None if status.phase.is_final() => {
                            store.read_log(container).await.ok().flatten().map(|b| (b, true))
                        }
                        window => window,
                    };
                    if let Some((bytes, finished)) = window {
                        let followed = follower.advance(&String::from_utf8_lossy(&bytes), finished);
                        if followed.gap {
                            writeln!(
                                stdout,
                                "--- output grew faster than it was read; some lines were missed ---"
                            )?;
                        }
                        stdout.write_all(followed.text.as_bytes())?;
                    }
                    stdout.flush()?;
                    if status.phase.is_final() {
                        return Ok(ExitCode::SUCCESS);
                    }
                    tokio::time::sleep(ACI_FOLLOW_PAUSE).await;
                    continue;
                }
                let output = match runtimes.iter().find(|r| r.kind() == *runtime) {
                    Some(runtime) => runtime.output(container).await,
                    None if local => kept_logs::read(&logs, container, None).await,
                    None => Ok(None),
                };
                let output = output.unwrap_or_else(|err| {
                    if said.as_ref() != Some(&err.to_string()) {
                        eprintln!("{}", super::printable(&err.to_string()));
                        said = Some(err.to_string());
                    }
                    None
                });
                // Another machine's container: the output its controller saved in the store.
                let output = match output {
                    Some(bytes) => Some(bytes),
                    None => store.read_log(container).await.ok().flatten(),
                };
                if let Some(bytes) = &output
                    && bytes.len() < offset
                {
                    // The kept log was compacted (--max-log-size) under our feet: go on from
                    // the start of its kept tail, which may repeat a little already shown.
                    writeln!(stdout, "--- output cut to --max-log-size; following its tail ---")?;
                    offset = crate::runtime::log_cap::kept_tail_start(bytes).unwrap_or(0);
                }
                if let Some(bytes) = output
                    && bytes.len() > offset
                {
                    stdout.write_all(&bytes[offset..])?;
                    offset = bytes.len();
                }
            } else if !args.follow {
                println!("(task {key} has not started yet)");
            }
            stdout.flush()?;
            if !args.follow || status.phase.is_final() {
                return Ok(ExitCode::SUCCESS);
            }
            // ARM's logs are polled gently: its reads count against the subscription's quota.
            let pause = match &current {
                Some((_, crate::manifest::RuntimeKind::Aci, _)) => ACI_FOLLOW_PAUSE,
                _ => Duration::from_millis(200),
            };
            tokio::time::sleep(pause).await;
        }
    })
}
