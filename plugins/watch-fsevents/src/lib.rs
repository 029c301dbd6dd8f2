//! `fsevents`: translates core events into FSEvents stream events, with the
//! paths the watching process sees . A pure
//! translator; the shim turns the encoded events into callback arguments.
//!
//! A stream with several path prefixes is registered as one watch per
//! prefix, all with the stream id as `instance` and `handle`. `flags` are the
//! stream's `FSEventStreamCreateFlags`; `path` is the branch-relative prefix
//! (`""` is the whole branch); `visible_root` is the absolute path at which
//! the process sees the branch root (required): reported paths are
//! `visible_root/relative-path`.
//!
//! With `kFSEventStreamCreateFlagFileEvents` each changed item is reported
//! with item flags: Created -> `ItemCreated`, Removed -> `ItemRemoved`,
//! Modified -> `ItemModified`, AttributesChanged -> `ItemInodeMetaMod`,
//! Renamed -> `ItemRenamed` for the old and the new path; plus `ItemIsDir`
//! or `ItemIsFile`. Without it, the directory holding the change is reported
//! (path ending in `/`) with flags `None`. `WatchRoot` adds `RootChanged`
//! when a prefix or one of its ancestors is removed or renamed away;
//! `IgnoreSelf` drops and `MarkSelf` marks (`OwnEvent`) events the watching
//! process caused. Within one event a stream gets each path once.
//! Coalescing merges records for the same path of a stream into its latest
//! position (flags ORed), so event ids stay increasing.

use std::collections::HashMap;

use agentfs_plugin_api::{
    export_watch_provider, parse_options,
    watch::{
        CoreEvent, EventKind, NativeRecord, WatchApi, WatchProviderImpl, WatchProviderPluginDef,
        WatchSpec,
    },
    PluginError, PluginMeta, PluginResult,
};
use agentfs_plugin_support::{
    native::fsevents::{
        CREATE_FLAGS_KNOWN, CREATE_FLAG_FILE_EVENTS, CREATE_FLAG_IGNORE_SELF,
        CREATE_FLAG_MARK_SELF, CREATE_FLAG_WATCH_ROOT, FLAG_ITEM_CREATED, FLAG_ITEM_INODE_META_MOD,
        FLAG_ITEM_IS_DIR, FLAG_ITEM_IS_FILE, FLAG_ITEM_MODIFIED, FLAG_ITEM_REMOVED,
        FLAG_ITEM_RENAMED, FLAG_NONE, FLAG_OWN_EVENT, FLAG_ROOT_CHANGED,
    },
    watch_paths::{self, is_under, parent, visible_path},
};

/// Options of the FSEvents provider (none yet; unknown keys are refused).
#[derive(serde::Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FsEventsOptions {}

/// The FSEvents provider instance.
#[derive(Debug, Default)]
pub struct FsEventsProvider;

/// Size of the fixed part of an encoded event.
pub const EVENT_HEADER_SIZE: usize = 24;

/// One encoded FSEvents event (see `docs/events.md` for the layout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsEvent {
    /// The stream it is for.
    pub stream_id: u64,
    /// Event id (the core event's `seq`).
    pub event_id: u64,
    /// `kFSEventStreamEventFlag*`.
    pub flags: u32,
    /// The path as the process sees it.
    pub path: String,
}

impl FsEvent {
    /// Appends the encoded event: stream id u64, event id u64, flags u32,
    /// path length u32 (without NUL), the path, a NUL, zero padding to 8.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.stream_id.to_ne_bytes());
        out.extend_from_slice(&self.event_id.to_ne_bytes());
        out.extend_from_slice(&self.flags.to_ne_bytes());
        out.extend_from_slice(&(self.path.len() as u32).to_ne_bytes());
        out.extend_from_slice(self.path.as_bytes());
        let total = (self.path.len() + 1).div_ceil(8) * 8;
        out.resize(out.len() + total - self.path.len(), 0);
    }

    /// Parses a buffer of encoded events; `None` when malformed.
    pub fn parse_all(mut b: &[u8]) -> Option<Vec<FsEvent>> {
        let mut out = Vec::new();
        while !b.is_empty() {
            if b.len() < EVENT_HEADER_SIZE {
                return None;
            }
            let u64_at = |o: usize| u64::from_ne_bytes(b[o..o + 8].try_into().unwrap());
            let u32_at = |o: usize| u32::from_ne_bytes(b[o..o + 4].try_into().unwrap());
            let len = u32_at(20) as usize;
            let padded = (len.checked_add(1)?).div_ceil(8) * 8;
            let end = EVENT_HEADER_SIZE.checked_add(padded)?;
            if b.len() < end {
                return None;
            }
            let path = std::str::from_utf8(&b[EVENT_HEADER_SIZE..EVENT_HEADER_SIZE + len]).ok()?;
            out.push(FsEvent {
                stream_id: u64_at(0),
                event_id: u64_at(8),
                flags: u32_at(16),
                path: path.to_string(),
            });
            b = &b[end..];
        }
        Some(out)
    }
}

fn item_flag(kind: EventKind) -> Option<u32> {
    Some(match kind {
        EventKind::CREATED => FLAG_ITEM_CREATED,
        EventKind::REMOVED => FLAG_ITEM_REMOVED,
        EventKind::MODIFIED => FLAG_ITEM_MODIFIED,
        EventKind::ATTRIBUTES_CHANGED => FLAG_ITEM_INODE_META_MOD,
        EventKind::RENAMED => FLAG_ITEM_RENAMED,
        _ => return None,
    })
}

/// Adds a record for `w`, merging with one already made for the same stream
/// and path in this event.
fn push(out: &mut Vec<NativeRecord>, w: &WatchSpec, ev: &CoreEvent, flags: u32, name: String) {
    if let Some(r) = out
        .iter_mut()
        .find(|r| r.handle == w.handle && r.name.as_str() == name)
    {
        r.flags |= u64::from(flags);
        return;
    }
    let mut r = watch_paths::record(w, ev, u64::from(flags));
    r.name = name.into();
    out.push(r);
}

impl WatchProviderImpl for FsEventsProvider {
    fn api(&self) -> WatchApi {
        WatchApi::FSEVENTS
    }

    fn register(&self, existing: &[WatchSpec], mut spec: WatchSpec) -> PluginResult<WatchSpec> {
        spec.path = watch_paths::normalize(&spec.path)?.into();
        if !spec.visible_root.starts_with('/') {
            return Err(PluginError::invalid(format!(
                "FSEvents stream {}: visible_root {:?} must be the absolute path at which the process sees the branch root",
                spec.handle,
                spec.visible_root.as_str()
            )));
        }
        spec.flags &= u64::from(CREATE_FLAGS_KNOWN);
        spec.is_dir = true;
        if let Some(old) = existing
            .iter()
            .find(|w| w.pid == spec.pid && w.handle == spec.handle && w.path == spec.path)
        {
            spec.watch_id = old.watch_id;
        }
        Ok(spec)
    }

    fn synthesize(&self, watches: &[WatchSpec], ev: &CoreEvent) -> PluginResult<Vec<NativeRecord>> {
        let Some(item) = item_flag(ev.kind) else {
            return Ok(Vec::new());
        };
        let kind_flag = if ev.is_dir {
            FLAG_ITEM_IS_DIR
        } else {
            FLAG_ITEM_IS_FILE
        };
        let from = ev.path.as_str();
        let paths: &[&str] = if ev.kind == EventKind::RENAMED {
            &[from, ev.to.as_str()]
        } else {
            &[from]
        };
        let mut out = Vec::new();
        for w in watches.iter().filter(|w| watch_paths::same_branch(w, ev)) {
            let flags = w.flags as u32;
            let caused_by_self = ev.pid != 0 && ev.pid == w.pid;
            if caused_by_self && flags & CREATE_FLAG_IGNORE_SELF != 0 {
                continue;
            }
            let own = if caused_by_self && flags & CREATE_FLAG_MARK_SELF != 0 {
                FLAG_OWN_EVENT
            } else {
                0
            };
            let prefix = w.path.as_str();
            let root = w.visible_root.as_str();
            for p in paths {
                if is_under(prefix, p) {
                    if flags & CREATE_FLAG_FILE_EVENTS != 0 {
                        push(
                            &mut out,
                            w,
                            ev,
                            item | kind_flag | own,
                            visible_path(root, p),
                        );
                    } else {
                        let dir = if *p == prefix { p } else { parent(p) };
                        let mut v = visible_path(root, dir);
                        if !v.ends_with('/') {
                            v.push('/');
                        }
                        push(&mut out, w, ev, FLAG_NONE | own, v);
                    }
                }
            }
            let root_gone = matches!(ev.kind, EventKind::REMOVED | EventKind::RENAMED)
                && !from.is_empty()
                && is_under(from, prefix);
            if root_gone && flags & CREATE_FLAG_WATCH_ROOT != 0 {
                push(
                    &mut out,
                    w,
                    ev,
                    FLAG_ROOT_CHANGED,
                    visible_path(root, prefix),
                );
            }
        }
        Ok(out)
    }

    fn coalesce(&self, records: Vec<NativeRecord>) -> PluginResult<Vec<NativeRecord>> {
        let mut slots: Vec<Option<NativeRecord>> = Vec::with_capacity(records.len().min(1024));
        let mut at: HashMap<(u64, String), usize> = HashMap::new();
        for mut r in records {
            let key = (r.handle, r.name.as_str().to_string());
            if let Some(i) = at.get(&key).copied() {
                if let Some(prev) = slots[i].take() {
                    r.flags |= prev.flags;
                    r.seq = r.seq.max(prev.seq);
                }
                // Keep the vector short when one path repeats: reuse the
                // tail slot if the previous record was the last one.
                if i + 1 == slots.len() {
                    slots[i] = Some(r);
                    continue;
                }
            }
            at.insert(key, slots.len());
            slots.push(Some(r));
        }
        Ok(slots.into_iter().flatten().collect())
    }

    fn encode(&self, records: &[NativeRecord]) -> PluginResult<Vec<u8>> {
        let mut out = Vec::with_capacity(records.len() * (EVENT_HEADER_SIZE + 48));
        for r in records.iter().filter(|r| !r.retire_watch || r.flags != 0) {
            FsEvent {
                stream_id: r.handle,
                event_id: r.seq,
                flags: r.flags as u32,
                path: r.name.as_str().to_string(),
            }
            .encode_into(&mut out);
        }
        Ok(out)
    }
}

/// Plugin definition for [`export_watch_provider!`].
pub struct FsEventsPlugin;

impl WatchProviderPluginDef for FsEventsPlugin {
    type Provider = FsEventsProvider;
    const META: PluginMeta = PluginMeta {
        name: "fsevents",
        version: env!("CARGO_PKG_VERSION"),
        description:
            "FSEvents stream events with process-visible paths (macOS semantics); a pure translator",
        platforms: "any",
        capabilities: &["coalescing", "encode"],
    };
    fn create(options: &str) -> PluginResult<FsEventsProvider> {
        let _: FsEventsOptions = parse_options("fsevents", options)?;
        Ok(FsEventsProvider)
    }
}

export_watch_provider!(FsEventsPlugin);

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(id: u64, prefix: &str, flags: u32) -> WatchSpec {
        WatchSpec {
            watch_id: id,
            pid: 10,
            instance: 5,
            handle: 5,
            branch: "b".into(),
            path: prefix.into(),
            visible_root: "/Users/me/p".into(),
            is_dir: true,
            flags: u64::from(flags),
        }
    }

    fn ev(kind: EventKind, path: &str, to: &str) -> CoreEvent {
        CoreEvent {
            seq: 3,
            pid: 0,
            kind,
            branch: "b".into(),
            path: path.into(),
            to: to.into(),
            is_dir: false,
            size_before: u64::MAX,
            size_after: u64::MAX,
        }
    }

    #[test]
    fn encoding_round_trips_and_pads_to_eight() {
        let e = FsEvent {
            stream_id: 5,
            event_id: 9,
            flags: FLAG_ITEM_CREATED,
            path: "/Users/me/p/abc".into(),
        };
        let mut b = Vec::new();
        e.encode_into(&mut b);
        assert_eq!(b.len(), EVENT_HEADER_SIZE + 16);
        assert_eq!(FsEvent::parse_all(&b).unwrap(), vec![e]);
        assert!(FsEvent::parse_all(&b[..30]).is_none());
    }

    #[test]
    fn visible_root_is_required() {
        let mut s = stream(1, "src", FLAG_NONE);
        s.visible_root = "relative".into();
        assert!(FsEventsProvider.register(&[], s).is_err());
    }

    #[test]
    fn overlapping_prefixes_of_one_stream_report_a_path_once() {
        let p = FsEventsProvider;
        let ws = [
            stream(1, "", CREATE_FLAG_FILE_EVENTS),
            stream(2, "src", CREATE_FLAG_FILE_EVENTS),
        ];
        let r = p
            .synthesize(&ws, &ev(EventKind::MODIFIED, "src/a.rs", ""))
            .unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].name, "/Users/me/p/src/a.rs");
    }

    #[test]
    fn self_events_are_ignored_or_marked() {
        let p = FsEventsProvider;
        let mut e = ev(EventKind::CREATED, "x", "");
        e.pid = 10;
        let ignore = stream(1, "", CREATE_FLAG_FILE_EVENTS | CREATE_FLAG_IGNORE_SELF);
        assert!(p.synthesize(&[ignore], &e).unwrap().is_empty());
        let mark = stream(1, "", CREATE_FLAG_FILE_EVENTS | CREATE_FLAG_MARK_SELF);
        let r = p.synthesize(&[mark], &e).unwrap();
        assert_eq!(
            r[0].flags as u32,
            FLAG_ITEM_CREATED | FLAG_ITEM_IS_FILE | FLAG_OWN_EVENT
        );
    }

    #[test]
    fn coalescing_moves_a_path_to_its_latest_position() {
        let p = FsEventsProvider;
        let w = [stream(1, "", CREATE_FLAG_FILE_EVENTS)];
        let mut recs = Vec::new();
        for (seq, kind, path) in [
            (1, EventKind::CREATED, "a"),
            (2, EventKind::MODIFIED, "b"),
            (3, EventKind::MODIFIED, "a"),
        ] {
            let mut e = ev(kind, path, "");
            e.seq = seq;
            recs.extend(p.synthesize(&w, &e).unwrap());
        }
        let c = p.coalesce(recs).unwrap();
        let got: Vec<(&str, u64)> = c.iter().map(|r| (r.name.as_str(), r.seq)).collect();
        assert_eq!(got, vec![("/Users/me/p/b", 2), ("/Users/me/p/a", 3)]);
        assert_eq!(
            c[1].flags as u32,
            FLAG_ITEM_CREATED | FLAG_ITEM_MODIFIED | FLAG_ITEM_IS_FILE
        );
    }
}
