//! Core overlay benchmarks:
//! - branch creation over a base of 10 vs 100,000 files (independent of
//!   the base: <= 1.5x), on hostfs (disk, fsync'd graph) and mock (RAM);
//! - a snapshot of a branch with 10,000 changed files (fallback commit on
//!   hostfs and mock, native subvolume snapshot with the btrfs plugin on its
//!   RAM volume);
//! - materialising those 10,000 files (compaction) vs `cp -a --reflink`,
//!   on a loop-mounted btrfs;
//! - copy-up of a large file: reflink (hostfs on loop-mounted btrfs) vs
//!   copy (hostfs on loop-mounted ext4). Size: `AGENTFS_BENCH_COPYUP_MB`
//!   (default 1024).
//!
//! Needs `cargo build --workspace --release` first (loads the built
//! plugins); the loop mounts need root and skip with a message otherwise.

use std::{
    cell::Cell,
    path::{Path, PathBuf},
    process::Command,
};

use agentfs_core::{InitOptions, LockWait, Store};
use agentfs_host::{
    config::PluginEntry,
    loader::{library_file_name, load_backstore, LoadedBackstore, SearchPath},
};
use agentfs_plugin_api::PluginKind;
use agentfs_testfs::{FsKind, TestFs};
use criterion::{
    criterion_group, criterion_main, measurement::WallTime, BatchSize, BenchmarkGroup, Criterion,
    SamplingMode,
};

fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile = exe.parent().unwrap().parent().unwrap().to_path_buf();
    let lib = library_file_name(PluginKind::BACKSTORE, "hostfs");
    if profile.join(&lib).exists() {
        profile
    } else {
        profile.parent().unwrap().join("debug")
    }
}

fn load(name: &str, options: &str) -> LoadedBackstore {
    let entry = PluginEntry {
        plugin: Some(name.into()),
        path: None,
        options: toml::from_str(options).unwrap(),
    };
    load_backstore(&entry, &SearchPath(vec![target_dir()]))
        .expect("plugin not built: run `cargo build --workspace --release` first")
}

fn hostfs(root: &Path) -> LoadedBackstore {
    load(
        "hostfs",
        &format!("root = {:?}", root.display().to_string()),
    )
}

fn store(b: LoadedBackstore) -> Store {
    Store::init(b, InitOptions::default(), LockWait::Block).unwrap()
}

fn make_base(dir: &Path, files: usize) {
    // 100 files per directory, like a source tree.
    for i in 0..files {
        let d = dir.join(format!("d{:04}", i / 100));
        if i % 100 == 0 {
            std::fs::create_dir_all(&d).unwrap();
        }
        std::fs::write(d.join(format!("f{i}.txt")), format!("file {i}\n")).unwrap();
    }
}

/// For benchmarks whose setup costs seconds: exactly 10 measured runs
/// (one per sample) after one warm-up run, instead of criterion's usual
/// time-filling iteration counts.
fn ten_runs(g: &mut BenchmarkGroup<'_, WallTime>) {
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(std::time::Duration::from_millis(1))
        .measurement_time(std::time::Duration::from_millis(1));
}

/// Names `<prefix>0`, `<prefix>1`, ... for per-iteration setups, which
/// remove what the previous iteration made (unmeasured) and make the next.
struct Rotation {
    prefix: &'static str,
    n: Cell<u64>,
}

impl Rotation {
    fn new(prefix: &'static str) -> Self {
        Self {
            prefix,
            n: Cell::new(0),
        }
    }

    /// The previous name (if any) and the next one.
    fn next(&self) -> (Option<String>, String) {
        let i = self.n.get();
        self.n.set(i + 1);
        let prev = i.checked_sub(1).map(|p| format!("{}{p}", self.prefix));
        (prev, format!("{}{i}", self.prefix))
    }
}

fn sync_all() {
    Command::new("sync").status().ok();
}

fn skip(what: &str, why: &str) {
    eprintln!("skipped: {what}: {why}");
}

fn mount(kind: FsKind, mb: u64, what: &str) -> Option<TestFs> {
    match TestFs::create(kind, mb) {
        Ok(fs) => Some(fs),
        Err(why) => {
            skip(what, &why);
            None
        }
    }
}

fn branch_creation(c: &mut Criterion) {
    let t = tempfile::tempdir().unwrap();
    // Both bases exist (and are synced) before anything is measured.
    for files in [10usize, 100_000] {
        make_base(&t.path().join(format!("base{files}")), files);
    }
    sync_all();
    let mut g = c.benchmark_group("branch_create");
    for files in [10usize, 100_000] {
        let base = t.path().join(format!("base{files}"));
        for (label, b) in [
            ("hostfs", hostfs(&t.path().join(format!("store{files}")))),
            ("mock", load("mock", "")),
        ] {
            let s = store(b);
            let names = Rotation::new("b");
            g.bench_function(format!("{label}/base_{files}_files"), |bench| {
                bench.iter_batched(
                    || {
                        // Keep the graph at one branch.
                        let (prev, name) = names.next();
                        if let Some(p) = prev {
                            s.delete_branch(&p).unwrap();
                        }
                        name
                    },
                    |name| s.create_branch(&name, None, Some(&base)).unwrap(),
                    BatchSize::PerIteration,
                )
            });
        }
    }
    g.finish();
}

const CHANGED: usize = 10_000;

/// A fresh branch `name` over `base` with CHANGED new files in 100 dirs.
fn branch_with_changes(s: &Store, name: &str, base: &Path) {
    s.create_branch(name, None, Some(base)).unwrap();
    let t = s.branch(name);
    for d in 0..CHANGED / 100 {
        t.mkdir(format!("c{d:03}").as_str(), 0o755).unwrap();
    }
    for i in 0..CHANGED {
        t.write_file(format!("c{:03}/f{i}", i / 100).as_str(), b"changed\n")
            .unwrap();
    }
}

fn snapshot_of_changes(c: &mut Criterion) {
    let t = tempfile::tempdir().unwrap();
    let base = t.path().join("base");
    make_base(&base, 10);
    let mut g = c.benchmark_group("snapshot");
    ten_runs(&mut g);
    let mut stores = vec![
        ("hostfs", hostfs(&t.path().join("store"))),
        ("mock", load("mock", "")),
    ];
    // The btrfs plugin's RAM volume (root only): native subvolume snapshots.
    let opts = "ramdisk = { size_mb = 1024 }";
    match load_backstore(
        &PluginEntry {
            plugin: Some("btrfs".into()),
            path: None,
            options: toml::from_str(opts).unwrap(),
        },
        &SearchPath(vec![target_dir()]),
    ) {
        Ok(b) => stores.push(("btrfs_native_ram", b)),
        Err(e) => skip("snapshot (btrfs plugin RAM volume)", &e.to_string()),
    }
    for (label, b) in stores {
        let s = store(b);
        let names = Rotation::new("b");
        g.bench_function(
            format!("{label}/branch_with_{CHANGED}_changed_files"),
            |bench| {
                bench.iter_batched(
                    || {
                        let (prev, name) = names.next();
                        if let Some(p) = prev {
                            s.delete_branch(&p).unwrap();
                            s.delete_snapshot(&format!("{p}.1")).unwrap();
                        }
                        branch_with_changes(&s, &name, &base);
                        // Writeback of the setup's 10,000 files is not the
                        // snapshot's cost.
                        sync_all();
                        name
                    },
                    |name| s.create_snapshot(&name, None).unwrap(),
                    BatchSize::PerIteration,
                )
            },
        );
    }
    g.finish();
}

fn materialise(c: &mut Criterion) {
    let Some(fs) = mount(FsKind::Btrfs, 1024, "materialise (btrfs)") else {
        return;
    };
    let base = fs.path().join("base");
    make_base(&base, 10);
    let s = store(hostfs(&fs.path().join("store")));
    let mut g = c.benchmark_group("materialise");
    ten_runs(&mut g);
    let names = Rotation::new("b");
    // Two committed layers of 5,000 files each, compacted into one.
    g.bench_function(format!("compact_{CHANGED}_files_btrfs"), |bench| {
        bench.iter_batched(
            || {
                let (prev, name) = names.next();
                if let Some(p) = prev {
                    s.delete_branch(&p).unwrap();
                    for k in [2, 1] {
                        s.delete_snapshot(&format!("{p}.{k}")).unwrap();
                    }
                }
                s.create_branch(&name, None, Some(&base)).unwrap();
                let t = s.branch(&name);
                for half in 0..2 {
                    for d in 0..CHANGED / 200 {
                        t.mkdir(format!("h{half}d{d:02}").as_str(), 0o755).unwrap();
                        for f in 0..100 {
                            t.write_file(format!("h{half}d{d:02}/f{f}").as_str(), b"changed\n")
                                .unwrap();
                        }
                    }
                    s.create_snapshot(&name, None).unwrap();
                }
                name
            },
            |name| assert!(s.compact_branch(&name).unwrap()),
            BatchSize::PerIteration,
        )
    });
    // The same 10,000 files copied with cp -a --reflink=always.
    let src = fs.path().join("cp-src");
    for d in 0..CHANGED / 100 {
        let dd = src.join(format!("c{d:03}"));
        std::fs::create_dir_all(&dd).unwrap();
        for f in 0..100 {
            std::fs::write(dd.join(format!("f{f}")), b"changed\n").unwrap();
        }
    }
    let dsts = Rotation::new("cp-dst");
    g.bench_function(format!("cp_a_reflink_{CHANGED}_files_btrfs"), |bench| {
        bench.iter_batched(
            || {
                let (prev, next) = dsts.next();
                if let Some(p) = prev {
                    std::fs::remove_dir_all(fs.path().join(p)).unwrap();
                }
                fs.path().join(next)
            },
            |dst| {
                let ok = Command::new("cp")
                    .args(["-a", "--reflink=always"])
                    .arg(&src)
                    .arg(&dst)
                    .status()
                    .unwrap()
                    .success();
                assert!(ok);
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
    drop(s);
}

fn copy_up(c: &mut Criterion) {
    let mb: u64 = std::env::var("AGENTFS_BENCH_COPYUP_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let mut g = c.benchmark_group("copy_up");
    ten_runs(&mut g);
    for (label, kind) in [
        ("reflink_btrfs", FsKind::Btrfs),
        ("copy_ext4", FsKind::Ext4),
    ] {
        // Room for the base file, one copy, and slack.
        let Some(fs) = mount(kind, mb * 2 + 512, &format!("copy_up {label}")) else {
            continue;
        };
        let base = fs.path().join("base");
        std::fs::create_dir_all(&base).unwrap();
        {
            use std::io::Write;
            let mut f = std::fs::File::create(base.join("big.bin")).unwrap();
            let chunk: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
            for _ in 0..mb {
                f.write_all(&chunk).unwrap();
            }
            f.sync_all().unwrap();
        }
        let s = store(hostfs(&fs.path().join("store")));
        let names = Rotation::new("b");
        g.bench_function(format!("{label}/{mb}MiB"), |bench| {
            bench.iter_batched(
                || {
                    let (prev, name) = names.next();
                    if let Some(p) = prev {
                        s.delete_branch(&p).unwrap();
                    }
                    s.create_branch(&name, None, Some(&base)).unwrap();
                    name
                },
                // The first write to the base file copies it up.
                |name| s.branch(&name).write_at("big.bin", 0, b"x").unwrap(),
                BatchSize::PerIteration,
            )
        });
        let (reflinked, copied) = s.copy_stats();
        eprintln!("copy_up {label}: {reflinked} reflinked, {copied} copied");
        drop(s);
    }
    g.finish();
}

criterion_group!(
    benches,
    branch_creation,
    snapshot_of_changes,
    materialise,
    copy_up
);
criterion_main!(benches);
