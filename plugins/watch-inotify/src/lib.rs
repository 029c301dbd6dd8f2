//! `inotify`: translates core events into Linux inotify events, in the
//! kernel's order and byte layout. A pure translator; the daemon
//! writes the encoded records into the socket the shim gave the process in
//! place of its inotify fd.
//!
//! A watch is one `inotify_add_watch`: `instance` identifies the inotify
//! instance, `handle` is the wd, `flags` the mask, `path` the watched
//! branch-relative path.
//!
//! | core event | watch on the parent directory | watch on the entry itself |
//! |---|---|---|
//! | Created | `IN_CREATE` name | — |
//! | Removed | `IN_DELETE` name (after the self records) | file: `IN_ATTRIB`, then `IN_DELETE_SELF`, `IN_IGNORED` (retired); directory: `IN_DELETE_SELF`, `IN_IGNORED` |
//! | Modified | `IN_MODIFY` name | `IN_MODIFY` |
//! | AttributesChanged | `IN_ATTRIB` name | `IN_ATTRIB` |
//! | Renamed | `IN_MOVED_FROM` old name, `IN_MOVED_TO` new name, one cookie | source: `IN_MOVE_SELF` (the watch follows); replaced destination: file `IN_ATTRIB`, then `IN_DELETE_SELF`, `IN_IGNORED` |
//!
//! `IN_ISDIR` is set on events about a directory except `IN_DELETE_SELF`,
//! `IN_MOVE_SELF` and `IN_IGNORED` (as the kernel does). The order across
//! watches of one instance is the kernel's, checked against real kernel
//! records in this crate's tests.

use agentfs_plugin_api::{
    export_watch_provider, parse_options,
    watch::{
        CoreEvent, EventKind, NativeRecord, WatchApi, WatchProviderImpl, WatchProviderPluginDef,
        WatchSpec,
    },
    ErrorCode, PluginError, PluginMeta, PluginResult,
};
use agentfs_plugin_support::{
    native::inotify::{
        EVENT_HEADER_SIZE, IN_ALL_BITS, IN_ALL_EVENTS, IN_ATTRIB, IN_CREATE, IN_DELETE,
        IN_DELETE_SELF, IN_EXCL_UNLINK, IN_IGNORED, IN_ISDIR, IN_MASK_ADD, IN_MASK_CREATE,
        IN_MODIFY, IN_MOVED_FROM, IN_MOVED_TO, IN_MOVE_SELF, IN_ONESHOT, IN_ONLYDIR,
    },
    watch_paths::{self, parent, relation, Relation},
};

/// Options of the inotify provider (none yet; unknown keys are refused).
#[derive(serde::Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct InotifyOptions {}

/// The inotify provider instance.
#[derive(Debug, Default)]
pub struct InotifyProvider;

/// The rename cookie for the event with sequence number `seq`: never 0,
/// equal for the `IN_MOVED_FROM`/`IN_MOVED_TO` pair of one rename.
pub fn cookie_for(seq: u64) -> u32 {
    (seq % u64::from(u32::MAX)) as u32 + 1
}

/// The `len` field the kernel writes for a name of `name_len` bytes: the
/// name plus its NUL, rounded up to a multiple of `sizeof(struct
/// inotify_event)` (16); 0 when there is no name.
pub fn padded_name_len(name_len: usize) -> usize {
    if name_len == 0 {
        0
    } else {
        (name_len + 1).div_ceil(EVENT_HEADER_SIZE) * EVENT_HEADER_SIZE
    }
}

/// One parsed `struct inotify_event`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InotifyEvent {
    /// Watch descriptor.
    pub wd: i32,
    /// `IN_*` mask.
    pub mask: u32,
    /// Rename cookie.
    pub cookie: u32,
    /// The `len` field (padded name length).
    pub len: u32,
    /// The name without its NUL padding.
    pub name: Vec<u8>,
}

impl InotifyEvent {
    /// Parses a buffer of whole records (as `read(2)` on an inotify fd
    /// returns); `None` when a record is truncated.
    pub fn parse_all(mut b: &[u8]) -> Option<Vec<InotifyEvent>> {
        let mut out = Vec::new();
        while !b.is_empty() {
            if b.len() < EVENT_HEADER_SIZE {
                return None;
            }
            let u = |o: usize| u32::from_ne_bytes(b[o..o + 4].try_into().unwrap());
            let len = u(12);
            let end = EVENT_HEADER_SIZE.checked_add(len as usize)?;
            if b.len() < end {
                return None;
            }
            let raw = &b[EVENT_HEADER_SIZE..end];
            let name = raw[..raw.iter().position(|&c| c == 0).unwrap_or(raw.len())].to_vec();
            out.push(InotifyEvent {
                wd: u(0) as i32,
                mask: u(4),
                cookie: u(8),
                len,
                name,
            });
            b = &b[end..];
        }
        Some(out)
    }
}

fn err(code: ErrorCode, errno: i32, msg: String) -> PluginError {
    let mut e = PluginError::new(code, msg);
    e.errno = errno;
    e
}

/// Collects one event's records for one instance, in kernel phase order.
struct Out<'a> {
    ev: &'a CoreEvent,
    hits: Vec<(u8, NativeRecord)>,
}

impl Out<'_> {
    /// Adds `bits` (| IN_ISDIR when `isdir`) for `w` if its mask asks for
    /// them; `IN_IGNORED` is always delivered.
    fn add(&mut self, phase: u8, w: &WatchSpec, bits: u32, isdir: bool, name: &str, cookie: u32) {
        let wanted = if bits == IN_IGNORED {
            bits
        } else {
            bits & w.flags as u32
        };
        if wanted == 0 {
            return;
        }
        let mut r = watch_paths::record(
            w,
            self.ev,
            u64::from(wanted | if isdir { IN_ISDIR } else { 0 }),
        );
        r.cookie = cookie;
        r.name = name.into();
        r.retire_watch = bits == IN_IGNORED;
        self.hits.push((phase, r));
    }

    /// The records for the death of the watched inode (unlink, rmdir, or
    /// being replaced by a rename).
    fn delete_self(&mut self, attrib_phase: u8, phase: u8, w: &WatchSpec, is_dir: bool) {
        if !is_dir {
            self.add(attrib_phase, w, IN_ATTRIB, false, "", 0);
        }
        self.add(phase, w, IN_DELETE_SELF, false, "", 0);
        self.add(phase, w, IN_IGNORED, false, "", 0);
    }
}

fn effects(out: &mut Out<'_>, w: &WatchSpec) {
    let ev = out.ev;
    let (path, d) = (ev.path.as_str(), ev.is_dir);
    match ev.kind {
        EventKind::CREATED => {
            if let Relation::Child(n) = relation(w, path) {
                out.add(0, w, IN_CREATE, d, n, 0);
            }
        }
        EventKind::REMOVED => match relation(w, path) {
            Relation::Itself => out.delete_self(0, 0, w, d),
            Relation::Child(n) => out.add(1, w, IN_DELETE, d, n, 0),
            Relation::Unrelated => {}
        },
        EventKind::MODIFIED | EventKind::ATTRIBUTES_CHANGED => {
            let bit = if ev.kind == EventKind::MODIFIED {
                IN_MODIFY
            } else {
                IN_ATTRIB
            };
            match relation(w, path) {
                Relation::Child(n) => out.add(0, w, bit, d, n, 0),
                Relation::Itself if bit == IN_ATTRIB || !d => out.add(1, w, bit, d, "", 0),
                _ => {}
            }
        }
        EventKind::RENAMED => {
            let to = ev.to.as_str();
            if path == to {
                return;
            }
            let cookie = cookie_for(ev.seq);
            if w.is_dir && !path.is_empty() && parent(path) == w.path.as_str() {
                out.add(0, w, IN_MOVED_FROM, d, watch_paths::file_name(path), cookie);
            }
            if w.is_dir && !to.is_empty() && parent(to) == w.path.as_str() {
                out.add(1, w, IN_MOVED_TO, d, watch_paths::file_name(to), cookie);
            }
            if path == w.path.as_str() {
                out.add(3, w, IN_MOVE_SELF, false, "", 0);
            } else if to == w.path.as_str() {
                // The destination existed and is replaced: its inode dies.
                out.delete_self(2, 4, w, w.is_dir);
            }
        }
        _ => {}
    }
}

/// Applies `IN_ONESHOT`: a oneshot watch keeps its first record, then gets
/// `IN_IGNORED` and nothing more.
fn apply_oneshot(records: Vec<NativeRecord>, watches: &[WatchSpec]) -> Vec<NativeRecord> {
    let oneshot = |id: u64| {
        watches
            .iter()
            .any(|w| w.watch_id == id && w.flags as u32 & IN_ONESHOT != 0)
    };
    if !records.iter().any(|r| oneshot(r.watch_id)) {
        return records;
    }
    let mut done: Vec<u64> = Vec::new();
    let mut out = Vec::with_capacity(records.len() + 1);
    for r in records {
        if done.contains(&r.watch_id) {
            continue;
        }
        if oneshot(r.watch_id) {
            done.push(r.watch_id);
            if !r.retire_watch {
                let mut ignored = r.clone();
                ignored.flags = u64::from(IN_IGNORED);
                ignored.cookie = 0;
                ignored.name = Default::default();
                ignored.retire_watch = true;
                out.push(r);
                out.push(ignored);
                continue;
            }
        }
        out.push(r);
    }
    out
}

impl WatchProviderImpl for InotifyProvider {
    fn api(&self) -> WatchApi {
        WatchApi::INOTIFY
    }

    fn register(&self, existing: &[WatchSpec], mut spec: WatchSpec) -> PluginResult<WatchSpec> {
        spec.path = watch_paths::normalize(&spec.path)?.into();
        let mask = spec.flags as u32;
        if spec.flags > u64::from(u32::MAX) {
            return Err(err(
                ErrorCode::INVALID_ARGUMENT,
                libc::EINVAL,
                format!("inotify mask {:#x} does not fit in 32 bits", spec.flags),
            ));
        }
        if mask & IN_ALL_BITS == 0 {
            return Err(err(
                ErrorCode::INVALID_ARGUMENT,
                libc::EINVAL,
                format!("inotify mask {mask:#x} has no valid bit"),
            ));
        }
        if mask & IN_MASK_ADD != 0 && mask & IN_MASK_CREATE != 0 {
            return Err(err(
                ErrorCode::INVALID_ARGUMENT,
                libc::EINVAL,
                "IN_MASK_ADD and IN_MASK_CREATE together".into(),
            ));
        }
        if mask & IN_ONLYDIR != 0 && !spec.is_dir {
            return Err(err(
                ErrorCode::NOT_DIRECTORY,
                libc::ENOTDIR,
                format!("IN_ONLYDIR: {:?} is not a directory", spec.path.as_str()),
            ));
        }
        let keep = IN_ALL_EVENTS | IN_ONESHOT | IN_EXCL_UNLINK;
        let mut stored = mask & keep;
        if let Some(old) = existing.iter().find(|w| {
            w.pid == spec.pid
                && w.instance == spec.instance
                && w.branch == spec.branch
                && w.path == spec.path
        }) {
            if mask & IN_MASK_CREATE != 0 {
                return Err(err(
                    ErrorCode::ALREADY_EXISTS,
                    libc::EEXIST,
                    format!(
                        "IN_MASK_CREATE: {:?} is already watched (wd {})",
                        spec.path.as_str(),
                        old.handle
                    ),
                ));
            }
            if mask & IN_MASK_ADD != 0 {
                stored |= old.flags as u32 & keep;
            }
            spec.watch_id = old.watch_id;
            spec.handle = old.handle;
        }
        spec.flags = u64::from(stored);
        Ok(spec)
    }

    fn synthesize(&self, watches: &[WatchSpec], ev: &CoreEvent) -> PluginResult<Vec<NativeRecord>> {
        let mut out = Out {
            ev,
            hits: Vec::new(),
        };
        for w in watches.iter().filter(|w| watch_paths::same_branch(w, ev)) {
            effects(&mut out, w);
        }
        out.hits.sort_by_key(|(phase, _)| *phase);
        let records = out.hits.into_iter().map(|(_, r)| r).collect();
        Ok(apply_oneshot(records, watches))
    }

    fn coalesce(&self, records: Vec<NativeRecord>) -> PluginResult<Vec<NativeRecord>> {
        let mut out: Vec<NativeRecord> = Vec::with_capacity(records.len().min(1024));
        let mut retired: Vec<u64> = Vec::new();
        for r in records {
            if retired.contains(&r.watch_id) {
                continue;
            }
            if r.retire_watch {
                retired.push(r.watch_id);
            }
            // The kernel merges an event into the queue's tail when identical.
            if let Some(last) = out.last_mut() {
                if last.watch_id == r.watch_id
                    && last.flags == r.flags
                    && last.cookie == r.cookie
                    && last.name == r.name
                {
                    last.seq = last.seq.max(r.seq);
                    continue;
                }
            }
            out.push(r);
        }
        Ok(out)
    }

    fn encode(&self, records: &[NativeRecord]) -> PluginResult<Vec<u8>> {
        let mut out = Vec::with_capacity(records.len() * (EVENT_HEADER_SIZE + 16));
        for r in records.iter().filter(|r| r.flags != 0) {
            let name = r.name.as_bytes();
            let len = padded_name_len(name.len());
            out.extend_from_slice(&(r.handle as i32).to_ne_bytes());
            out.extend_from_slice(&(r.flags as u32).to_ne_bytes());
            out.extend_from_slice(&r.cookie.to_ne_bytes());
            out.extend_from_slice(&(len as u32).to_ne_bytes());
            out.extend_from_slice(name);
            out.resize(out.len() + len - name.len(), 0);
        }
        Ok(out)
    }
}

/// Plugin definition for [`export_watch_provider!`].
pub struct InotifyPlugin;

impl WatchProviderPluginDef for InotifyPlugin {
    type Provider = InotifyProvider;
    const META: PluginMeta = PluginMeta {
        name: "inotify",
        version: env!("CARGO_PKG_VERSION"),
        description:
            "Linux inotify events in the kernel's order and byte layout; a pure translator",
        platforms: "any",
        capabilities: &["coalescing", "encode"],
    };
    fn create(options: &str) -> PluginResult<InotifyProvider> {
        let _: InotifyOptions = parse_options("inotify", options)?;
        Ok(InotifyProvider)
    }
}

export_watch_provider!(InotifyPlugin);

#[cfg(test)]
mod tests;
