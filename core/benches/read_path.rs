//! The engine's read path in process against the native calls, in the same
//! run: `lstat`, open-for-read and a 1,000-entry `readdir` of an unchanged
//! base file, through a branch whose chain has 3 layers (active, one
//! committed, base). Targets: stat and open <= 2x native, readdir <= 3x.

use std::{fs, os::unix::fs::MetadataExt, path::Path};

use agentfs_core::{DirLayerStore, InitOptions, LockWait, OpenOptions, Store};
use criterion::{criterion_group, criterion_main, Criterion};

fn setup(t: &Path) -> Store {
    let base = t.join("base");
    fs::create_dir_all(base.join("src/big")).unwrap();
    fs::write(base.join("src/lib.rs"), b"pub fn f() {}\n").unwrap();
    for i in 0..1000 {
        fs::write(base.join(format!("src/big/f{i:04}")), b"x").unwrap();
    }
    let s = Store::init(
        DirLayerStore::new(t.join("store")).unwrap(),
        InitOptions {
            default_base: Some(base),
            ..InitOptions::default()
        },
        LockWait::Block,
    )
    .unwrap();
    s.create_branch("b", None, None).unwrap();
    // A committed layer between the active layer and the base.
    s.branch("b").write_file("other.txt", b"o").unwrap();
    s.create_snapshot("b", Some("s")).unwrap();
    s.branch("b").write_file("top.txt", b"t").unwrap();
    s
}

fn read_path(c: &mut Criterion) {
    let t = tempfile::tempdir().unwrap();
    let s = setup(t.path());
    let base = t.path().join("base");
    let tree = s.branch("b");
    assert_eq!(tree.lstat("src/lib.rs").unwrap().size, 14);

    let mut g = c.benchmark_group("read_path");
    let native_file = base.join("src/lib.rs");
    g.bench_function("native/lstat", |b| {
        b.iter(|| fs::symlink_metadata(&native_file).unwrap().size())
    });
    g.bench_function("core/lstat_3_layers", |b| {
        b.iter(|| tree.lstat("src/lib.rs").unwrap().size)
    });
    g.bench_function("native/open_read", |b| {
        b.iter(|| fs::File::open(&native_file).unwrap())
    });
    let ro = OpenOptions::default();
    g.bench_function("core/open_read_3_layers", |b| {
        b.iter(|| tree.open("src/lib.rs", &ro).unwrap())
    });
    let native_dir = base.join("src/big");
    g.bench_function("native/readdir_1000", |b| {
        b.iter(|| fs::read_dir(&native_dir).unwrap().count())
    });
    g.bench_function("core/readdir_1000_3_layers", |b| {
        b.iter(|| tree.read_dir("src/big").unwrap().len())
    });
    g.finish();
}

criterion_group!(
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(300))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = read_path
);
criterion_main!(benches);
