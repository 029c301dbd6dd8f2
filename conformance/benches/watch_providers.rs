//! Watch-provider benchmarks: synthesis throughput per provider
//! through the plugin ABI (target >= 1M events/s), and a burst of 100,000
//! `Modified` on one file under one watcher, counting deliveries after
//! coalescing (target <= 2). `AGENTFS_BENCH_BURST` changes the burst size.
//!
//! The providers are the real plugin libraries, loaded like the daemon loads
//! them: build them first (`cargo build --release --workspace`).

use agentfs_conformance::{
    target_dir,
    watch_tables::{all_flags, append_event, core_event, watch_spec, Watched, SCENARIOS},
};
use agentfs_host::{
    config::PluginEntry,
    loader::{load_watch_provider, LoadedWatchProvider, SearchPath},
};
use agentfs_plugin_api::watch::{CoreEvent, NativeRecord, WatchApi, WatchSpec};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::time::Duration;

fn providers() -> Vec<(&'static str, WatchApi, LoadedWatchProvider)> {
    let search = SearchPath(vec![target_dir()]);
    [
        ("kqueue", WatchApi::KQUEUE),
        ("fsevents", WatchApi::FSEVENTS),
        ("inotify", WatchApi::INOTIFY),
    ]
    .into_iter()
    .map(|(name, api)| {
        let p = load_watch_provider(&PluginEntry::named(name), &search).unwrap_or_else(|e| {
            panic!("{e}\nbuild the plugins first: cargo build --release --workspace")
        });
        (name, api, p)
    })
    .collect()
}

fn register(p: &LoadedWatchProvider, existing: &[WatchSpec], spec: WatchSpec) -> WatchSpec {
    p.register(existing, spec).unwrap()
}

fn synth(p: &LoadedWatchProvider, ws: &[WatchSpec], e: &CoreEvent) -> Vec<NativeRecord> {
    p.synthesize(ws, e).unwrap()
}

const BATCH: u64 = 10_000;

fn synthesis(c: &mut Criterion) {
    let mut g = c.benchmark_group("synthesis");
    g.throughput(Throughput::Elements(BATCH));
    g.measurement_time(Duration::from_secs(3));
    g.sample_size(30);
    for (name, api, p) in providers() {
        // One watch on the file and one on its directory: every event matches.
        let d = register(&p, &[], watch_spec(Watched::Dir("d"), all_flags(api)));
        let mut f = watch_spec(Watched::File("d/f"), all_flags(api));
        f.watch_id = 2;
        f.handle = 8;
        let f = register(&p, std::slice::from_ref(&d), f);
        let ws = [d, f];
        let events: Vec<CoreEvent> = (0..BATCH).map(append_event).collect();
        g.bench_function(format!("{name}/modified"), |b| {
            b.iter(|| {
                let mut n = 0;
                for e in &events {
                    n += synth(&p, &ws, e).len();
                }
                n
            })
        });
        // The event table's mix: creates, removes, renames, attributes.
        let mix: Vec<CoreEvent> = (0..BATCH)
            .map(|i| core_event(&SCENARIOS[i as usize % SCENARIOS.len()].event, i))
            .collect();
        g.bench_function(format!("{name}/mixed"), |b| {
            b.iter(|| {
                let mut n = 0;
                for e in &mix {
                    n += synth(&p, &ws, e).len();
                }
                n
            })
        });
    }
    g.finish();
}

fn burst_size() -> u64 {
    std::env::var("AGENTFS_BENCH_BURST")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

fn burst(c: &mut Criterion) {
    let n = burst_size();
    let mut g = c.benchmark_group("burst_modified");
    g.throughput(Throughput::Elements(n));
    g.sample_size(10);
    for (name, api, p) in providers() {
        let w = register(&p, &[], watch_spec(Watched::File("d/f"), all_flags(api)));
        let ws = std::slice::from_ref(&w);
        let run = || {
            let mut queued: Vec<NativeRecord> = Vec::new();
            for i in 0..n {
                queued.extend(synth(&p, ws, &append_event(i)));
            }
            p.coalesce(queued).unwrap()
        };
        let out = run();
        let flags = out.iter().fold(0, |a, r| a | r.flags);
        println!(
            "burst_modified/{name}: {n} Modified -> {} deliveries after coalescing (flags {flags:#x})",
            out.len()
        );
        g.bench_function(format!("{name}/synthesize+coalesce"), |b| {
            b.iter_batched(|| (), |_| run(), BatchSize::PerIteration)
        });
    }
    g.finish();
}

criterion_group!(benches, synthesis, burst);
criterion_main!(benches);
