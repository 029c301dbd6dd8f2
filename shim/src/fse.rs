//! FSEvents injection's bookkeeping, platform-independent (the CF and
//! dispatch calls are in `macos/fsevents.rs`; this part is unit-tested on
//! every platform).
//!
//! A stream the program creates on paths in the branch is split
//! ([`split_paths`]): branch paths are registered with the daemon's watch
//! service (the `fsevents` provider synthesizes events with the paths the
//! program sees and the item flags its create flags ask for), paths
//! outside the branch keep a real FSEvents stream with the same callback.
//! The daemon writes encoded events into the stream's doorbell socket;
//! the shim parses them ([`Decoder`]), holds them for the stream's latency
//! ([`Latency`]) and calls the program's callback with one batch
//! ([`Batch`]): C strings, a `CFArray` of `CFString` (`UseCFTypes`) or of
//! `CFDictionary` (`UseExtendedData`), flags and event ids.

use crate::paths;

pub use agentfs_vocab::native::fsevents::{
    CREATE_FLAG_FILE_EVENTS, CREATE_FLAG_IGNORE_SELF, CREATE_FLAG_NO_DEFER,
    CREATE_FLAG_USE_CF_TYPES, CREATE_FLAG_USE_EXTENDED_DATA, CREATE_FLAG_WATCH_ROOT,
};

/// `kFSEventStreamEventFlagHistoryDone`.
pub const FLAG_HISTORY_DONE: u32 = 0x0000_0010;
/// `kFSEventStreamEventIdSinceNow`.
pub const SINCE_NOW: u64 = u64::MAX;
/// Size of the fixed part of an encoded event (stream id, event id,
/// flags, path length).
pub const HEADER: usize = 24;

/// One event as the daemon encodes it (the `fsevents` provider's layout:
/// stream id u64, event id u64, flags u32, path length u32, the path, a
/// NUL, zero padding to a multiple of 8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The stream (the shim's id).
    pub stream: u64,
    /// Event id (the core's sequence number).
    pub id: u64,
    /// `kFSEventStreamEventFlag*`.
    pub flags: u32,
    /// The path as the program sees it.
    pub path: String,
}

/// Why the doorbell's bytes cannot be events.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A path that is not UTF-8.
    #[error("an FSEvents record's path is not UTF-8")]
    NotUtf8,
    /// A path length beyond any sane record.
    #[error("an FSEvents record claims a {0}-byte path")]
    TooLong(u64),
}

/// Longest path a record may carry (`PATH_MAX` is 1024 on macOS; a little
/// room for visible roots).
const MAX_PATH: u64 = 64 * 1024;

/// Parses the doorbell's byte stream into events; a record split across
/// reads waits for the rest.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    /// Takes `bytes` and returns every complete event.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<Event>, DecodeError> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        let mut at = 0;
        loop {
            let b = &self.buf[at..];
            if b.len() < HEADER {
                break;
            }
            let u64_at = |o: usize| {
                let mut a = [0u8; 8];
                a.copy_from_slice(&b[o..o + 8]);
                u64::from_ne_bytes(a)
            };
            let u32_at = |o: usize| {
                let mut a = [0u8; 4];
                a.copy_from_slice(&b[o..o + 4]);
                u32::from_ne_bytes(a)
            };
            let len = u64::from(u32_at(20));
            if len > MAX_PATH {
                self.buf.clear();
                return Err(DecodeError::TooLong(len));
            }
            let len = len as usize;
            let end = HEADER + (len + 1).div_ceil(8) * 8;
            if b.len() < end {
                break;
            }
            let path =
                std::str::from_utf8(&b[HEADER..HEADER + len]).map_err(|_| DecodeError::NotUtf8);
            let path = match path {
                Ok(p) => p.to_string(),
                Err(e) => {
                    self.buf.clear();
                    return Err(e);
                }
            };
            out.push(Event {
                stream: u64_at(0),
                id: u64_at(8),
                flags: u32_at(16),
                path,
            });
            at += end;
        }
        self.buf.drain(..at);
        Ok(out)
    }
}

/// A stream's paths, split between the branch and the real FSEvents.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Split {
    /// Branch-relative prefixes (`""` is the whole branch).
    pub branch: Vec<String>,
    /// Absolute paths outside the branch, as given.
    pub native: Vec<Vec<u8>>,
}

/// Splits the paths a stream watches: those under `root` (the branch's
/// visible root) become branch-relative prefixes; the rest stay native.
/// A relative path is taken from `cwd`. A branch path that is not UTF-8
/// cannot be registered and is `Err`.
pub fn split_paths(root: &[u8], cwd: &[u8], given: &[Vec<u8>]) -> Result<Split, Vec<u8>> {
    let mut s = Split::default();
    for p in given {
        let abs = if p.starts_with(b"/") {
            paths::normalize(p)
        } else {
            paths::normalize(&paths::join(cwd, p))
        };
        match paths::under(root, &abs) {
            Some(rel) => {
                let rel = String::from_utf8(rel.to_vec()).map_err(|_| p.clone())?;
                if !s.branch.contains(&rel) {
                    s.branch.push(rel);
                }
            }
            None => s.native.push(p.clone()),
        }
    }
    Ok(s)
}

/// How the callback receives paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathForm {
    /// `char **` (the default).
    CStrings,
    /// A `CFArray` of `CFString` (`UseCFTypes`).
    CfStrings,
    /// A `CFArray` of `CFDictionary` with `path` and `fileID`
    /// (`UseExtendedData`, which requires `UseCFTypes`).
    Extended,
}

/// The form the callback expects for the create flags.
pub fn path_form(create_flags: u32) -> PathForm {
    if create_flags & CREATE_FLAG_USE_EXTENDED_DATA != 0 {
        PathForm::Extended
    } else if create_flags & CREATE_FLAG_USE_CF_TYPES != 0 {
        PathForm::CfStrings
    } else {
        PathForm::CStrings
    }
}

/// Whether a stream created with these flags and `since_when` must be told
/// that history is done: the real FSEvents sends one `HistoryDone` event
/// after replaying history from an event id; the branch has no history
/// before the stream, so it is sent at start.
pub fn needs_history_done(since_when: u64) -> bool {
    since_when != SINCE_NOW
}

/// The `HistoryDone` event (empty path, the given id).
pub fn history_done(stream: u64, id: u64) -> Event {
    Event {
        stream,
        id,
        flags: FLAG_HISTORY_DONE,
        path: String::new(),
    }
}

/// One callback's arguments, before the CF wrapping.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Batch {
    /// Paths as the program sees them.
    pub paths: Vec<String>,
    /// Flags, one per path.
    pub flags: Vec<u32>,
    /// Event ids, one per path.
    pub ids: Vec<u64>,
}

impl Batch {
    /// Builds a batch of `stream`'s events in order (events of other
    /// streams are left out).
    pub fn of(stream: u64, events: &[Event]) -> Self {
        let mut b = Batch::default();
        for e in events.iter().filter(|e| e.stream == stream) {
            b.paths.push(e.path.clone());
            b.flags.push(e.flags);
            b.ids.push(e.id);
        }
        b
    }

    /// Number of events.
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// No events.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// The highest event id (for `FSEventStreamGetLatestEventId`).
    pub fn latest(&self) -> Option<u64> {
        self.ids.iter().copied().max()
    }
}

/// Holds a stream's events for its latency: the first event of a quiet
/// period starts the window; everything that arrives before it ends goes
/// out in one callback. With `NoDefer`, an event after a quiet period goes
/// out at once and the window starts then. Times are nanoseconds on any
/// monotonic clock.
#[derive(Debug, Clone)]
pub struct Latency {
    window: u64,
    no_defer: bool,
    /// When the held events are due.
    due: Option<u64>,
    /// When the last callback happened (for `NoDefer`).
    last_flush: Option<u64>,
    held: Vec<Event>,
}

impl Latency {
    /// A queue for a stream of `latency` seconds and these create flags.
    pub fn new(latency: f64, create_flags: u32) -> Self {
        let window = if latency.is_finite() && latency > 0.0 {
            (latency * 1e9).min(u64::MAX as f64) as u64
        } else {
            0
        };
        Self {
            window,
            no_defer: create_flags & CREATE_FLAG_NO_DEFER != 0,
            due: None,
            last_flush: None,
            held: Vec::new(),
        }
    }

    /// Adds events that arrived at `now`; returns when they are due (the
    /// caller arms a timer for it, or flushes at once when it is `now`).
    pub fn push(&mut self, now: u64, events: Vec<Event>) -> Option<u64> {
        if events.is_empty() {
            return self.due;
        }
        self.held.extend(events);
        if self.due.is_none() {
            let quiet = self
                .last_flush
                .is_none_or(|t| now.saturating_sub(t) >= self.window);
            self.due = Some(if self.no_defer && quiet {
                now
            } else {
                now.saturating_add(self.window)
            });
        }
        self.due
    }

    /// The events due at `now` (all held ones once the window has passed).
    pub fn take(&mut self, now: u64) -> Vec<Event> {
        match self.due {
            Some(d) if d <= now => {
                self.due = None;
                self.last_flush = Some(now);
                std::mem::take(&mut self.held)
            }
            _ => Vec::new(),
        }
    }

    /// Everything held, now (`FSEventStreamFlushSync`/`FlushAsync`, `Stop`).
    pub fn flush(&mut self, now: u64) -> Vec<Event> {
        if self.held.is_empty() {
            return Vec::new();
        }
        self.due = None;
        self.last_flush = Some(now);
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentfs_vocab::native::fsevents::{FLAG_ITEM_CREATED, FLAG_ITEM_IS_FILE};

    fn ev(stream: u64, id: u64, path: &str) -> Event {
        Event {
            stream,
            id,
            flags: FLAG_ITEM_CREATED | FLAG_ITEM_IS_FILE,
            path: path.into(),
        }
    }

    /// The provider's layout (`plugins/watch-fsevents`; agreement with the
    /// provider itself is checked through a real daemon in
    /// `host/tests/fsevents_inject.rs`).
    fn encoded(events: &[Event]) -> Vec<u8> {
        let mut out = Vec::new();
        for e in events {
            out.extend_from_slice(&e.stream.to_ne_bytes());
            out.extend_from_slice(&e.id.to_ne_bytes());
            out.extend_from_slice(&e.flags.to_ne_bytes());
            out.extend_from_slice(&(e.path.len() as u32).to_ne_bytes());
            out.extend_from_slice(e.path.as_bytes());
            let total = (e.path.len() + 1).div_ceil(8) * 8;
            out.resize(out.len() + total - e.path.len(), 0);
        }
        out
    }

    #[test]
    fn decodes_the_providers_layout_even_split_anywhere() {
        let events = vec![
            ev(1, 5, "/Users/me/p/a.txt"),
            ev(1, 6, "/Users/me/p/a directory/with a longer name"),
            ev(2, 7, ""),
        ];
        let bytes = encoded(&events);
        for cut in 0..bytes.len() {
            let mut d = Decoder::default();
            let mut got = d.push(&bytes[..cut]).unwrap();
            got.extend(d.push(&bytes[cut..]).unwrap());
            assert_eq!(got, events, "cut at {cut}");
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut b = encoded(&[ev(1, 5, "ab")]);
        b[24] = 0xff;
        assert_eq!(
            Decoder::default().push(&b).unwrap_err(),
            DecodeError::NotUtf8
        );
        let mut huge = vec![0u8; HEADER];
        huge[20..24].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert!(matches!(
            Decoder::default().push(&huge).unwrap_err(),
            DecodeError::TooLong(_)
        ));
    }

    #[test]
    fn paths_split_between_the_branch_and_real_fsevents() {
        let s = split_paths(
            b"/Users/me/p",
            b"/Users/me/p/src",
            &[
                b"/Users/me/p".to_vec(),
                b"/Users/me/p/src/../docs/".to_vec(),
                b"lib".to_vec(),
                b"/tmp".to_vec(),
                b"/Users/me/project-other".to_vec(),
                b"/Users/me/p/".to_vec(),
            ],
        )
        .unwrap();
        assert_eq!(s.branch, vec!["", "docs", "src/lib"]);
        assert_eq!(
            s.native,
            vec![b"/tmp".to_vec(), b"/Users/me/project-other".to_vec()]
        );
        assert!(split_paths(b"/p", b"/", &[b"/p/\xff".to_vec()]).is_err());
    }

    #[test]
    fn create_flags_choose_the_path_form() {
        assert_eq!(path_form(0), PathForm::CStrings);
        assert_eq!(path_form(CREATE_FLAG_FILE_EVENTS), PathForm::CStrings);
        assert_eq!(path_form(CREATE_FLAG_USE_CF_TYPES), PathForm::CfStrings);
        assert_eq!(
            path_form(CREATE_FLAG_USE_CF_TYPES | CREATE_FLAG_USE_EXTENDED_DATA),
            PathForm::Extended
        );
    }

    #[test]
    fn a_batch_keeps_its_streams_events_in_order() {
        let b = Batch::of(1, &[ev(1, 5, "/a"), ev(2, 6, "/x"), ev(1, 7, "/b")]);
        assert_eq!(b.paths, vec!["/a", "/b"]);
        assert_eq!(b.ids, vec![5, 7]);
        assert_eq!(b.flags.len(), 2);
        assert_eq!(b.latest(), Some(7));
        assert!(Batch::of(3, &[ev(1, 5, "/a")]).is_empty());
    }

    #[test]
    fn history_done_only_when_replaying() {
        assert!(!needs_history_done(SINCE_NOW));
        assert!(needs_history_done(0));
        let e = history_done(4, 9);
        assert_eq!((e.flags, e.path.as_str()), (FLAG_HISTORY_DONE, ""));
    }

    #[test]
    fn latency_holds_events_for_the_window() {
        let mut l = Latency::new(0.5, 0);
        assert_eq!(l.push(1_000, vec![ev(1, 1, "/a")]), Some(500_001_000));
        assert_eq!(l.push(2_000, vec![ev(1, 2, "/b")]), Some(500_001_000));
        assert!(l.take(500_000_999).is_empty(), "not yet");
        assert_eq!(l.take(500_001_000).len(), 2, "one callback for both");
        assert!(l.take(u64::MAX).is_empty());
        assert!(l.flush(9).is_empty());
    }

    #[test]
    fn no_defer_sends_the_first_event_of_a_quiet_period_at_once() {
        let mut l = Latency::new(1.0, CREATE_FLAG_NO_DEFER);
        assert_eq!(l.push(10, vec![ev(1, 1, "/a")]), Some(10));
        assert_eq!(l.take(10).len(), 1);
        // Within the window of the last callback: held for a window.
        assert_eq!(l.push(20, vec![ev(1, 2, "/b")]), Some(1_000_000_020));
        assert_eq!(l.flush(21).len(), 1, "FlushSync sends what is held");
    }

    #[test]
    fn a_zero_or_nonsense_latency_delivers_at_once() {
        for lat in [0.0, -1.0, f64::NAN] {
            let mut l = Latency::new(lat, 0);
            assert_eq!(l.push(7, vec![ev(1, 1, "/a")]), Some(7));
            assert_eq!(l.take(7).len(), 1);
        }
    }
}
