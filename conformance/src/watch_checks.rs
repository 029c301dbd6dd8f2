//! Checks for watch-provider plugins: loading, the API, the
//! table of exact native records per core event and kind of watch
//! ([`crate::watch_tables`]), registration rules, branch isolation,
//! coalescing of bursts, the native byte layouts, and robustness against
//! arbitrary input.

use agentfs_host::{
    config::PluginEntry,
    loader::{load_watch_provider, LoadedWatchProvider, SearchPath},
};
use agentfs_plugin_api::{
    watch::{CoreEvent, EventKind, NativeRecord, WatchApi, WatchSpec},
    ErrorCode,
};
use agentfs_vocab::native::{fsevents as fse, inotify as ino, kqueue as kq};
use proptest::{
    prelude::{any, prop_oneof, Just, Strategy},
    test_runner::{Config as PtConfig, TestCaseError, TestRunner},
};

use crate::{
    timed,
    watch_tables::{
        all_flags, append_event, core_event, watch_spec, Exp, Scenario, Watched, SCENARIOS,
    },
    Outcome, Report,
};

/// Number of `Modified` events in the burst check.
pub const BURST: u64 = 100_000;

struct Ctx {
    p: LoadedWatchProvider,
    api: WatchApi,
}

type CheckFn = fn(&Ctx) -> Result<(), String>;

struct Check {
    name: &'static str,
    only_for: Option<WatchApi>,
    run: CheckFn,
}

const CHECKS: &[Check] = &[
    Check {
        name: "watch.branch_isolation",
        only_for: None,
        run: branch_isolation,
    },
    Check {
        name: "watch.register.normalises_paths",
        only_for: None,
        run: register_normalises,
    },
    Check {
        name: "watch.register.refuses_dot_dot",
        only_for: None,
        run: register_refuses_dot_dot,
    },
    Check {
        name: "watch.coalesce.burst",
        only_for: None,
        run: coalesce_burst,
    },
    Check {
        name: "watch.coalesce.incremental",
        only_for: None,
        run: coalesce_incremental,
    },
    Check {
        name: "watch.encode.layout",
        only_for: None,
        run: encode_layout,
    },
    Check {
        name: "watch.arbitrary_input",
        only_for: None,
        run: arbitrary_input,
    },
    Check {
        name: "watch.inotify.onlydir",
        only_for: Some(WatchApi::INOTIFY),
        run: inotify_onlydir,
    },
    Check {
        name: "watch.inotify.mask_add",
        only_for: Some(WatchApi::INOTIFY),
        run: inotify_mask_add,
    },
    Check {
        name: "watch.inotify.oneshot",
        only_for: Some(WatchApi::INOTIFY),
        run: inotify_oneshot,
    },
    Check {
        name: "watch.fsevents.visible_root",
        only_for: Some(WatchApi::FSEVENTS),
        run: fsevents_visible_root,
    },
    Check {
        name: "watch.kqueue.fd_re_add",
        only_for: Some(WatchApi::KQUEUE),
        run: kqueue_re_add,
    },
];

/// Constructs the provider and runs the checks that apply.
pub(crate) fn run_all(report: &mut Report, entry: &PluginEntry, search: &SearchPath) {
    let p = match load_watch_provider(entry, search) {
        Ok(p) => {
            report.push("watch.construct", Outcome::Passed, Default::default());
            p
        }
        Err(e) => {
            report.push(
                "watch.construct",
                Outcome::Failed(e.to_string()),
                Default::default(),
            );
            return;
        }
    };
    let api = p.api();
    timed(report, "watch.api", || match &api {
        Ok(a) if [WatchApi::KQUEUE, WatchApi::FSEVENTS, WatchApi::INOTIFY].contains(a) => {
            Outcome::Passed
        }
        Ok(a) => Outcome::Failed(format!("unknown watch API {}", a.0)),
        Err(e) => Outcome::Failed(format!("api(): {e}")),
    });
    let Ok(api) = api else { return };
    if ![WatchApi::KQUEUE, WatchApi::FSEVENTS, WatchApi::INOTIFY].contains(&api) {
        return;
    }
    let ctx = Ctx { p, api };
    for s in SCENARIOS {
        let name = format!("watch.events.{}", s.name);
        timed(report, &name, || match scenario(&ctx, s) {
            Ok(()) => Outcome::Passed,
            Err(e) => Outcome::Failed(e),
        });
    }
    for c in CHECKS {
        if c.only_for.is_some_and(|a| a != api) {
            report.push(
                c.name,
                Outcome::Skipped(format!("only for {}", c.only_for.unwrap().name())),
                Default::default(),
            );
            continue;
        }
        timed(report, c.name, || match (c.run)(&ctx) {
            Ok(()) => Outcome::Passed,
            Err(e) => Outcome::Failed(e),
        });
    }
}

fn requested(api: WatchApi, s: &Scenario) -> u64 {
    match s.flags {
        None => all_flags(api),
        Some((k, f, i)) => u64::from(match api {
            WatchApi::KQUEUE => k,
            WatchApi::FSEVENTS => f,
            _ => i,
        }),
    }
}

fn register(c: &Ctx, existing: &[WatchSpec], spec: WatchSpec) -> Result<WatchSpec, String> {
    c.p.register(existing, spec.clone())
        .map_err(|e| format!("register({:?}): {e}", spec.path.as_str()))
}

fn synth(c: &Ctx, ws: &[WatchSpec], e: &CoreEvent) -> Result<Vec<NativeRecord>, String> {
    c.p.synthesize(ws, e)
        .map_err(|err| format!("synthesize({:?} {:?}): {err}", e.kind, e.path.as_str()))
}

fn show(recs: &[NativeRecord]) -> String {
    let parts: Vec<String> = recs
        .iter()
        .map(|r| {
            format!(
                "{{flags {:#x}, name {:?}, cookie {}, retire {}}}",
                r.flags,
                r.name.as_str(),
                r.cookie,
                r.retire_watch
            )
        })
        .collect();
    format!("[{}]", parts.join(", "))
}

/// Compares records with a table row, exactly.
fn compare(
    spec: &WatchSpec,
    event: &CoreEvent,
    got: &[NativeRecord],
    want: &[Exp],
) -> Result<(), String> {
    let fail = |why: String| {
        Err(format!(
            "{why}; got {}, want {want:?}",
            show(got),
            want = want
                .iter()
                .map(|e| (format!("{:#x}", e.flags), e.name, e.cookie, e.retire))
                .collect::<Vec<_>>()
        ))
    };
    if got.len() != want.len() {
        return fail(format!("{} records instead of {}", got.len(), want.len()));
    }
    let cookie = got.iter().find(|r| r.cookie != 0).map(|r| r.cookie);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        if g.flags != u64::from(w.flags) || g.name.as_str() != w.name || g.retire_watch != w.retire
        {
            return fail(format!("record {i} differs"));
        }
        if g.watch_id != spec.watch_id || g.handle != spec.handle || g.seq != event.seq {
            return fail(format!(
                "record {i} is addressed to watch {} handle {} seq {} instead of {} {} {}",
                g.watch_id, g.handle, g.seq, spec.watch_id, spec.handle, event.seq
            ));
        }
        match (w.cookie, g.cookie) {
            (false, 0) => {}
            (true, c) if c != 0 && Some(c) == cookie => {}
            _ => return fail(format!("record {i} has the wrong rename cookie")),
        }
    }
    Ok(())
}

fn scenario(c: &Ctx, s: &Scenario) -> Result<(), String> {
    let want = s
        .expected(c.api)
        .ok_or_else(|| "no table for this API".to_string())?;
    let spec = register(c, &[], watch_spec(s.watched, requested(c.api, s)))?;
    let event = core_event(&s.event, 41);
    let got = synth(c, std::slice::from_ref(&spec), &event)?;
    compare(&spec, &event, &got, want)
}

fn branch_isolation(c: &Ctx) -> Result<(), String> {
    for s in SCENARIOS {
        let spec = register(c, &[], watch_spec(s.watched, all_flags(c.api)))?;
        let mut event = core_event(&s.event, 1);
        event.branch = "another-branch".into();
        let got = synth(c, std::slice::from_ref(&spec), &event)?;
        if !got.is_empty() {
            return Err(format!(
                "{}: a watch in branch b got records for an event in another branch: {}",
                s.name,
                show(&got)
            ));
        }
    }
    Ok(())
}

fn register_normalises(c: &Ctx) -> Result<(), String> {
    let spec = register(
        c,
        &[],
        watch_spec(Watched::Dir("/d//sub/"), all_flags(c.api)),
    )?;
    if spec.path.as_str() != "d/sub" {
        return Err(format!(
            "path /d//sub/ registered as {:?}",
            spec.path.as_str()
        ));
    }
    let event = core_event(
        &crate::watch_tables::Ev {
            kind: EventKind::CREATED,
            path: "d/sub/x",
            to: "",
            is_dir: false,
            sizes: (u64::MAX, u64::MAX),
        },
        1,
    );
    if synth(c, &[spec], &event)?.is_empty() {
        return Err("the normalised watch does not match its children".into());
    }
    Ok(())
}

fn register_refuses_dot_dot(c: &Ctx) -> Result<(), String> {
    match c.p.register(
        &[],
        watch_spec(Watched::Dir("d/../../etc"), all_flags(c.api)),
    ) {
        Err(e) if e.code == ErrorCode::INVALID_ARGUMENT => Ok(()),
        Err(e) => Err(format!("expected invalid-argument, got {e}")),
        Ok(s) => Err(format!(
            "accepted a path with '..' as {:?}",
            s.path.as_str()
        )),
    }
}

/// The records of `n` appends to one watched file, each synthesized alone.
fn burst(c: &Ctx, spec: &WatchSpec, n: u64) -> Result<Vec<NativeRecord>, String> {
    let mut all = Vec::new();
    for i in 0..n {
        let e = append_event(i);
        all.extend(synth(c, std::slice::from_ref(spec), &e)?);
    }
    Ok(all)
}

fn coalesce_burst(c: &Ctx) -> Result<(), String> {
    let spec = register(c, &[], watch_spec(Watched::File("d/f"), all_flags(c.api)))?;
    let all = burst(c, &spec, BURST)?;
    if all.len() as u64 != BURST {
        return Err(format!(
            "{BURST} Modified gave {} records, expected one each",
            all.len()
        ));
    }
    let union = all.iter().fold(0, |a, r| a | r.flags);
    let out = c.p.coalesce(all).map_err(|e| format!("coalesce: {e}"))?;
    if out.is_empty() || out.len() > 2 {
        return Err(format!(
            "{BURST} Modified on one file coalesced to {} deliveries (want 1 or 2)",
            out.len()
        ));
    }
    let flags = out.iter().fold(0, |a, r| a | r.flags);
    if flags != union {
        return Err(format!(
            "coalescing changed the flag set: {flags:#x}, the burst had {union:#x}"
        ));
    }
    if out.last().map(|r| r.seq) != Some(BURST) {
        return Err("the coalesced record does not carry the latest seq".into());
    }
    Ok(())
}

fn coalesce_incremental(c: &Ctx) -> Result<(), String> {
    // Coalescing what is queued, then what arrives, gives what coalescing
    // everything at once gives: the watch service may drain at any moment.
    let d = register(c, &[], watch_spec(Watched::Dir("d"), all_flags(c.api)))?;
    let mut f = watch_spec(Watched::File("d/f"), all_flags(c.api));
    f.watch_id = 2;
    f.handle = 8;
    let f = register(c, std::slice::from_ref(&d), f)?;
    let ws = [d, f];
    let mut recs = Vec::new();
    for (i, s) in SCENARIOS
        .iter()
        .filter(|s| !matches!(s.event.kind, EventKind::REMOVED | EventKind::RENAMED))
        .enumerate()
    {
        recs.extend(synth(c, &ws, &core_event(&s.event, i as u64 + 1))?);
    }
    recs.extend(burst(c, &ws[1], 50)?);
    let whole = c.p.coalesce(recs.clone()).map_err(|e| e.to_string())?;
    for cut in [1, recs.len() / 3, recs.len() - 1] {
        let (a, b) = recs.split_at(cut);
        let mut first = c.p.coalesce(a.to_vec()).map_err(|e| e.to_string())?;
        first.extend_from_slice(b);
        let twice = c.p.coalesce(first).map_err(|e| e.to_string())?;
        if twice.len() < whole.len() {
            return Err(format!(
                "coalescing in two steps (cut at {cut}) gave fewer records ({}) than at once ({})",
                twice.len(),
                whole.len()
            ));
        }
    }
    let again = c.p.coalesce(whole.clone()).map_err(|e| e.to_string())?;
    if again != whole {
        return Err("coalescing is not idempotent".into());
    }
    Ok(())
}

/// Checks the encoded bytes of `recs` against the API's native layout.
fn check_layout(api: WatchApi, recs: &[NativeRecord], bytes: &[u8]) -> Result<(), String> {
    let u32_at = |b: &[u8], o: usize| u32::from_ne_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let u64_at = |b: &[u8], o: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[o..o + 8]);
        u64::from_ne_bytes(a)
    };
    let mut off = 0usize;
    for r in recs {
        let skipped = if api == WatchApi::FSEVENTS {
            r.retire_watch && r.flags == 0
        } else {
            r.flags == 0
        };
        if skipped {
            continue;
        }
        let rest = &bytes[off.min(bytes.len())..];
        let err = |w: &str| Err(format!("record {}: {w}", show(std::slice::from_ref(r))));
        match api {
            WatchApi::KQUEUE => {
                if rest.len() < kq::KEVENT_SIZE {
                    return err("truncated struct kevent");
                }
                let filter = i16::from_ne_bytes([rest[8], rest[9]]);
                if u64_at(rest, 0) != r.handle
                    || filter != kq::EVFILT_VNODE
                    || u64::from(u32_at(rest, 12)) != r.flags
                {
                    return err("ident/filter/fflags not at offsets 0/8/12");
                }
                off += kq::KEVENT_SIZE;
            }
            WatchApi::INOTIFY => {
                if rest.len() < ino::EVENT_HEADER_SIZE {
                    return err("truncated struct inotify_event");
                }
                let len = u32_at(rest, 12) as usize;
                let name = r.name.as_bytes();
                let want_len = if name.is_empty() {
                    0
                } else {
                    (name.len() + 1).div_ceil(16) * 16
                };
                if u32_at(rest, 0) as u64 != r.handle & 0xffff_ffff
                    || u64::from(u32_at(rest, 4)) != r.flags
                    || u32_at(rest, 8) != r.cookie
                    || len != want_len
                    || rest.len() < 16 + len
                    || &rest[16..16 + name.len()] != name
                    || rest[16 + name.len()..16 + len].iter().any(|&b| b != 0)
                {
                    return err("wd/mask/cookie/len/name differ from the kernel layout");
                }
                off += 16 + len;
            }
            _ => {
                if rest.len() < 24 {
                    return err("truncated FSEvents record");
                }
                let len = u32_at(rest, 20) as usize;
                let total = 24 + (len + 1).div_ceil(8) * 8;
                if u64_at(rest, 0) != r.handle
                    || u64_at(rest, 8) != r.seq
                    || u64::from(u32_at(rest, 16)) != r.flags
                    || len != r.name.len()
                    || rest.len() < total
                    || &rest[24..24 + len] != r.name.as_bytes()
                    || rest[24 + len] != 0
                {
                    return err("stream/id/flags/path differ from the documented layout");
                }
                off += total;
            }
        }
    }
    if off != bytes.len() {
        return Err(format!("{} bytes encoded, {off} expected", bytes.len()));
    }
    Ok(())
}

fn encode_layout(c: &Ctx) -> Result<(), String> {
    for s in SCENARIOS {
        let spec = register(c, &[], watch_spec(s.watched, requested(c.api, s)))?;
        let recs = synth(c, std::slice::from_ref(&spec), &core_event(&s.event, 99))?;
        let bytes = c.p.encode(&recs).map_err(|e| format!("encode: {e}"))?;
        check_layout(c.api, &recs, &bytes).map_err(|e| format!("{}: {e}", s.name))?;
    }
    Ok(())
}

fn arbitrary_input(c: &Ctx) -> Result<(), String> {
    let mut runner = TestRunner::new(PtConfig {
        cases: 256,
        failure_persistence: None,
        ..PtConfig::default()
    });
    let path = prop_oneof![
        Just(String::new()),
        Just("d".to_string()),
        Just("d/f".to_string()),
        Just("../x".to_string()),
        "[a-z./\u{0}]{0,12}",
    ];
    let kind = (0u32..10).prop_map(EventKind);
    let strategy = (
        path.clone(),
        path.clone(),
        path,
        kind,
        any::<bool>(),
        any::<bool>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
    );
    runner
        .run(&strategy, |(wp, ep, to, kind, wdir, edir, flags, a, b)| {
            let fail = |m: String| TestCaseError::fail(m);
            let mut spec = watch_spec(Watched::File("x"), flags);
            spec.path = wp.into();
            spec.is_dir = wdir;
            let specs = match c.p.register(&[], spec) {
                Ok(s) => vec![s],
                Err(e) if e.code == ErrorCode::PANICKED => return Err(fail(e.to_string())),
                Err(_) => Vec::new(),
            };
            let event = CoreEvent {
                seq: a,
                pid: (b & 0xffff) as u32,
                kind,
                branch: "b".into(),
                path: ep.into(),
                to: to.into(),
                is_dir: edir,
                size_before: a,
                size_after: b,
            };
            match c.p.synthesize(&specs, &event) {
                Ok(recs) => {
                    let recs = c.p.coalesce(recs).map_err(|e| fail(e.to_string()))?;
                    c.p.encode(&recs).map_err(|e| fail(e.to_string()))?;
                    Ok(())
                }
                Err(e) if e.code == ErrorCode::PANICKED => Err(fail(e.to_string())),
                Err(_) => Ok(()),
            }
        })
        .map_err(|e| e.to_string())
}

fn inotify_onlydir(c: &Ctx) -> Result<(), String> {
    let spec = watch_spec(
        Watched::File("d/f"),
        u64::from(ino::IN_MODIFY | ino::IN_ONLYDIR),
    );
    match c.p.register(&[], spec) {
        Err(e) if e.code == ErrorCode::NOT_DIRECTORY => {}
        other => {
            return Err(format!(
                "IN_ONLYDIR on a file: expected not-directory, got {other:?}"
            ))
        }
    }
    let spec = watch_spec(
        Watched::Dir("d"),
        u64::from(ino::IN_CREATE | ino::IN_ONLYDIR),
    );
    register(c, &[], spec).map(drop)
}

fn inotify_mask_add(c: &Ctx) -> Result<(), String> {
    let old = register(
        c,
        &[],
        watch_spec(Watched::Dir("d"), u64::from(ino::IN_CREATE)),
    )?;
    let mut add = watch_spec(
        Watched::Dir("d"),
        u64::from(ino::IN_DELETE | ino::IN_MASK_ADD),
    );
    add.watch_id = 2;
    add.handle = 99;
    let merged = register(c, std::slice::from_ref(&old), add)?;
    if merged.watch_id != old.watch_id || merged.handle != old.handle {
        return Err("IN_MASK_ADD on a watched path made a new watch instead of the same wd".into());
    }
    if merged.flags as u32 & ino::IN_ALL_EVENTS != ino::IN_CREATE | ino::IN_DELETE {
        return Err(format!("IN_MASK_ADD mask {:#x}", merged.flags));
    }
    let mut replace = watch_spec(Watched::Dir("d"), u64::from(ino::IN_DELETE));
    replace.watch_id = 3;
    let replaced = register(c, std::slice::from_ref(&old), replace)?;
    if replaced.watch_id != old.watch_id
        || replaced.flags as u32 & ino::IN_ALL_EVENTS != ino::IN_DELETE
    {
        return Err("re-adding without IN_MASK_ADD must replace the mask of the same watch".into());
    }
    Ok(())
}

fn inotify_oneshot(c: &Ctx) -> Result<(), String> {
    let spec = register(
        c,
        &[],
        watch_spec(
            Watched::Dir("d"),
            u64::from(ino::IN_CREATE | ino::IN_ONESHOT),
        ),
    )?;
    let e = core_event(&SCENARIOS[0].event, 5);
    let got = synth(c, std::slice::from_ref(&spec), &e)?;
    let flags: Vec<u64> = got.iter().map(|r| r.flags).collect();
    if flags != [u64::from(ino::IN_CREATE), u64::from(ino::IN_IGNORED)]
        || got[0].retire_watch
        || !got[1].retire_watch
    {
        return Err(format!(
            "IN_ONESHOT: want IN_CREATE then IN_IGNORED retiring the watch, got {}",
            show(&got)
        ));
    }
    Ok(())
}

fn fsevents_visible_root(c: &Ctx) -> Result<(), String> {
    let mut spec = watch_spec(Watched::Dir("src"), u64::from(fse::CREATE_FLAG_FILE_EVENTS));
    spec.visible_root = "/Users/me/project/".into();
    let spec = register(c, &[], spec)?;
    let e = core_event(
        &crate::watch_tables::Ev {
            kind: EventKind::CREATED,
            path: "src/main.rs",
            to: "",
            is_dir: false,
            sizes: (0, 0),
        },
        3,
    );
    let got = synth(c, std::slice::from_ref(&spec), &e)?;
    if got.len() != 1 || got[0].name.as_str() != "/Users/me/project/src/main.rs" {
        return Err(format!(
            "want /Users/me/project/src/main.rs, got {}",
            show(&got)
        ));
    }
    let mut bad = spec.clone();
    bad.visible_root = "relative/root".into();
    match c.p.register(&[], bad) {
        Err(e) if e.code == ErrorCode::INVALID_ARGUMENT => Ok(()),
        other => Err(format!(
            "a relative visible_root was not refused: {other:?}"
        )),
    }
}

fn kqueue_re_add(c: &Ctx) -> Result<(), String> {
    let old = register(
        c,
        &[],
        watch_spec(Watched::File("d/f"), u64::from(kq::NOTE_WRITE)),
    )?;
    let mut again = watch_spec(Watched::File("d/f"), u64::from(kq::NOTE_DELETE));
    again.watch_id = 2;
    let new = register(c, std::slice::from_ref(&old), again)?;
    if new.watch_id != old.watch_id || new.flags != u64::from(kq::NOTE_DELETE) {
        return Err(format!(
            "EV_ADD on a registered fd must update that watch's fflags; got watch {} flags {:#x}",
            new.watch_id, new.flags
        ));
    }
    Ok(())
}
