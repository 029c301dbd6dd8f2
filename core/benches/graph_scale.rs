//! Cost of each operation against the size of the graph: the same
//! operations on a store with 10 branches and 1 snapshot, and on one with
//! 10,000 branches and 1,000 snapshots (target: within 1.5x). On disk
//! (the temp directory), over the plain-directory layer store, so every
//! graph change pays its fsync.
//!
//! - `open`: opening the store and dropping it, what every CLI invocation
//!   pays before its operation;
//! - `open_stat`: open, then stat an unchanged base file through a branch
//!   (a one-shot process's read);
//! - `stat`: stat through a branch in an open store; `write`: write a small
//!   file in a branch;
//! - `branch_create_delete`: a graph change and its undo;
//!   `snapshot_cycle`: branch create, snapshot, branch delete, snapshot
//!   delete (four graph changes);
//! - `branch_chain`: the directories a branch reads through (what the
//!   shim asks for);
//! - `branch_list`, `snapshot_list`: listings, which grow with what they
//!   list (reported, not held to the target).
//!
//! Run: `cargo bench -p agentfs-core --bench graph_scale` (building the
//! 10,000-branch store takes a minute).

use std::{fs, path::Path, time::Duration};

use agentfs_core::{DirLayerStore, InitOptions, LockWait, Store};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

/// A store of `branches` branches, the first `snapshots` of which have a
/// file written and a snapshot taken.
fn populate(dir: &Path, branches: usize, snapshots: usize) -> Store {
    let base = dir.join("base");
    fs::create_dir_all(base.join("d")).unwrap();
    fs::write(base.join("d/f.txt"), b"a base file").unwrap();
    let s = Store::init(
        DirLayerStore::new(dir.join("store")).unwrap(),
        InitOptions {
            default_base: Some(base),
            ..InitOptions::default()
        },
        LockWait::Block,
    )
    .unwrap();
    for i in 0..branches {
        let name = format!("agent-{i}");
        s.create_branch(&name, None, None).unwrap();
        if i < snapshots {
            s.branch(&name).write_file("out.txt", b"result").unwrap();
            s.create_snapshot(&name, Some(&format!("run-{i}"))).unwrap();
        }
    }
    // Building wrote thousands of directories: flushed now, so that the
    // measured fsyncs do not pay for that backlog.
    rustix::fs::sync();
    s
}

fn scale(c: &mut Criterion) {
    let mut g = c.benchmark_group("graph_scale");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for (branches, snapshots) in [(10, 1), (10_000, 1_000)] {
        let t = tempfile::tempdir().unwrap();
        let s = populate(t.path(), branches, snapshots);
        let root = t.path().join("store");
        let id = |op: &str| BenchmarkId::new(op, format!("{branches}b_{snapshots}s"));
        let open = || Store::open(DirLayerStore::new(&root).unwrap(), LockWait::Block).unwrap();
        g.bench_function(id("open"), |b| b.iter(|| drop(open())));
        g.bench_function(id("open_stat"), |b| {
            b.iter(|| open().branch("agent-0").stat("d/f.txt").unwrap())
        });
        let tree = s.branch("agent-0");
        g.bench_function(id("stat"), |b| b.iter(|| tree.stat("d/f.txt").unwrap()));
        g.bench_function(id("write"), |b| {
            b.iter(|| tree.write_file("w.txt", b"written").unwrap())
        });
        g.bench_function(id("branch_create_delete"), |b| {
            b.iter(|| {
                s.create_branch("bench", None, None).unwrap();
                s.delete_branch("bench").unwrap();
            })
        });
        // A commit snapshot makes its branch depend on it: the cycle is
        // branch create, snapshot, branch delete, snapshot delete.
        g.bench_function(id("snapshot_cycle"), |b| {
            b.iter(|| {
                s.create_branch("snapper", None, None).unwrap();
                s.create_snapshot("snapper", Some("bench")).unwrap();
                s.delete_branch("snapper").unwrap();
                s.delete_snapshot("bench").unwrap();
            })
        });
        g.bench_function(id("branch_chain"), |b| {
            b.iter(|| s.branch_chain("agent-0").unwrap())
        });
        g.bench_function(id("branch_list"), |b| b.iter(|| s.list_branches().unwrap()));
        g.bench_function(id("snapshot_list"), |b| {
            b.iter(|| s.list_snapshots().unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, scale);
criterion_main!(benches);
