//! The expected native records for every core event kind and kind of watch,
//! per watch API. One scenario is one watch
//! and one event; each API's column lists the exact records, in order.

use agentfs_plugin_api::watch::{CoreEvent, EventKind, WatchApi, WatchSpec};
use agentfs_vocab::native::{fsevents as fse, inotify as ino, kqueue as kq};

/// One expected record.
#[derive(Debug, Clone, Copy)]
pub struct Exp {
    /// Native flags.
    pub flags: u32,
    /// inotify name / FSEvents path; empty for kqueue.
    pub name: &'static str,
    /// True when the record carries the rename cookie (non-zero, shared by
    /// every record of the scenario marked so); false means cookie 0.
    pub cookie: bool,
    /// True when the record retires the watch.
    pub retire: bool,
}

const fn r(flags: u32, name: &'static str) -> Exp {
    Exp {
        flags,
        name,
        cookie: false,
        retire: false,
    }
}

const fn moved(flags: u32, name: &'static str) -> Exp {
    Exp {
        flags,
        name,
        cookie: true,
        retire: false,
    }
}

const fn retire(flags: u32) -> Exp {
    Exp {
        flags,
        name: "",
        cookie: false,
        retire: true,
    }
}

/// The watched thing: a file or a directory (FSEvents: the prefix).
#[derive(Debug, Clone, Copy)]
pub enum Watched {
    /// A watch on a file.
    File(&'static str),
    /// A watch on a directory.
    Dir(&'static str),
}

/// The core event of a scenario.
#[derive(Debug, Clone, Copy)]
pub struct Ev {
    /// Kind.
    pub kind: EventKind,
    /// Path (rename source).
    pub path: &'static str,
    /// Rename destination.
    pub to: &'static str,
    /// The entry is a directory.
    pub is_dir: bool,
    /// Size before and after.
    pub sizes: (u64, u64),
}

const fn ev(kind: EventKind, path: &'static str) -> Ev {
    Ev {
        kind,
        path,
        to: "",
        is_dir: false,
        sizes: (u64::MAX, u64::MAX),
    }
}

const fn dir_ev(kind: EventKind, path: &'static str) -> Ev {
    Ev {
        kind,
        path,
        to: "",
        is_dir: true,
        sizes: (u64::MAX, u64::MAX),
    }
}

const fn rename(path: &'static str, to: &'static str) -> Ev {
    Ev {
        kind: EventKind::RENAMED,
        path,
        to,
        is_dir: false,
        sizes: (u64::MAX, u64::MAX),
    }
}

const fn sized(path: &'static str, before: u64, after: u64) -> Ev {
    Ev {
        kind: EventKind::MODIFIED,
        path,
        to: "",
        is_dir: false,
        sizes: (before, after),
    }
}

/// One row: a watch, an event, and each API's records.
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    /// Check name suffix.
    pub name: &'static str,
    /// The watch.
    pub watched: Watched,
    /// Requested flags (kqueue, FSEvents, inotify); `None` asks for all
    /// (FSEvents: file events).
    pub flags: Option<(u32, u32, u32)>,
    /// The event.
    pub event: Ev,
    /// kqueue records.
    pub kqueue: &'static [Exp],
    /// FSEvents records (process-visible root `/v`).
    pub fsevents: &'static [Exp],
    /// inotify records.
    pub inotify: &'static [Exp],
}

impl Scenario {
    /// The expected records for `api`.
    pub fn expected(&self, api: WatchApi) -> Option<&'static [Exp]> {
        match api {
            WatchApi::KQUEUE => Some(self.kqueue),
            WatchApi::FSEVENTS => Some(self.fsevents),
            WatchApi::INOTIFY => Some(self.inotify),
            _ => None,
        }
    }
}

/// The process-visible branch root used by the FSEvents rows.
pub const VISIBLE_ROOT: &str = "/v";

/// Flags asking for everything an API can report.
pub fn all_flags(api: WatchApi) -> u64 {
    u64::from(match api {
        WatchApi::KQUEUE => kq::NOTE_ALL_VNODE,
        WatchApi::FSEVENTS => fse::CREATE_FLAG_FILE_EVENTS,
        _ => ino::IN_ALL_EVENTS,
    })
}

/// A watch of `api` on `watched` in branch `b`, before registration.
pub fn watch_spec(watched: Watched, flags: u64) -> WatchSpec {
    let (path, is_dir) = match watched {
        Watched::File(p) => (p, false),
        Watched::Dir(p) => (p, true),
    };
    WatchSpec {
        watch_id: 1,
        pid: 4242,
        instance: 3,
        handle: 7,
        branch: "b".into(),
        path: path.into(),
        visible_root: VISIBLE_ROOT.into(),
        is_dir,
        flags,
    }
}

/// The core event of a row, in branch `b`, with sequence number `seq`.
pub fn core_event(e: &Ev, seq: u64) -> CoreEvent {
    CoreEvent {
        seq,
        pid: 0,
        kind: e.kind,
        branch: "b".into(),
        path: e.path.into(),
        to: e.to.into(),
        is_dir: e.is_dir,
        size_before: e.sizes.0,
        size_after: e.sizes.1,
    }
}

/// The `n`-th append to `d/f` (size `n` -> `n + 1`), with `seq` `n + 1`: the
/// burst of the coalescing check and benchmark.
pub fn append_event(n: u64) -> CoreEvent {
    core_event(
        &Ev {
            kind: EventKind::MODIFIED,
            path: "d/f",
            to: "",
            is_dir: false,
            sizes: (n, n + 1),
        },
        n + 1,
    )
}

use EventKind as K;
use Watched::{Dir, File};

const FILE: u32 = fse::FLAG_ITEM_IS_FILE;
const DIR: u32 = fse::FLAG_ITEM_IS_DIR;

/// Every scenario.
pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "created.in_watched_dir",
        watched: Dir("d"),
        flags: None,
        event: ev(K::CREATED, "d/new"),
        kqueue: &[r(kq::NOTE_WRITE, "")],
        fsevents: &[r(fse::FLAG_ITEM_CREATED | FILE, "/v/d/new")],
        inotify: &[r(ino::IN_CREATE, "new")],
    },
    Scenario {
        name: "created.dir_in_watched_dir",
        watched: Dir("d"),
        flags: None,
        event: dir_ev(K::CREATED, "d/sub"),
        kqueue: &[r(kq::NOTE_WRITE | kq::NOTE_LINK, "")],
        fsevents: &[r(fse::FLAG_ITEM_CREATED | DIR, "/v/d/sub")],
        inotify: &[r(ino::IN_CREATE | ino::IN_ISDIR, "sub")],
    },
    Scenario {
        name: "created.elsewhere",
        watched: Dir("d"),
        flags: None,
        event: ev(K::CREATED, "dx/new"),
        kqueue: &[],
        fsevents: &[],
        inotify: &[],
    },
    Scenario {
        name: "removed.watched_file",
        watched: File("d/f"),
        flags: None,
        event: ev(K::REMOVED, "d/f"),
        kqueue: &[retire(kq::NOTE_DELETE)],
        fsevents: &[r(fse::FLAG_ITEM_REMOVED | FILE, "/v/d/f")],
        inotify: &[
            r(ino::IN_ATTRIB, ""),
            r(ino::IN_DELETE_SELF, ""),
            retire(ino::IN_IGNORED),
        ],
    },
    Scenario {
        name: "removed.in_watched_dir",
        watched: Dir("d"),
        flags: None,
        event: ev(K::REMOVED, "d/f"),
        kqueue: &[r(kq::NOTE_WRITE, "")],
        fsevents: &[r(fse::FLAG_ITEM_REMOVED | FILE, "/v/d/f")],
        inotify: &[r(ino::IN_DELETE, "f")],
    },
    Scenario {
        name: "removed.watched_dir",
        watched: Dir("d"),
        flags: None,
        event: dir_ev(K::REMOVED, "d"),
        kqueue: &[retire(kq::NOTE_DELETE)],
        fsevents: &[r(fse::FLAG_ITEM_REMOVED | DIR, "/v/d")],
        inotify: &[r(ino::IN_DELETE_SELF, ""), retire(ino::IN_IGNORED)],
    },
    Scenario {
        name: "removed.watched_file.filtered",
        watched: File("d/f"),
        flags: Some((kq::NOTE_WRITE, fse::CREATE_FLAG_FILE_EVENTS, ino::IN_MODIFY)),
        event: ev(K::REMOVED, "d/f"),
        kqueue: &[retire(0)],
        fsevents: &[r(fse::FLAG_ITEM_REMOVED | FILE, "/v/d/f")],
        inotify: &[retire(ino::IN_IGNORED)],
    },
    Scenario {
        name: "modified.watched_file.grew",
        watched: File("d/f"),
        flags: None,
        event: sized("d/f", 10, 20),
        kqueue: &[r(kq::NOTE_WRITE | kq::NOTE_EXTEND, "")],
        fsevents: &[r(fse::FLAG_ITEM_MODIFIED | FILE, "/v/d/f")],
        inotify: &[r(ino::IN_MODIFY, "")],
    },
    Scenario {
        name: "modified.watched_file.same_size",
        watched: File("d/f"),
        flags: None,
        event: sized("d/f", 10, 10),
        kqueue: &[r(kq::NOTE_WRITE, "")],
        fsevents: &[r(fse::FLAG_ITEM_MODIFIED | FILE, "/v/d/f")],
        inotify: &[r(ino::IN_MODIFY, "")],
    },
    Scenario {
        name: "modified.in_watched_dir",
        watched: Dir("d"),
        flags: None,
        event: sized("d/f", 10, 20),
        kqueue: &[],
        fsevents: &[r(fse::FLAG_ITEM_MODIFIED | FILE, "/v/d/f")],
        inotify: &[r(ino::IN_MODIFY, "f")],
    },
    Scenario {
        name: "modified.below_watched_dir",
        watched: Dir("d"),
        flags: None,
        event: ev(K::MODIFIED, "d/sub/f"),
        kqueue: &[],
        fsevents: &[r(fse::FLAG_ITEM_MODIFIED | FILE, "/v/d/sub/f")],
        inotify: &[],
    },
    Scenario {
        name: "modified.dir_level_and_filtered",
        watched: Dir("d"),
        flags: Some((kq::NOTE_DELETE, fse::FLAG_NONE, ino::IN_CREATE)),
        event: ev(K::MODIFIED, "d/f"),
        kqueue: &[],
        fsevents: &[r(fse::FLAG_NONE, "/v/d/")],
        inotify: &[],
    },
    Scenario {
        name: "attributes.watched_file",
        watched: File("d/f"),
        flags: None,
        event: ev(K::ATTRIBUTES_CHANGED, "d/f"),
        kqueue: &[r(kq::NOTE_ATTRIB, "")],
        fsevents: &[r(fse::FLAG_ITEM_INODE_META_MOD | FILE, "/v/d/f")],
        inotify: &[r(ino::IN_ATTRIB, "")],
    },
    Scenario {
        name: "attributes.in_watched_dir",
        watched: Dir("d"),
        flags: None,
        event: ev(K::ATTRIBUTES_CHANGED, "d/f"),
        kqueue: &[],
        fsevents: &[r(fse::FLAG_ITEM_INODE_META_MOD | FILE, "/v/d/f")],
        inotify: &[r(ino::IN_ATTRIB, "f")],
    },
    Scenario {
        name: "attributes.watched_dir",
        watched: Dir("d"),
        flags: None,
        event: dir_ev(K::ATTRIBUTES_CHANGED, "d"),
        kqueue: &[r(kq::NOTE_ATTRIB, "")],
        fsevents: &[r(fse::FLAG_ITEM_INODE_META_MOD | DIR, "/v/d")],
        inotify: &[r(ino::IN_ATTRIB | ino::IN_ISDIR, "")],
    },
    Scenario {
        name: "renamed.watched_file",
        watched: File("d/f"),
        flags: None,
        event: rename("d/f", "d/g"),
        kqueue: &[r(kq::NOTE_RENAME, "")],
        fsevents: &[r(fse::FLAG_ITEM_RENAMED | FILE, "/v/d/f")],
        inotify: &[r(ino::IN_MOVE_SELF, "")],
    },
    Scenario {
        name: "renamed.within_watched_dir",
        watched: Dir("d"),
        flags: None,
        event: rename("d/f", "d/g"),
        kqueue: &[r(kq::NOTE_WRITE, "")],
        fsevents: &[
            r(fse::FLAG_ITEM_RENAMED | FILE, "/v/d/f"),
            r(fse::FLAG_ITEM_RENAMED | FILE, "/v/d/g"),
        ],
        inotify: &[moved(ino::IN_MOVED_FROM, "f"), moved(ino::IN_MOVED_TO, "g")],
    },
    Scenario {
        name: "renamed.out_of_watched_dir",
        watched: Dir("d"),
        flags: None,
        event: rename("d/f", "e/f"),
        kqueue: &[r(kq::NOTE_WRITE, "")],
        fsevents: &[r(fse::FLAG_ITEM_RENAMED | FILE, "/v/d/f")],
        inotify: &[moved(ino::IN_MOVED_FROM, "f")],
    },
    Scenario {
        name: "renamed.into_watched_dir",
        watched: Dir("d"),
        flags: None,
        event: rename("e/f", "d/f"),
        kqueue: &[r(kq::NOTE_WRITE, "")],
        fsevents: &[r(fse::FLAG_ITEM_RENAMED | FILE, "/v/d/f")],
        inotify: &[moved(ino::IN_MOVED_TO, "f")],
    },
    Scenario {
        name: "renamed.over_watched_file",
        watched: File("d/f"),
        flags: None,
        event: rename("d/g", "d/f"),
        kqueue: &[retire(kq::NOTE_DELETE)],
        fsevents: &[r(fse::FLAG_ITEM_RENAMED | FILE, "/v/d/f")],
        inotify: &[
            r(ino::IN_ATTRIB, ""),
            r(ino::IN_DELETE_SELF, ""),
            retire(ino::IN_IGNORED),
        ],
    },
    Scenario {
        name: "branch_created.nothing",
        watched: Dir(""),
        flags: None,
        event: ev(K::BRANCH_CREATED, ""),
        kqueue: &[],
        fsevents: &[],
        inotify: &[],
    },
    Scenario {
        name: "snapshot_created.nothing",
        watched: Dir(""),
        flags: None,
        event: ev(K::SNAPSHOT_CREATED, ""),
        kqueue: &[],
        fsevents: &[],
        inotify: &[],
    },
];
