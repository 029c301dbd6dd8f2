//! Cost of a plugin call across the ABI versus a direct call into the same
//! code linked statically (within 2x of a direct call).
//! Needs `cargo build --workspace` first (loads the built mock plugin).

use std::{hint::black_box, path::PathBuf};

use agentfs_backstore_mock::MockBackstore;
use agentfs_host::{config::PluginEntry, loader::load_backstore, loader::SearchPath};
use agentfs_plugin_api::backstore::BackstoreImpl;
use criterion::{criterion_group, criterion_main, Criterion};

fn target_dir() -> PathBuf {
    // benches run from target/<profile>/deps
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    let release = deps.parent().unwrap().to_path_buf();
    let debug = release.parent().unwrap().join("debug");
    if release.join("libagentfs_backstore_mock.so").exists()
        || release.join("libagentfs_backstore_mock.dylib").exists()
    {
        release
    } else {
        debug
    }
}

fn bench(c: &mut Criterion) {
    let direct = MockBackstore::new("").unwrap();
    direct.create_layer("l").unwrap();
    let abi = load_backstore(&PluginEntry::named("mock"), &SearchPath(vec![target_dir()]))
        .expect("mock plugin not built: run `cargo build --workspace --release` first");
    abi.create_layer("l").unwrap();

    let mut g = c.benchmark_group("abi_call");
    g.bench_function("capabilities/direct", |b| {
        b.iter(|| black_box(direct.capabilities()))
    });
    g.bench_function("capabilities/abi", |b| {
        b.iter(|| black_box(abi.capabilities()))
    });
    g.bench_function("layer_path/direct", |b| {
        b.iter(|| black_box(direct.layer_path(black_box("l")).unwrap()))
    });
    g.bench_function("layer_path/abi", |b| {
        b.iter(|| black_box(abi.layer_path(black_box("l")).unwrap()))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
