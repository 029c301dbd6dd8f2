//! The macOS hooks' per-event bookkeeping, measured on any platform: the
//! kevent hook ingesting doorbell records and draining them into an event
//! list, and the FSEvents decoder plus callback batch. The modules are
//! compiled in here from the shim's sources (the shim itself is only a
//! `cdylib`: linking it into a binary would interpose on the binary).

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};

#[path = "../src/paths.rs"]
#[allow(dead_code, unused_imports)]
mod paths;

#[path = "../src/kq.rs"]
#[allow(dead_code, unused_imports)]
mod kq;

#[path = "../src/fse.rs"]
#[allow(dead_code, unused_imports)]
mod fse;

const EVFILT_VNODE: i16 = -4;

fn kevent_bytes(fds: u64, per_fd: u64) -> Vec<u8> {
    let mut b = Vec::new();
    for i in 0..fds * per_fd {
        b.extend_from_slice(&(i % fds + 10).to_ne_bytes());
        b.extend_from_slice(&EVFILT_VNODE.to_ne_bytes());
        b.extend_from_slice(&0x20u16.to_ne_bytes());
        b.extend_from_slice(&(1u32 << (i % 3)).to_ne_bytes());
        b.extend_from_slice(&0i64.to_ne_bytes());
        b.extend_from_slice(&0u64.to_ne_bytes());
    }
    b
}

fn kqueue_merge(c: &mut Criterion) {
    let mut g = c.benchmark_group("kevent_hook");
    let fds = 64u64;
    let bytes = kevent_bytes(fds, 4);
    g.throughput(Throughput::Elements(fds * 4));
    g.bench_function("ingest_256_records_64_fds_then_drain_by_16", |b| {
        b.iter_batched(
            || {
                let mut k = kq::KqState::new(1);
                k.doorbell = Some(900);
                for fd in 10..10 + fds {
                    let add = kq::Kev {
                        ident: fd,
                        filter: EVFILT_VNODE,
                        flags: kq::EV_ADD | kq::EV_CLEAR,
                        fflags: kq::NOTE_ALL_VNODE,
                        data: 0,
                        udata: fd,
                    };
                    k.apply(&add, |_| true);
                    k.registered(fd, fd);
                }
                k
            },
            |mut k| {
                k.ingest(black_box(&bytes));
                let mut n = 0;
                loop {
                    let (out, _) = k.drain(16);
                    if out.is_empty() {
                        break;
                    }
                    n += out.len();
                }
                assert_eq!(n as u64, fds);
            },
            criterion::BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn fsevents_decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("fsevents_injection");
    let mut bytes = Vec::new();
    for i in 0..256u64 {
        let path = format!("/Users/me/project/src/module_{i}/file_{i}.rs");
        bytes.extend_from_slice(&7u64.to_ne_bytes());
        bytes.extend_from_slice(&i.to_ne_bytes());
        bytes.extend_from_slice(&0x0001_0100u32.to_ne_bytes());
        bytes.extend_from_slice(&(path.len() as u32).to_ne_bytes());
        bytes.extend_from_slice(path.as_bytes());
        let pad = (path.len() + 1).div_ceil(8) * 8 - path.len();
        bytes.resize(bytes.len() + pad, 0);
    }
    g.throughput(Throughput::Elements(256));
    g.bench_function("decode_256_events_and_build_the_batch", |b| {
        b.iter(|| {
            let mut d = fse::Decoder::default();
            let ev = d.push(black_box(&bytes)).unwrap();
            let batch = fse::Batch::of(7, &ev);
            assert_eq!(batch.len(), 256);
        })
    });
    g.finish();
}

criterion_group!(benches, kqueue_merge, fsevents_decode);
criterion_main!(benches);
