//! Benchmarks of the btrfs backstore (run as root: they mount filesystems).
//!
//! - `reflink_vs_copy/reflink_1gb` vs `reflink_vs_copy/copy_1gb`: FICLONE
//!   of a 1 GiB file vs a read/write copy, both followed by fsync, on a
//!   loop-mounted btrfs image in the temp directory (size:
//!   `AGENTFS_BENCH_REFLINK_MB`, default 1024); `*_no_fsync`: the same
//!   without the fsync.
//! - `snapshot_create_10k_files/{native,reflink_materialise,cp_reflink}`:
//!   a layer of 10,000 files (100 directories of 100) frozen by a native
//!   read-only subvolume snapshot, by cloning every file into a new layer
//!   with FICLONE, and by `cp -a --reflink=always`, on a btrfs RAM volume
//!   (file count: `AGENTFS_BENCH_FILES`, default 10000).
//! - `ramdisk_mount_cycle`: create, format, attach, mount, unmount, detach
//!   and remove a 256 MiB RAM volume.
//!
//! Only the operation is timed; clean-up between iterations is not.

#[cfg(target_os = "linux")]
#[path = "../tests/common/mod.rs"]
mod common;

#[cfg(target_os = "linux")]
mod linux {
    use std::{
        fs,
        io::{Read, Write},
        path::Path,
        process::Command,
        time::{Duration, Instant},
    };

    use agentfs_backstore_btrfs::{
        ramdisk::{RamConfig, RamVolume},
        BtrfsBackstore,
    };
    use agentfs_plugin_api::backstore::BackstoreImpl;
    use agentfs_testfs::{FsKind, TestFs};
    use criterion::{Criterion, SamplingMode};

    use crate::common::write_pattern;

    fn env_u64(name: &str, default: u64) -> u64 {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }

    fn skip(what: &str, why: impl std::fmt::Display) {
        eprintln!("skipped: benchmark {what}: {why}");
    }

    /// A real data copy: read and write through a buffer (std::fs::copy
    /// would use copy_file_range, which btrfs turns into a reflink).
    fn copy_data(src: &Path, dst: &Path, durable: bool) {
        let mut s = fs::File::open(src).unwrap();
        let mut d = fs::File::create_new(dst).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            d.write_all(&buf[..n]).unwrap();
        }
        if durable {
            d.sync_all().unwrap();
        }
    }

    pub fn reflink_vs_copy(c: &mut Criterion) {
        let mb = env_u64("AGENTFS_BENCH_REFLINK_MB", 1024);
        let tfs = match TestFs::create(FsKind::Btrfs, 3 * mb + 1024) {
            Ok(t) => t,
            Err(e) => return skip("reflink_vs_copy", e),
        };
        let b = BtrfsBackstore::new(&format!(
            "root = {:?}",
            tfs.path().join("store").display().to_string()
        ))
        .unwrap();
        let l = b.create_layer("bench").unwrap();
        let src = l.join("src");
        write_pattern(&src, mb << 20);
        let dst = l.join("dst");
        let mut g = c.benchmark_group("reflink_vs_copy");
        g.sample_size(10)
            .sampling_mode(SamplingMode::Flat)
            .warm_up_time(Duration::from_millis(500));
        let mut timed = |name: &str, op: &dyn Fn()| {
            g.bench_function(name, |bench| {
                bench.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let t = Instant::now();
                        op();
                        total += t.elapsed();
                        fs::remove_file(&dst).unwrap();
                        // Commit, so that freed extents are free again and
                        // the next timed operation pays for none of this.
                        // SAFETY: sync has no preconditions.
                        unsafe { libc::sync() };
                    }
                    total
                })
            });
        };
        timed("reflink_1gb", &|| {
            b.reflink(&src, &dst).unwrap();
            fs::File::open(&dst).unwrap().sync_all().unwrap();
        });
        timed("copy_1gb", &|| copy_data(&src, &dst, true));
        // The same without fsync: the clone's pure metadata cost vs a copy
        // into the page cache (written back, untimed, before the next one).
        timed("reflink_1gb_no_fsync", &|| b.reflink(&src, &dst).unwrap());
        timed("copy_1gb_no_fsync", &|| copy_data(&src, &dst, false));
        g.finish();
        eprintln!("reflink_vs_copy: file size {mb} MiB on btrfs (loop image)");
    }

    /// Clones every file of `src` into `dst` with the backstore's reflink,
    /// making directories as it goes (what materialising a layer costs).
    fn reflink_tree(b: &BtrfsBackstore, src: &Path, dst: &Path) {
        for ent in fs::read_dir(src).unwrap() {
            let ent = ent.unwrap();
            let (s, d) = (ent.path(), dst.join(ent.file_name()));
            if ent.file_type().unwrap().is_dir() {
                fs::create_dir(&d).unwrap();
                reflink_tree(b, &s, &d);
            } else {
                b.reflink(&s, &d).unwrap();
            }
        }
    }

    pub fn snapshot_create_10k_files(c: &mut Criterion) {
        let files = env_u64("AGENTFS_BENCH_FILES", 10_000);
        let b = match BtrfsBackstore::new("ramdisk = { size_mb = 1024 }") {
            Ok(b) => b,
            Err(e) => return skip("snapshot_create_10k_files", e),
        };
        let src = b.create_layer("tree").unwrap();
        let per_dir = 100;
        for i in 0..files {
            let d = src.join(format!("d{:03}", i / per_dir));
            if i % per_dir == 0 {
                fs::create_dir(&d).unwrap();
            }
            fs::write(
                d.join(format!("f{i:05}")),
                format!("changed file {i}\n").repeat(16),
            )
            .unwrap();
        }
        // SAFETY: sync has no preconditions.
        unsafe { libc::sync() };
        let mut g = c.benchmark_group("snapshot_create_10k_files");
        g.sample_size(10)
            .sampling_mode(SamplingMode::Flat)
            .warm_up_time(Duration::from_millis(500));
        let mut seq = 0u64;
        let mut timed = |name: &str, op: &mut dyn FnMut(&str)| {
            g.bench_function(name, |bench| {
                bench.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        seq += 1;
                        let id = format!("copy-{seq}");
                        let t = Instant::now();
                        op(&id);
                        total += t.elapsed();
                        b.delete_layer(&id).unwrap();
                    }
                    total
                })
            });
        };
        timed("native", &mut |id| {
            b.snapshot_layer("tree", id, true).unwrap();
        });
        timed("reflink_materialise", &mut |id| {
            let dst = b.create_layer(id).unwrap();
            reflink_tree(&b, &src, &dst);
        });
        timed("cp_reflink", &mut |id| {
            let dst = b.create_layer(id).unwrap();
            let st = Command::new("cp")
                .args(["-a", "--reflink=always"])
                .arg(src.join("."))
                .arg(&dst)
                .status()
                .unwrap();
            assert!(st.success(), "cp -a --reflink=always failed");
        });
        g.finish();
        eprintln!("snapshot_create_10k_files: {files} files on a btrfs RAM volume");
    }

    pub fn ramdisk_mount_cycle(c: &mut Criterion) {
        let cfg = RamConfig::new(256);
        if let Err(e) = agentfs_backstore_btrfs::ramdisk::preflight(&cfg) {
            return skip("ramdisk_mount_cycle", e);
        }
        let mut g = c.benchmark_group("ramdisk");
        g.sample_size(10)
            .sampling_mode(SamplingMode::Flat)
            .warm_up_time(Duration::from_millis(500));
        g.bench_function("ramdisk_mount_cycle", |bench| {
            bench.iter(|| drop(RamVolume::create(&cfg).unwrap()))
        });
        g.finish();
    }
}

#[cfg(target_os = "linux")]
criterion::criterion_group!(
    benches,
    linux::reflink_vs_copy,
    linux::snapshot_create_10k_files,
    linux::ramdisk_mount_cycle
);
#[cfg(target_os = "linux")]
criterion::criterion_main!(benches);

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("skipped: the btrfs backstore benchmarks need Linux");
}
