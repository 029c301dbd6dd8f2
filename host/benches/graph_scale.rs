//! Cost of each request through the daemon against the size of the
//! graph: a real `agentfs serve` process over a hostfs store (on disk, the
//! temp directory) with 10 branches and 1 snapshot, and over one with
//! 10,000 branches and 1,000 snapshots (target: within 1.5x). The stores
//! are built in process through `agentfs-core` (hostfs keeps the same
//! layout as its plain-directory layer store), then served.
//!
//! Requests: `Fs Stat` and `Fs WriteFile` in a branch, `BranchChain`,
//! `BranchCreate` + `BranchDelete`, and `BranchCreate` + `SnapshotCreate` +
//! `BranchDelete` + `SnapshotDelete` (a commit snapshot makes its branch
//! depend on it),
//! and the listings `BranchList`, `SnapshotList` (which grow with what they
//! list; reported, not held to the target).
//!
//! Run: `cargo build --release -p agentfs-host -p agentfs-backstore-hostfs &&
//! cargo bench -p agentfs-host --bench graph_scale` (the daemon loads the
//! plugin from `target/release`).

#[path = "../tests/common/daemon.rs"]
#[allow(dead_code)]
mod daemon_proc;

use std::{fs, path::Path, time::Duration};

use agentfs_core::{DirLayerStore, InitOptions, LockWait, Store};
use agentfs_proto::{Client, FsOp, Hello, Request, Response};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use daemon_proc::DaemonProc;

/// A store under `dir/store` of `branches` branches, the first
/// `snapshots` of which have a file written and a snapshot taken.
fn populate(dir: &Path, branches: usize, snapshots: usize) {
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
}

fn ok(c: &mut Client, r: Request) -> Response {
    c.request(r).unwrap()
}

fn fs_op(op: FsOp) -> Request {
    Request::Fs {
        branch: None,
        snapshot: None,
        op,
    }
}

fn scale(c: &mut Criterion) {
    let mut g = c.benchmark_group("daemon_graph_scale");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for (branches, snapshots) in [(10, 1), (10_000, 1_000)] {
        let t = tempfile::tempdir().unwrap();
        populate(t.path(), branches, snapshots);
        let config = t.path().join("agentfs.toml");
        fs::write(
            &config,
            format!(
                "[backstore]\nplugin = \"hostfs\"\noptions = {{ root = {:?} }}\n",
                t.path().join("store").display().to_string()
            ),
        )
        .unwrap();
        let socket = t.path().join("agentfs.sock");
        let daemon = DaemonProc::start(&config, &socket, &[], &[]);
        let mut cl = Client::connect(
            &daemon.socket,
            Hello::current("graph bench", Some("agent-0".into())),
        )
        .unwrap();
        let id = |op: &str| BenchmarkId::new(op, format!("{branches}b_{snapshots}s"));
        g.bench_function(id("stat"), |b| {
            b.iter(|| {
                ok(
                    &mut cl,
                    fs_op(FsOp::Stat {
                        path: "d/f.txt".into(),
                        follow: false,
                    }),
                )
            })
        });
        g.bench_function(id("write"), |b| {
            b.iter(|| {
                ok(
                    &mut cl,
                    fs_op(FsOp::WriteFile {
                        path: "w.txt".into(),
                        data: b"written".to_vec(),
                    }),
                )
            })
        });
        g.bench_function(id("branch_chain"), |b| {
            b.iter(|| ok(&mut cl, Request::BranchChain { branch: None }))
        });
        g.bench_function(id("branch_create_delete"), |b| {
            b.iter(|| {
                ok(
                    &mut cl,
                    Request::BranchCreate {
                        name: "bench".into(),
                        base: None,
                    },
                );
                ok(
                    &mut cl,
                    Request::BranchDelete {
                        name: "bench".into(),
                    },
                );
            })
        });
        // A commit snapshot makes its branch depend on it: the cycle is
        // branch create, snapshot, branch delete, snapshot delete.
        g.bench_function(id("snapshot_cycle"), |b| {
            b.iter(|| {
                ok(
                    &mut cl,
                    Request::BranchCreate {
                        name: "snapper".into(),
                        base: None,
                    },
                );
                ok(
                    &mut cl,
                    Request::SnapshotCreate {
                        branch: "snapper".into(),
                        name: Some("bench".into()),
                    },
                );
                ok(
                    &mut cl,
                    Request::BranchDelete {
                        name: "snapper".into(),
                    },
                );
                ok(
                    &mut cl,
                    Request::SnapshotDelete {
                        name: "bench".into(),
                    },
                );
            })
        });
        g.bench_function(id("branch_list"), |b| {
            b.iter(|| ok(&mut cl, Request::BranchList))
        });
        g.bench_function(id("snapshot_list"), |b| {
            b.iter(|| ok(&mut cl, Request::SnapshotList))
        });
        drop(cl);
        drop(daemon);
    }
    g.finish();
}

criterion_group!(benches, scale);
criterion_main!(benches);
