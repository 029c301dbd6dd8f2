//! The gate: measure every benchmark under callgrind, compare with the
//! committed baselines, fail on a regression beyond the threshold.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Mutex,
    },
};

use serde::{Deserialize, Serialize};

use crate::{benches, ITERATIONS};

/// What `agentfs-perf gate` was asked to do.
pub struct GateOptions {
    /// The baselines file.
    pub baselines: PathBuf,
    /// Rewrite the baselines instead of comparing.
    pub update: bool,
    /// Allowed regression, in percent.
    pub threshold: f64,
    /// Only benchmarks whose name contains this.
    pub filter: Option<String>,
    /// Parallel measurements.
    pub jobs: usize,
    /// JSON output.
    pub json: bool,
}

/// Why a measurement failed.
#[derive(Debug, thiserror::Error)]
pub enum MeasureError {
    /// valgrind could not be started.
    #[error("could not run valgrind (install it: apt-get install valgrind): {0}")]
    NoValgrind(std::io::Error),
    /// The benchmark process failed.
    #[error("benchmark {name} failed under valgrind ({status}):\n{stderr}")]
    Failed {
        /// The benchmark.
        name: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// Its standard error.
        stderr: String,
    },
    /// The callgrind output could not be read or had no total.
    #[error("benchmark {name}: callgrind output {path}: {why}")]
    Output {
        /// The benchmark.
        name: String,
        /// The output file.
        path: PathBuf,
        /// What was wrong.
        why: String,
    },
    /// Other I/O.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The baselines file: instructions per iteration, by benchmark name.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Baselines {
    /// Counts by benchmark name.
    pub instructions: BTreeMap<String, u64>,
}

const HEADER: &str = "\
# Instruction counts per iteration of the gated benchmarks (callgrind `Ir`,
# release build). Checked by `.ci/run`, which fails when a count grows by
# more than 5%. Regenerate on purpose, and commit the diff with the change
# that explains it:
#   cargo build --release -p agentfs-perf -p agentfs-backstore-mock \\
#     -p agentfs-watch-kqueue -p agentfs-watch-fsevents -p agentfs-watch-inotify
#   target/release/agentfs-perf gate --update
# See docs/performance.md (instruction-count gate).
";

impl Baselines {
    /// Reads `path`; an absent file is an empty set of baselines.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(s) => toml::from_str(&s)
                .map_err(|e| anyhow::anyhow!("{}: not a baselines file: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(anyhow::anyhow!("{}: {e}", path.display())),
        }
    }

    /// Writes `path` with its explanatory header.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let body = toml::to_string(self)?;
        std::fs::write(path, format!("{HEADER}\n{body}"))
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }
}

/// Counts the instructions of one iteration of benchmark `name`.
pub fn measure(name: &str) -> Result<u64, MeasureError> {
    let exe = std::env::current_exe()?;
    let dir = tempfile::Builder::new().prefix("agentfs-perf").tempdir()?;
    let out = dir.path().join("callgrind.out");
    let output = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg("--toggle-collect=agentfs_icount_measured")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(&exe)
        .arg("run")
        .arg(name)
        .output()
        .map_err(MeasureError::NoValgrind)?;
    if !output.status.success() {
        return Err(MeasureError::Failed {
            name: name.to_string(),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    let text = std::fs::read_to_string(&out)?;
    let total = parse_total(&text).ok_or_else(|| MeasureError::Output {
        name: name.to_string(),
        path: out.clone(),
        why: "no `totals:` or `summary:` line".into(),
    })?;
    if total == 0 {
        return Err(MeasureError::Output {
            name: name.to_string(),
            path: out,
            why: "0 instructions collected: the measured section was not found".into(),
        });
    }
    Ok((total + ITERATIONS / 2) / ITERATIONS)
}

/// The `Ir` total of a callgrind output file.
pub fn parse_total(text: &str) -> Option<u64> {
    let line = text
        .lines()
        .find(|l| l.starts_with("totals:"))
        .or_else(|| text.lines().find(|l| l.starts_with("summary:")))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// One benchmark's outcome.
#[derive(Debug, Serialize)]
pub struct Row {
    /// Benchmark name.
    pub name: String,
    /// The committed count, if any.
    pub baseline: Option<u64>,
    /// The count measured now.
    pub new: u64,
    /// new / baseline.
    pub ratio: Option<f64>,
    /// `ok`, `regression`, `improvement` or `no-baseline`.
    pub verdict: &'static str,
}

/// Compares `new` with `baseline` at `threshold` percent.
pub fn verdict(baseline: Option<u64>, new: u64, threshold: f64) -> (Option<f64>, &'static str) {
    let Some(b) = baseline else {
        return (None, "no-baseline");
    };
    let ratio = new as f64 / b.max(1) as f64;
    let v = if ratio > 1.0 + threshold / 100.0 {
        "regression"
    } else if ratio < 1.0 - threshold / 100.0 {
        "improvement"
    } else {
        "ok"
    };
    (Some(ratio), v)
}

/// Runs the gate; `Ok(false)` when it fails.
pub fn gate(o: &GateOptions) -> anyhow::Result<bool> {
    let selected: Vec<&benches::Bench> = benches::BENCHES
        .iter()
        .filter(|b| o.filter.as_deref().is_none_or(|f| b.name.contains(f)))
        .collect();
    anyhow::ensure!(!selected.is_empty(), "no benchmark matches the filter");
    let results: Mutex<BTreeMap<usize, Result<u64, MeasureError>>> = Mutex::new(BTreeMap::new());
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..o.jobs.clamp(1, selected.len()) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(b) = selected.get(i) else { break };
                let r = measure(b.name);
                results
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(i, r);
            });
        }
    });
    let results = results.into_inner().unwrap_or_else(|p| p.into_inner());
    let mut counts = Vec::new();
    for (i, r) in results {
        counts.push((selected[i].name, r?));
    }

    let mut baselines = Baselines::load(&o.baselines)?;
    if o.update {
        for (name, n) in &counts {
            baselines.instructions.insert((*name).to_string(), *n);
        }
        baselines
            .instructions
            .retain(|k, _| benches::find(k).is_some());
        baselines.save(&o.baselines)?;
        if !o.json {
            for (name, n) in &counts {
                println!("{name:<28} {n:>12}");
            }
            println!("baselines written to {}", o.baselines.display());
        }
        return Ok(true);
    }

    let rows: Vec<Row> = counts
        .iter()
        .map(|(name, n)| {
            let baseline = baselines.instructions.get(*name).copied();
            let (ratio, verdict) = verdict(baseline, *n, o.threshold);
            Row {
                name: (*name).to_string(),
                baseline,
                new: *n,
                ratio,
                verdict,
            }
        })
        .collect();
    let failed: Vec<&Row> = rows
        .iter()
        .filter(|r| matches!(r.verdict, "regression" | "no-baseline"))
        .collect();
    if o.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!(
            "{:<28} {:>12} {:>12} {:>7}  verdict",
            "benchmark", "baseline", "new", "ratio"
        );
        for r in &rows {
            println!(
                "{:<28} {:>12} {:>12} {:>7}  {}",
                r.name,
                r.baseline.map_or("-".into(), |b| b.to_string()),
                r.new,
                r.ratio.map_or("-".into(), |x| format!("{x:.3}")),
                r.verdict
            );
        }
        for r in &failed {
            match r.baseline {
                Some(b) => eprintln!(
                    "REGRESSION {}: baseline {} -> new {} instructions (ratio {:.3}, more than {}% over)",
                    r.name,
                    b,
                    r.new,
                    r.ratio.unwrap_or_default(),
                    o.threshold
                ),
                None => eprintln!(
                    "NO BASELINE {}: {} instructions; record it with `agentfs-perf gate --update`",
                    r.name, r.new
                ),
            }
        }
        if failed.is_empty() {
            println!(
                "instruction-count gate passed ({} benchmarks, threshold {}%)",
                rows.len(),
                o.threshold
            );
        } else {
            eprintln!(
                "instruction-count gate FAILED; if the change is intended, update the baselines \
                 (`target/release/agentfs-perf gate --update`) and commit the diff"
            );
        }
    }
    Ok(failed.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_totals_line_of_a_callgrind_file() {
        let text = "version: 1\ncmd: x\nevents: Ir\nfn=(1) f\n3 7\nsummary: 1234\ntotals: 1200\n";
        assert_eq!(parse_total(text), Some(1200));
        assert_eq!(parse_total("summary: 99\n"), Some(99));
        assert_eq!(parse_total("events: Ir\n"), None);
    }

    #[test]
    fn five_percent_over_passes_and_more_fails() {
        assert_eq!(verdict(Some(1000), 1050, 5.0).1, "ok");
        assert_eq!(verdict(Some(1000), 1051, 5.0).1, "regression");
        assert_eq!(verdict(Some(1000), 1100, 5.0).1, "regression");
        assert_eq!(verdict(Some(1000), 900, 5.0).1, "improvement");
        assert_eq!(verdict(None, 900, 5.0).1, "no-baseline");
    }
}
