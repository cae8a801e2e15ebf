//! `skiff wait TASK... --for succeeded|terminal [--timeout 5m]`.

use super::{WaitArgs, WaitFor, inspect, open_store};
use crate::status::Phase;
use std::process::ExitCode;
use std::time::{Duration, Instant};

pub fn run(args: WaitArgs) -> anyhow::Result<ExitCode> {
    let keys = args
        .tasks
        .iter()
        .map(|t| inspect::task_key(t))
        .collect::<Result<Vec<_>, _>>()?;
    let store = open_store(&args.source)?;
    let deadline = Instant::now() + args.timeout;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        loop {
            let mut waiting = Vec::new();
            for key in &keys {
                let phase = store.read_status(key).await?.map(|s| s.phase);
                match (phase, args.wait_for) {
                    (Some(Phase::Succeeded), _) => {}
                    (Some(p), WaitFor::Terminal) if p.is_final() => {}
                    (Some(p), WaitFor::Succeeded) if p.is_final() => {
                        eprintln!("{key} is {p}; it will not succeed without a change (see `skiff describe {key}`)");
                        return Ok(ExitCode::from(1));
                    }
                    (p, _) => waiting.push(format!("{key} ({})", p.map_or("not started", Phase::as_str))),
                }
            }
            if waiting.is_empty() {
                return Ok(ExitCode::SUCCESS);
            }
            if Instant::now() >= deadline {
                eprintln!(
                    "timed out after {} waiting for {}",
                    humantime::format_duration(args.timeout),
                    waiting.join(", ")
                );
                return Ok(ExitCode::from(1));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}
