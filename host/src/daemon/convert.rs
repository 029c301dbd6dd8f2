//! Conversions between the core's types and the wire's, both ways: the
//! daemon answers with wire types, and the CLI turns them back into the
//! core's so it prints the same thing with or without a daemon.

use std::{
    ffi::OsString,
    path::PathBuf,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use agentfs_plugin_api::ErrorCode;
use agentfs_proto as wire;

use agentfs_core::{self as core, CoreError, OpenOptions};

/// A core error on the wire: the errno's code, the errno, the message.
pub fn wire_error(e: &CoreError) -> wire::WireError {
    let errno = e.errno();
    wire::WireError {
        code: ErrorCode::from_errno(errno).0,
        errno,
        message: e.to_string(),
    }
}

/// Nanoseconds since the epoch (negative before it).
pub fn time_ns(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_nanos()).map_or(i64::MIN, |n| -n),
    }
}

/// The time `ns` nanoseconds from the epoch.
pub fn time_from_ns(ns: i64) -> SystemTime {
    let d = Duration::from_nanos(ns.unsigned_abs());
    if ns >= 0 {
        UNIX_EPOCH + d
    } else {
        UNIX_EPOCH - d
    }
}

fn path_string(p: &Option<PathBuf>) -> Option<String> {
    p.as_ref().map(|p| p.to_string_lossy().into_owned())
}

/// File kind, core to wire.
pub fn kind_to_wire(k: core::FileKind) -> wire::FileKind {
    match k {
        core::FileKind::File => wire::FileKind::File,
        core::FileKind::Dir => wire::FileKind::Dir,
        core::FileKind::Symlink => wire::FileKind::Symlink,
        core::FileKind::Other => wire::FileKind::Other,
    }
}

/// File kind, wire to core.
pub fn kind_from_wire(k: wire::FileKind) -> core::FileKind {
    match k {
        wire::FileKind::File => core::FileKind::File,
        wire::FileKind::Dir => core::FileKind::Dir,
        wire::FileKind::Symlink => core::FileKind::Symlink,
        wire::FileKind::Other => core::FileKind::Other,
    }
}

/// Special file kind, core to wire.
fn special_to_wire(s: core::Special) -> wire::SpecialKind {
    match s {
        core::Special::Fifo => wire::SpecialKind::Fifo,
        core::Special::Socket => wire::SpecialKind::Socket,
        core::Special::CharDevice => wire::SpecialKind::CharDevice,
        core::Special::BlockDevice => wire::SpecialKind::BlockDevice,
    }
}

/// Special file kind, wire to core.
fn special_from_wire(s: wire::SpecialKind) -> core::Special {
    match s {
        wire::SpecialKind::Fifo => core::Special::Fifo,
        wire::SpecialKind::Socket => core::Special::Socket,
        wire::SpecialKind::CharDevice => core::Special::CharDevice,
        wire::SpecialKind::BlockDevice => core::Special::BlockDevice,
    }
}

/// A branch, core to wire.
pub fn branch_to_wire(b: core::BranchInfo) -> wire::BranchInfo {
    wire::BranchInfo {
        base: path_string(&b.base),
        name: b.name,
        from_snapshot: b.from_snapshot,
        layer: b.layer,
        depth: b.depth as u64,
        created: b.created,
    }
}

/// A branch, wire to core.
pub fn branch_from_wire(b: wire::BranchInfo) -> core::BranchInfo {
    core::BranchInfo {
        name: b.name,
        layer: b.layer,
        depth: b.depth as usize,
        base: b.base.map(PathBuf::from),
        from_snapshot: b.from_snapshot,
        created: b.created,
    }
}

/// A snapshot, core to wire.
pub fn snapshot_to_wire(s: core::SnapshotInfo) -> wire::SnapshotInfo {
    wire::SnapshotInfo {
        base: path_string(&s.base),
        name: s.name,
        branch: s.branch,
        native: s.native,
        layer: s.layer,
        created: s.created,
    }
}

/// A snapshot, wire to core.
pub fn snapshot_from_wire(s: wire::SnapshotInfo) -> core::SnapshotInfo {
    core::SnapshotInfo {
        name: s.name,
        branch: s.branch,
        layer: s.layer,
        native: s.native,
        base: s.base.map(PathBuf::from),
        created: s.created,
    }
}

/// Metadata, core to wire.
pub fn stat_to_wire(s: &core::Stat) -> wire::FileStat {
    wire::FileStat {
        kind: kind_to_wire(s.kind),
        size: s.size,
        mode: s.mode,
        mtime_ns: time_ns(s.mtime),
        nlink: s.nlink,
        uid: s.uid,
        gid: s.gid,
        ino: s.ino,
        dev: s.dev,
        atime_ns: time_ns(s.atime),
        origin: Some(match &s.origin {
            core::Origin::Active => wire::FileOrigin::Active,
            core::Origin::Committed(id) => wire::FileOrigin::Committed(id.clone()),
            core::Origin::Base => wire::FileOrigin::Base,
        }),
        special: s.special.map(special_to_wire),
        rdev: s.rdev,
    }
}

/// Metadata, wire to core (an unknown origin reads as the active layer).
pub fn stat_from_wire(s: wire::FileStat) -> core::Stat {
    core::Stat {
        kind: kind_from_wire(s.kind),
        mode: s.mode,
        size: s.size,
        uid: s.uid,
        gid: s.gid,
        nlink: s.nlink,
        ino: s.ino,
        dev: s.dev,
        special: s.special.map(special_from_wire),
        rdev: s.rdev,
        atime: time_from_ns(s.atime_ns),
        mtime: time_from_ns(s.mtime_ns),
        origin: match s.origin {
            Some(wire::FileOrigin::Committed(id)) => core::Origin::Committed(id),
            Some(wire::FileOrigin::Base) => core::Origin::Base,
            Some(wire::FileOrigin::Active) | None => core::Origin::Active,
        },
    }
}

/// A directory entry, core to wire: a name that is not UTF-8 travels
/// exactly in `name_bytes`.
pub fn entry_to_wire(e: core::DirEntry) -> wire::DirEntry {
    use std::os::unix::ffi::OsStrExt;
    let (name, name_bytes) = match e.name.into_string() {
        Ok(s) => (s, None),
        Err(raw) => (
            raw.to_string_lossy().into_owned(),
            Some(raw.as_bytes().to_vec()),
        ),
    };
    wire::DirEntry {
        name,
        kind: kind_to_wire(e.kind),
        name_bytes,
    }
}

/// A directory entry, wire to core (exact bytes when it has them).
pub fn entry_from_wire(e: wire::DirEntry) -> core::DirEntry {
    use std::os::unix::ffi::OsStringExt;
    core::DirEntry {
        name: match e.name_bytes {
            Some(b) => OsString::from_vec(b),
            None => OsString::from(e.name),
        },
        kind: kind_from_wire(e.kind),
    }
}

/// Portable open flags to the core's options.
pub fn open_options(flags: wire::OpenFlags, mode: u32) -> OpenOptions {
    use wire::OpenFlags as F;
    let write = flags.contains(F::WRITE);
    OpenOptions {
        read: flags.contains(F::READ) || !write,
        write,
        create: flags.contains(F::CREATE),
        exclusive: flags.contains(F::CREATE) && flags.contains(F::EXCL),
        truncate: flags.contains(F::TRUNCATE),
        append: flags.contains(F::APPEND),
        nofollow: flags.contains(F::NOFOLLOW),
        mode: mode & 0o7777,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_on_both_sides_of_the_epoch() {
        for ns in [0i64, 1, 1_700_000_000_123_456_789, -1, -5_000_000_001] {
            assert_eq!(time_ns(time_from_ns(ns)), ns);
        }
    }

    #[test]
    fn errors_keep_their_errno() {
        let w = wire_error(&CoreError::NotEmpty("d".into()));
        assert_eq!(w.errno, libc::ENOTEMPTY);
        assert_eq!(w.code, ErrorCode::NOT_EMPTY.0);
        assert_eq!(w.message, "d: directory not empty");
    }

    #[test]
    fn open_flags() {
        use wire::OpenFlags as F;
        let o = open_options(F::WRITE.union(F::CREATE).union(F::EXCL), 0o100644);
        assert!(o.write && !o.read && o.create && o.exclusive && o.modifies());
        assert_eq!(o.mode, 0o644);
        let o = open_options(F::READ, 0);
        assert!(o.read && !o.modifies());
        // EXCL without CREATE means nothing, as in open(2).
        assert!(!open_options(F::READ.union(F::EXCL), 0).exclusive);
    }
}
