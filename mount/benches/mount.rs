//! The mount against native and fuse-overlayfs, side by side in one run:
//! sequential write and read of a large file (AGENTFS_BENCH_MIB, default
//! 1024; read from the base, and a file the branch wrote), `git status` and `find . -type f -printf '%s %i\n'` on a
//! 10,000-file tree (warm), and creating then removing 2,000 small files.
//! The same base serves all three; each writes into its own upper layer.
//! Skips (with a note on stderr) without /dev/fuse or fuse-overlayfs.

// Elsewhere only the stub `bench` is built.
#![cfg_attr(not(target_os = "linux"), allow(unused_imports, dead_code))]

use std::{
    fs,
    io::{Read, Write},
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
};

use agentfs_core::{DirLayerStore, InitOptions, LockWait, Store};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const FILES: usize = 10_000;
const SMALL: usize = 2_000;

fn mib() -> u64 {
    std::env::var("AGENTFS_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
}

fn make_base(base: &Path, big: u64) {
    for d in 0..100 {
        let dir = base.join(format!("src/d{d:02}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..FILES / 100 {
            fs::write(dir.join(format!("f{f:03}.txt")), format!("{d} {f}\n")).unwrap();
        }
    }
    let mut f = fs::File::create(base.join("big.bin")).unwrap();
    let chunk = vec![0x5au8; 1 << 20];
    for _ in 0..big {
        f.write_all(&chunk).unwrap();
    }
    let git = |args: &[&str]| {
        let o = Command::new("git")
            // No background `gc --auto`: it would pack the objects while
            // the base is being copied (the `gc` below packs them first).
            .args(["-c", "user.email=b@example.com", "-c", "user.name=b"])
            .args(["-c", "gc.auto=0", "-c", "maintenance.auto=false"])
            .args(args)
            .current_dir(base)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .output()
            .unwrap();
        assert!(o.status.success(), "git {args:?}: {o:?}");
    };
    git(&["init", "-q"]);
    git(&["add", "src"]);
    git(&["commit", "-qm", "base"]);
    // Packed, as a clone is (and done before the base is copied).
    git(&["gc", "-q"]);
}

fn have(tool: &str) -> bool {
    Command::new(tool).arg("--version").output().is_ok()
}

/// A fuse-overlayfs mount, unmounted when dropped.
struct Overlay(PathBuf);

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = agentfs_mount::unmount(&self.0, false);
    }
}

fn write_big(dir: &Path, mib: u64) {
    let p = dir.join("out.bin");
    let mut f = fs::File::create(&p).unwrap();
    let chunk = vec![0xa5u8; 1 << 20];
    for _ in 0..mib {
        f.write_all(&chunk).unwrap();
    }
    f.sync_all().unwrap();
    drop(f);
    fs::remove_file(p).unwrap();
}

fn read_big(dir: &Path) -> u64 {
    read_file(&dir.join("big.bin"))
}

fn read_file(p: &Path) -> u64 {
    let mut f = fs::File::open(p).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0;
    loop {
        let k = f.read(&mut buf).unwrap();
        if k == 0 {
            return n;
        }
        n += k as u64;
    }
}

fn run(dir: &Path, args: &[&str]) {
    let o = Command::new(args[0])
        .args(&args[1..])
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .unwrap();
    assert!(o.status.success(), "{args:?}: {o:?}");
}

fn small_files(dir: &Path) {
    let d = dir.join("small");
    fs::create_dir(&d).unwrap();
    for i in 0..SMALL {
        fs::write(d.join(format!("s{i}")), b"x").unwrap();
    }
    for i in 0..SMALL {
        fs::remove_file(d.join(format!("s{i}"))).unwrap();
    }
    fs::remove_dir(&d).unwrap();
}

#[cfg(not(target_os = "linux"))]
fn bench(_c: &mut Criterion) {
    eprintln!("mount bench: skipped (FUSE mounts are Linux only)");
}

#[cfg(target_os = "linux")]
fn bench(c: &mut Criterion) {
    if fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .is_err()
        || !have("fuse-overlayfs")
        || !have("git")
    {
        eprintln!("mount bench: skipped (needs /dev/fuse, fuse-overlayfs and git)");
        return;
    }
    let mib = mib();
    let t = tempfile::tempdir().unwrap();
    let base = t.path().join("base");
    make_base(&base, mib);
    // Native: a copy of the base, so every row writes somewhere of its own.
    let native = t.path().join("native");
    run(t.path(), &["cp", "-a", "base", "native"]);

    let store = Store::init(
        DirLayerStore::new(t.path().join("store")).unwrap(),
        InitOptions {
            default_base: Some(base.clone()),
            ..InitOptions::default()
        },
        LockWait::Block,
    )
    .unwrap();
    store.create_branch("b", None, None).unwrap();
    let mp = t.path().join("agentfs");
    fs::create_dir(&mp).unwrap();
    let mut m = agentfs_mount::Mount::new(
        Arc::new(store),
        "b",
        &mp,
        &agentfs_mount::MountOptions::default(),
    )
    .unwrap();
    let mut unmounter = m.unmounter();
    let server = std::thread::spawn(move || m.run());

    let ov = t.path().join("overlay");
    for d in ["upper", "work", "overlay"] {
        fs::create_dir_all(t.path().join(d)).unwrap();
    }
    let o = Command::new("fuse-overlayfs")
        .arg("-o")
        .arg(format!(
            "lowerdir={},upperdir={},workdir={}",
            base.display(),
            t.path().join("upper").display(),
            t.path().join("work").display()
        ))
        .arg(&ov)
        .output()
        .unwrap();
    assert!(o.status.success(), "fuse-overlayfs: {o:?}");
    let _overlay = Overlay(ov.clone());

    let targets = [
        ("native", native),
        ("agentfs", mp.clone()),
        ("fuse-overlayfs", ov),
    ];
    // Warm every tree once (the rows below are warm-cache figures).
    for (_, d) in &targets {
        run(d, &["git", "status", "--porcelain"]);
        assert_eq!(read_big(d), mib << 20);
    }

    let mut g = c.benchmark_group(format!("seq_write_{mib}MiB"));
    g.sample_size(10).throughput(Throughput::Bytes(mib << 20));
    for (name, d) in &targets {
        g.bench_function(*name, |b| b.iter(|| write_big(d, mib)));
    }
    g.finish();

    let mut g = c.benchmark_group(format!("seq_read_{mib}MiB"));
    g.sample_size(10).throughput(Throughput::Bytes(mib << 20));
    for (name, d) in &targets {
        g.bench_function(*name, |b| b.iter(|| read_big(d)));
    }
    g.finish();

    // A file the branch wrote itself (the mount serves its opens with
    // passthrough when it can; base files' read-only opens stay cached).
    for (_, d) in &targets {
        let mut f = fs::File::create(d.join("own.bin")).unwrap();
        let chunk = vec![0xa5u8; 1 << 20];
        for _ in 0..mib {
            f.write_all(&chunk).unwrap();
        }
        f.sync_all().unwrap();
        assert_eq!(read_file(&d.join("own.bin")), mib << 20);
    }
    let mut g = c.benchmark_group(format!("seq_read_own_{mib}MiB"));
    g.sample_size(10).throughput(Throughput::Bytes(mib << 20));
    for (name, d) in &targets {
        g.bench_function(*name, |b| b.iter(|| read_file(&d.join("own.bin"))));
    }
    g.finish();
    for (_, d) in &targets {
        fs::remove_file(d.join("own.bin")).unwrap();
    }

    let mut g = c.benchmark_group("git_status_10k");
    g.sample_size(10);
    for (name, d) in &targets {
        g.bench_function(*name, |b| {
            b.iter(|| run(d, &["git", "status", "--porcelain"]))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("find_10k");
    g.sample_size(10);
    for (name, d) in &targets {
        g.bench_function(*name, |b| {
            b.iter(|| run(d, &["find", ".", "-type", "f", "-printf", "%s %i\\n"]))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("create_remove_2000");
    g.sample_size(10);
    for (name, d) in &targets {
        g.bench_function(*name, |b| b.iter(|| small_files(d)));
    }
    g.finish();

    drop(_overlay);
    let _ = unmounter.unmount();
    let _ = server.join();
}

criterion_group!(benches, bench);
criterion_main!(benches);
