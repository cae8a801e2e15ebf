//! `skiff-sim --schedules N [--seed S] [--threads T]`: runs the deterministic simulator
//! (`skiff::sim`). Schedules are numbered from the seed: `--seed S --schedules 1`
//! replays schedule S exactly. Exits 1 when any schedule violates an invariant, printing
//! each failing seed with what happened.

use std::time::Instant;

fn main() {
    let mut schedules: u64 = 1000;
    let mut seed: Option<u64> = None;
    let mut threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| -> u64 {
            match args.next().and_then(|v| v.replace('_', "").parse().ok()) {
                Some(v) => v,
                None => {
                    eprintln!("{name} needs a number");
                    std::process::exit(2);
                }
            }
        };
        match arg.as_str() {
            "--schedules" | "-n" => schedules = value("--schedules"),
            "--seed" => seed = Some(value("--seed")),
            "--threads" => threads = value("--threads") as usize,
            "-h" | "--help" => {
                println!("usage: skiff-sim [--schedules N] [--seed S] [--threads T]");
                println!(
                    "  runs N schedules (seeds S, S+1, ...; default: 1 schedule when --seed is given, else 1000 from 0)"
                );
                return;
            }
            other => {
                eprintln!("unknown argument {other:?}; try --help");
                std::process::exit(2);
            }
        }
    }
    let first = match seed {
        Some(s) => {
            if !std::env::args().any(|a| a == "--schedules" || a == "-n") {
                schedules = 1;
            }
            s
        }
        None => 0,
    };
    let started = Instant::now();
    let failures = skiff::sim::run_many(first, schedules, threads);
    let elapsed = started.elapsed();
    for failed in &failures {
        println!("{failed}\n");
    }
    println!(
        "{schedules} schedules, {} violations ({:.1} s, {:.0} schedules/s, seeds {first}..{})",
        failures.len(),
        elapsed.as_secs_f64(),
        schedules as f64 / elapsed.as_secs_f64().max(1e-9),
        first + schedules
    );
    if !failures.is_empty() {
        std::process::exit(1);
    }
}
