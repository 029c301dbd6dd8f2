//! macOS benchmarks: `clonefile_<N>mb` against `copy_<N>mb`
//! of the same file on an APFS RAM disk, and `ramdisk_mount_cycle` (attach,
//! format, mount, detach). `AGENTFS_BENCH_MB` sets N (default 64). Off
//! macOS the benchmark binary only says it has nothing to measure.

#[cfg(target_os = "macos")]
#[path = "../tests/common/mod.rs"]
mod common;

#[cfg(target_os = "macos")]
mod mac {
    use std::{
        fs,
        path::Path,
        time::{Duration, Instant},
    };

    use super::common::{byte_copy, write_pattern, MIB};

    use agentfs_backstore_apfs::{options::RamdiskOptions, tools::Tools, RamDisk};
    use agentfs_plugin_support::reflink_file;
    use criterion::Criterion;

    fn size_mb() -> u64 {
        std::env::var("AGENTFS_BENCH_MB")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(64)
    }

    /// Times `op(src, fresh_dst)` only; each destination is removed untimed.
    fn timed(dir: &Path, iters: u64, op: impl Fn(&Path, &Path)) -> Duration {
        let src = dir.join("src");
        let mut total = Duration::ZERO;
        for i in 0..iters {
            let dst = dir.join(format!("dst-{i}"));
            let t = Instant::now();
            op(&src, &dst);
            total += t.elapsed();
            fs::remove_file(&dst).unwrap();
        }
        total
    }

    pub fn clone_vs_copy(c: &mut Criterion) {
        let mb = size_mb();
        let rd = RamDisk::create(
            &Tools::default(),
            RamdiskOptions {
                size_mb: 3 * mb + 64,
            },
        )
        .expect("an APFS RAM disk is needed for this benchmark");
        let dir = rd.mount_point().join("bench");
        fs::create_dir(&dir).unwrap();
        write_pattern(&dir.join("src"), mb * MIB);
        let mut g = c.benchmark_group("clonefile");
        g.sample_size(20);
        g.bench_function(format!("clonefile_{mb}mb"), |b| {
            b.iter_custom(|n| timed(&dir, n, |s, d| reflink_file(s, d).unwrap()))
        });
        g.bench_function(format!("copy_{mb}mb"), |b| {
            b.iter_custom(|n| timed(&dir, n, byte_copy))
        });
        g.finish();
        rd.destroy().unwrap();
    }

    pub fn ramdisk_mount_cycle(c: &mut Criterion) {
        let mut g = c.benchmark_group("ramdisk");
        g.sample_size(10);
        g.bench_function("ramdisk_mount_cycle", |b| {
            b.iter(|| {
                RamDisk::create(&Tools::default(), RamdiskOptions { size_mb: 64 })
                    .unwrap()
                    .destroy()
                    .unwrap()
            })
        });
        g.finish();
    }
}

#[cfg(target_os = "macos")]
criterion::criterion_group!(benches, mac::clone_vs_copy, mac::ramdisk_mount_cycle);
#[cfg(target_os = "macos")]
criterion::criterion_main!(benches);

#[cfg(not(target_os = "macos"))]
fn main() {
    eprintln!(
        "skipped: the apfs benchmarks measure clonefile(2) and APFS RAM disks, which need macOS"
    );
}
