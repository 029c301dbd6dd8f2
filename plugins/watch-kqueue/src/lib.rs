//! `kqueue`: translates core events into kqueue `EVFILT_VNODE` records with
//! the semantics of the macOS kernel. A pure
//! translator: it runs and is tested anywhere; delivering the records into a
//! process's `kevent()` is the daemon's and the shim's job on macOS.
//!
//! A watch is one `(kqueue, fd)` registration: `instance` is the kqueue id,
//! `handle` the fd (the kevent `ident`), `flags` the requested `NOTE_*`
//! fflags, `path` the branch-relative path the fd refers to.
//!
//! | core event | watch on the entry itself | watch on its parent directory |
//! |---|---|---|
//! | Created | — | `NOTE_WRITE` (+`NOTE_LINK` for a directory) |
//! | Removed | `NOTE_DELETE`, watch retired | `NOTE_WRITE` (+`NOTE_LINK` for a directory) |
//! | Modified | `NOTE_WRITE` (+`NOTE_EXTEND` when the size grew) | — |
//! | AttributesChanged | `NOTE_ATTRIB` | — |
//! | Renamed from | `NOTE_RENAME` (the fd follows the file) | `NOTE_WRITE` (+`NOTE_LINK` for a directory moving between parents) |
//! | Renamed to (replaced) | `NOTE_DELETE`, watch retired | `NOTE_WRITE` (same rule) |
//!
//! Flags are filtered by the registration's fflags. Within one event, records
//! about the entry itself come before records about parent directories.
//! Coalescing ORs the flags of every record for one fd into its first
//! position, as the kernel's knote does.

use std::collections::HashMap;

use agentfs_plugin_api::{
    export_watch_provider, parse_options,
    watch::{
        CoreEvent, EventKind, NativeRecord, WatchApi, WatchProviderImpl, WatchProviderPluginDef,
        WatchSpec,
    },
    PluginMeta, PluginResult,
};
use agentfs_plugin_support::{
    native::kqueue::{
        EVFILT_VNODE, EV_CLEAR, KEVENT_SIZE, NOTE_ALL_VNODE, NOTE_ATTRIB, NOTE_DELETE, NOTE_EXTEND,
        NOTE_LINK, NOTE_RENAME, NOTE_WRITE,
    },
    watch_paths::{self, parent, relation, Relation},
};

/// Options of the kqueue provider (none yet; unknown keys are refused).
#[derive(serde::Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct KqueueOptions {}

/// The kqueue provider instance.
#[derive(Debug, Default)]
pub struct KqueueProvider;

/// `struct kevent` as macOS lays it out on 64-bit targets (x86_64, arm64).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kevent {
    /// The fd the event is about.
    pub ident: u64,
    /// Filter (`EVFILT_VNODE`).
    pub filter: i16,
    /// kevent flags (`EV_CLEAR`; the shim substitutes the app's own).
    pub flags: u16,
    /// `NOTE_*` fflags.
    pub fflags: u32,
    /// Filter data (0 for vnode events).
    pub data: i64,
    /// User data (0; the shim substitutes the app's registration's udata).
    pub udata: u64,
}

impl Kevent {
    /// The 32 native-endian bytes of this record.
    pub fn to_bytes(&self) -> [u8; KEVENT_SIZE] {
        let mut b = [0u8; KEVENT_SIZE];
        b[0..8].copy_from_slice(&self.ident.to_ne_bytes());
        b[8..10].copy_from_slice(&self.filter.to_ne_bytes());
        b[10..12].copy_from_slice(&self.flags.to_ne_bytes());
        b[12..16].copy_from_slice(&self.fflags.to_ne_bytes());
        b[16..24].copy_from_slice(&self.data.to_ne_bytes());
        b[24..32].copy_from_slice(&self.udata.to_ne_bytes());
        b
    }

    /// Parses records from bytes produced by [`Kevent::to_bytes`]; `None`
    /// when the length is not a multiple of the record size.
    pub fn parse_all(bytes: &[u8]) -> Option<Vec<Kevent>> {
        if !bytes.len().is_multiple_of(KEVENT_SIZE) {
            return None;
        }
        let u64_at = |c: &[u8], o: usize| u64::from_ne_bytes(c[o..o + 8].try_into().unwrap());
        Some(
            bytes
                .chunks_exact(KEVENT_SIZE)
                .map(|c| Kevent {
                    ident: u64_at(c, 0),
                    filter: i16::from_ne_bytes([c[8], c[9]]),
                    flags: u16::from_ne_bytes([c[10], c[11]]),
                    fflags: u32::from_ne_bytes(c[12..16].try_into().unwrap()),
                    data: u64_at(c, 16) as i64,
                    udata: u64_at(c, 24),
                })
                .collect(),
        )
    }
}

/// What one event means for one watch: (phase, fflags, retire). Phase 0 is
/// the entry itself, 1 a replaced destination, 2 parent directories.
fn effect(w: &WatchSpec, ev: &CoreEvent) -> Option<(u8, u32, bool)> {
    let path = ev.path.as_str();
    let link_if_dir = if ev.is_dir { NOTE_LINK } else { 0 };
    match ev.kind {
        EventKind::CREATED => match relation(w, path) {
            Relation::Child(_) => Some((2, NOTE_WRITE | link_if_dir, false)),
            _ => None,
        },
        EventKind::REMOVED => match relation(w, path) {
            Relation::Itself => Some((0, NOTE_DELETE, true)),
            Relation::Child(_) => Some((2, NOTE_WRITE | link_if_dir, false)),
            Relation::Unrelated => None,
        },
        EventKind::MODIFIED => match relation(w, path) {
            Relation::Itself if !w.is_dir => {
                let grew = ev.size_before != u64::MAX
                    && ev.size_after != u64::MAX
                    && ev.size_after > ev.size_before;
                Some((0, NOTE_WRITE | if grew { NOTE_EXTEND } else { 0 }, false))
            }
            _ => None,
        },
        EventKind::ATTRIBUTES_CHANGED => match relation(w, path) {
            Relation::Itself => Some((0, NOTE_ATTRIB, false)),
            _ => None,
        },
        EventKind::RENAMED => {
            let to = ev.to.as_str();
            if path == to {
                return None;
            }
            match (relation(w, path), relation(w, to)) {
                (Relation::Itself, _) => Some((0, NOTE_RENAME, false)),
                (_, Relation::Itself) => Some((1, NOTE_DELETE, true)),
                (Relation::Child(_), _) | (_, Relation::Child(_)) => {
                    let moved_dir = ev.is_dir && parent(path) != parent(to);
                    Some((2, NOTE_WRITE | if moved_dir { NOTE_LINK } else { 0 }, false))
                }
                _ => None,
            }
        }
        _ => None,
    }
}

impl WatchProviderImpl for KqueueProvider {
    fn api(&self) -> WatchApi {
        WatchApi::KQUEUE
    }

    fn register(&self, existing: &[WatchSpec], mut spec: WatchSpec) -> PluginResult<WatchSpec> {
        spec.path = watch_paths::normalize(&spec.path)?.into();
        // Unknown NOTE_* bits are ignored, as the kernel does for vnodes.
        spec.flags &= u64::from(NOTE_ALL_VNODE);
        // EV_ADD on an fd already registered on this kqueue updates it.
        if let Some(old) = existing
            .iter()
            .find(|w| w.pid == spec.pid && w.instance == spec.instance && w.handle == spec.handle)
        {
            spec.watch_id = old.watch_id;
        }
        Ok(spec)
    }

    fn synthesize(&self, watches: &[WatchSpec], ev: &CoreEvent) -> PluginResult<Vec<NativeRecord>> {
        let mut hits: Vec<(u8, NativeRecord)> = Vec::new();
        for w in watches.iter().filter(|w| watch_paths::same_branch(w, ev)) {
            if let Some((phase, flags, retire)) = effect(w, ev) {
                let flags = flags & w.flags as u32;
                if flags != 0 || retire {
                    let mut r = watch_paths::record(w, ev, u64::from(flags));
                    r.retire_watch = retire;
                    hits.push((phase, r));
                }
            }
        }
        hits.sort_by_key(|(phase, _)| *phase);
        Ok(hits.into_iter().map(|(_, r)| r).collect())
    }

    fn coalesce(&self, records: Vec<NativeRecord>) -> PluginResult<Vec<NativeRecord>> {
        let mut out: Vec<NativeRecord> = Vec::new();
        let mut at: HashMap<u64, usize> = HashMap::new();
        for r in records {
            match at.get(&r.watch_id) {
                Some(&i) => {
                    let m = &mut out[i];
                    m.flags |= r.flags;
                    m.retire_watch |= r.retire_watch;
                    m.seq = m.seq.max(r.seq);
                }
                None => {
                    at.insert(r.watch_id, out.len());
                    out.push(r);
                }
            }
        }
        Ok(out)
    }

    fn encode(&self, records: &[NativeRecord]) -> PluginResult<Vec<u8>> {
        let mut out = Vec::with_capacity(records.len() * KEVENT_SIZE);
        for r in records.iter().filter(|r| r.flags != 0) {
            let k = Kevent {
                ident: r.handle,
                filter: EVFILT_VNODE,
                flags: EV_CLEAR,
                fflags: r.flags as u32,
                data: 0,
                udata: 0,
            };
            out.extend_from_slice(&k.to_bytes());
        }
        Ok(out)
    }
}

/// Plugin definition for [`export_watch_provider!`].
pub struct KqueuePlugin;

impl WatchProviderPluginDef for KqueuePlugin {
    type Provider = KqueueProvider;
    const META: PluginMeta = PluginMeta {
        name: "kqueue",
        version: env!("CARGO_PKG_VERSION"),
        description: "kqueue EVFILT_VNODE records (macOS semantics); a pure translator",
        platforms: "any",
        capabilities: &["coalescing", "encode"],
    };
    fn create(options: &str) -> PluginResult<KqueueProvider> {
        let _: KqueueOptions = parse_options("kqueue", options)?;
        Ok(KqueueProvider)
    }
}

export_watch_provider!(KqueuePlugin);

#[cfg(test)]
mod tests {
    use super::*;

    fn watch(id: u64, path: &str, is_dir: bool) -> WatchSpec {
        WatchSpec {
            watch_id: id,
            pid: 10,
            instance: 3,
            handle: 100 + id,
            branch: "b".into(),
            path: path.into(),
            visible_root: "".into(),
            is_dir,
            flags: u64::from(NOTE_ALL_VNODE),
        }
    }

    fn ev(kind: EventKind, path: &str, to: &str) -> CoreEvent {
        CoreEvent {
            seq: 7,
            pid: 0,
            kind,
            branch: "b".into(),
            path: path.into(),
            to: to.into(),
            is_dir: false,
            size_before: 10,
            size_after: 20,
        }
    }

    #[test]
    fn kevent_layout_matches_the_macos_offsets() {
        let k = Kevent {
            ident: 0x0102_0304_0506_0708,
            filter: EVFILT_VNODE,
            flags: EV_CLEAR,
            fflags: NOTE_WRITE | NOTE_EXTEND,
            data: -2,
            udata: 0xdead_beef,
        };
        let b = k.to_bytes();
        assert_eq!(&b[0..8], &0x0102_0304_0506_0708u64.to_ne_bytes());
        assert_eq!(&b[8..10], &(-4i16).to_ne_bytes());
        assert_eq!(&b[12..16], &6u32.to_ne_bytes());
        assert_eq!(Kevent::parse_all(&b).unwrap(), vec![k]);
        assert!(Kevent::parse_all(&b[..31]).is_none());
    }

    #[cfg(target_os = "macos")]
    #[test]
    fn kevent_layout_matches_libc() {
        use std::mem::offset_of;
        assert_eq!(offset_of!(libc::kevent, filter), 8);
        assert_eq!(offset_of!(libc::kevent, flags), 10);
        assert_eq!(offset_of!(libc::kevent, fflags), 12);
        assert_eq!(offset_of!(libc::kevent, data), 16);
        assert_eq!(offset_of!(libc::kevent, udata), 24);
    }

    #[test]
    fn re_adding_an_fd_updates_the_existing_watch() {
        let p = KqueueProvider;
        let old = watch(1, "a", false);
        let mut again = watch(9, "/a/", false);
        again.handle = old.handle;
        again.flags = u64::from(NOTE_WRITE) | 0x1_0000_0000;
        let r = p.register(&[old], again).unwrap();
        assert_eq!(r.watch_id, 1);
        assert_eq!(r.path, "a");
        assert_eq!(r.flags, u64::from(NOTE_WRITE));
    }

    #[test]
    fn records_about_the_entry_come_before_its_parent() {
        let p = KqueueProvider;
        let ws = [watch(1, "d", true), watch(2, "d/f", false)];
        let r = p
            .synthesize(&ws, &ev(EventKind::REMOVED, "d/f", ""))
            .unwrap();
        assert_eq!(
            r.iter()
                .map(|r| (r.watch_id, r.flags as u32))
                .collect::<Vec<_>>(),
            vec![(2, NOTE_DELETE), (1, NOTE_WRITE)]
        );
        assert!(r[0].retire_watch);
    }

    #[test]
    fn other_branches_never_match() {
        let p = KqueueProvider;
        let mut e = ev(EventKind::MODIFIED, "f", "");
        e.branch = "other".into();
        assert!(p
            .synthesize(&[watch(1, "f", false)], &e)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn coalescing_keeps_first_positions() {
        let p = KqueueProvider;
        let ws = [watch(1, "a", false), watch(2, "b", false)];
        let mut recs = Vec::new();
        for (path, size) in [("a", 1), ("b", 1), ("a", 5)] {
            let mut e = ev(EventKind::MODIFIED, path, "");
            e.size_before = 1;
            e.size_after = size;
            recs.extend(p.synthesize(&ws, &e).unwrap());
        }
        let c = p.coalesce(recs).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].watch_id, 1);
        assert_eq!(c[0].flags as u32, NOTE_WRITE | NOTE_EXTEND);
        assert_eq!(c[1].flags as u32, NOTE_WRITE);
    }
}
