//! `skiff-sim --schedules N [--seed S] [--threads T]`: runs the deterministic simulator
//! (`skiff::sim`). Schedules are numbered from the seed: `--seed S --schedules 1`
//! replays schedule S exactly (`--skip 3,7` with some steps left out, as a shrink
//! prints). Exits 1 when any schedule violates an invariant, printing each failing seed
//! with what happened, and the first one shrunk (`--no-shrink` to skip that).

use std::time::Instant;

fn main() {
    let mut schedules: u64 = 1000;
    let mut seed: Option<u64> = None;
    let mut threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut skip = std::collections::BTreeSet::new();
    let mut shrink = true;
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
            "--no-shrink" => shrink = false,
            "--skip" => {
                let list = args.next().unwrap_or_default();
                for step in list.split(',').filter(|s| !s.is_empty()) {
                    match step.parse::<usize>() {
                        Ok(step) => {
                            skip.insert(step);
                        }
                        Err(_) => {
                            eprintln!("--skip takes step numbers separated by commas, e.g. --skip 3,7");
                            std::process::exit(2);
                        }
                    }
                }
            }
            "-h" | "--help" => {
                println!("usage: skiff-sim [--schedules N] [--seed S] [--skip STEPS] [--threads T] [--no-shrink]");
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
    if !skip.is_empty() {
        // One schedule, with the steps a shrink left out.
        match skiff::sim::run_skipping(first, &skip) {
            Ok(_) => println!("seed {first} without steps {skip:?}: 0 violations"),
            Err(failed) => {
                println!("{failed}");
                std::process::exit(1);
            }
        }
        return;
    }
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
    if let Some(first_failure) = failures.first() {
        if shrink {
            let shrunk = skiff::sim::shrink(first_failure);
            println!(
                "\nseed {} shrunk ({} of its steps left out):\n{shrunk}",
                first_failure.seed,
                shrunk.skipped.len()
            );
        }
        std::process::exit(1);
    }
}
