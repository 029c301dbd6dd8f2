//! `agentfs-perf`: instruction-count benchmarks of AgentFS's hot paths and
//! the gate that fails when one of them regresses against its committed
//! baseline. See `docs/performance.md` ("instruction-count gate").
//!
//! `agentfs-perf gate` runs every benchmark in its own process under
//! `valgrind --tool=callgrind`, counting only the instructions executed
//! inside [`agentfs_icount_measured`] (`--toggle-collect`), so setup,
//! process start and plugin loading are never counted. Instruction counts
//! do not depend on the machine's load, which is why they can gate CI on a
//! shared 2-core machine where wall-clock figures swing by 30%.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

mod benches;
mod gate;

// The shim's path logic, compiled in from its sources: the shim crate builds
// only its `cdylib` (its exported `open`, `stat`, ... must never be linked
// into another Rust program), so there is no rlib to depend on.
#[allow(dead_code)]
#[path = "../../shim/src/ids.rs"]
mod ids;
#[allow(dead_code)]
#[path = "../../shim/src/paths.rs"]
mod paths;
#[allow(dead_code)]
#[path = "../../shim/src/resolve.rs"]
mod resolve;

/// Iterations inside one measured section; counts are reported per iteration.
pub const ITERATIONS: u64 = 20;

#[derive(Parser)]
#[command(
    name = "agentfs-perf",
    version,
    about = "Instruction-count benchmarks of AgentFS's hot paths and their regression gate",
    long_about = "Instruction-count benchmarks of AgentFS's hot paths, run under \
        `valgrind --tool=callgrind`, and the gate that compares them with the baselines \
        committed in perf/baselines.toml.\n\nBuild first: cargo build --release -p agentfs-perf \
        -p agentfs-backstore-mock -p agentfs-watch-kqueue -p agentfs-watch-fsevents \
        -p agentfs-watch-inotify"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Lists the benchmarks.
    List {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Runs one benchmark's measured section (what the gate runs under callgrind).
    Run {
        /// The benchmark's name (see `list`).
        name: String,
    },
    /// Times one benchmark's body natively (wall clock, for exploring; not gated).
    Time {
        /// The benchmark's name (see `list`).
        name: String,
        /// Iterations.
        #[arg(long, default_value_t = 10_000)]
        iterations: u64,
    },
    /// Measures every benchmark under callgrind and compares with the baselines.
    Gate {
        /// The baselines file.
        #[arg(long, default_value = "perf/baselines.toml")]
        baselines: PathBuf,
        /// Rewrite the baselines file with the new counts instead of comparing.
        #[arg(long)]
        update: bool,
        /// Fail when a count exceeds its baseline by more than this many percent.
        #[arg(long, default_value_t = 5.0)]
        threshold: f64,
        /// Only benchmarks whose name contains this.
        #[arg(long)]
        filter: Option<String>,
        /// Benchmarks measured at once (default: the number of CPUs).
        #[arg(long)]
        jobs: Option<usize>,
        /// Print the results as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// The measured section: callgrind counts exactly the instructions executed
/// between entering and leaving this function (`--toggle-collect`). It must
/// stay the only function of that name in the binary.
#[no_mangle]
#[inline(never)]
pub fn agentfs_icount_measured(body: &mut dyn FnMut(), iterations: u64) {
    for _ in 0..iterations {
        body();
    }
}

fn run(name: &str) -> anyhow::Result<()> {
    let bench = benches::find(name)
        .ok_or_else(|| anyhow::anyhow!("no benchmark named {name:?} (see `agentfs-perf list`)"))?;
    let mut body = (bench.setup)()?;
    // Warm-up outside the measured section: lazy symbol binding, caches
    // filled on first use, one-time allocations.
    body();
    body();
    agentfs_icount_measured(&mut *body, std::hint::black_box(ITERATIONS));
    Ok(())
}

fn time(name: &str, iterations: u64) -> anyhow::Result<()> {
    let bench = benches::find(name)
        .ok_or_else(|| anyhow::anyhow!("no benchmark named {name:?} (see `agentfs-perf list`)"))?;
    anyhow::ensure!(iterations > 0, "--iterations must be at least 1");
    let mut body = (bench.setup)()?;
    body();
    let start = std::time::Instant::now();
    agentfs_icount_measured(&mut *body, iterations);
    let per = start.elapsed().as_secs_f64() / iterations as f64;
    println!(
        "{name}: {:.2} us per iteration ({iterations} iterations)",
        per * 1e6
    );
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::List { json } => {
            for b in benches::BENCHES {
                if json {
                    println!("{}", serde_json::json!({"name": b.name, "what": b.what}));
                } else {
                    println!("{:<28} {}", b.name, b.what);
                }
            }
            Ok(true)
        }
        Command::Run { name } => run(&name).map(|()| true),
        Command::Time { name, iterations } => time(&name, iterations).map(|()| true),
        Command::Gate {
            baselines,
            update,
            threshold,
            filter,
            jobs,
            json,
        } => gate::gate(&gate::GateOptions {
            baselines,
            update,
            threshold,
            filter,
            jobs: jobs
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
            json,
        }),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("agentfs-perf: {e:#}");
            ExitCode::from(2)
        }
    }
}
