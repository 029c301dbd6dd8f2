//! The benchmarks run, and the gate fails on a regression and passes an
//! improvement, with the real binary under the real valgrind.

use std::{path::Path, process::Command};

fn perf() -> Command {
    Command::new(env!("CARGO_BIN_EXE_agentfs-perf"))
}

fn names() -> Vec<String> {
    let out = perf().args(["list", "--json"]).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["name"].as_str().unwrap().to_string()
        })
        .collect()
}

fn plugins_built() -> bool {
    let dir = Path::new(env!("CARGO_BIN_EXE_agentfs-perf"))
        .parent()
        .unwrap();
    [
        "libagentfs_backstore_mock.so",
        "libagentfs_watch_inotify.so",
        "libagentfs_watch_kqueue.so",
        "libagentfs_watch_fsevents.so",
    ]
    .iter()
    .all(|f| dir.join(f).exists())
}

#[test]
fn every_benchmark_runs_its_measured_section() {
    if !plugins_built() {
        agentfs_testfs::skip(
            "every_benchmark_runs_its_measured_section",
            "the plugins are not built next to agentfs-perf: run `cargo build --workspace` first",
        );
        return;
    }
    let names = names();
    assert!(names.len() >= 15, "{names:?}");
    for n in &names {
        let out = perf().args(["run", n]).output().unwrap();
        assert!(
            out.status.success(),
            "{n}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn an_unknown_benchmark_is_a_clear_error() {
    let out = perf().args(["run", "no/such"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no benchmark named \"no/such\""), "{err}");
}

#[test]
fn the_gate_fails_on_a_regression_and_reports_an_improvement() {
    if Command::new("valgrind").arg("--version").output().is_err() {
        agentfs_testfs::skip(
            "the_gate_fails_on_a_regression_and_reports_an_improvement",
            "valgrind is not installed",
        );
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let file = t.path().join("baselines.toml");
    let gate = |extra: &[&str]| {
        let mut c = perf();
        c.args(["gate", "--filter", "proto/ack", "--baselines"])
            .arg(&file)
            .args(extra);
        c.output().unwrap()
    };
    // No baseline yet: that fails, and says how to record one.
    let out = gate(&[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("NO BASELINE proto/ack"));

    let out = gate(&["--update"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("agentfs-perf gate --update"), "{text}");
    let count: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("\"proto/ack\" = "))
        .unwrap_or_else(|| panic!("{text}"))
        .parse()
        .unwrap();
    assert!(count > 0);

    // The measured count is 10% over this baseline: a regression.
    let lower = count * 10 / 11;
    std::fs::write(&file, format!("[instructions]\n\"proto/ack\" = {lower}\n")).unwrap();
    let out = gate(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "REGRESSION proto/ack: baseline {lower} -> new {count} instructions"
        )),
        "{err}"
    );

    // 20% under this baseline: reported, not failing.
    let higher = count * 6 / 5;
    std::fs::write(&file, format!("[instructions]\n\"proto/ack\" = {higher}\n")).unwrap();
    let out = gate(&["--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows[0]["verdict"], "improvement");
    assert_eq!(rows[0]["new"], count);
    assert_eq!(rows[0]["baseline"], higher);
}
