//! Conversions between the plugin ABI's types (what watch providers and
//! backstores speak) and the wire protocol's (what clients and the shim
//! speak). The protocol crate links no ABI machinery, so these live here.

use agentfs_plugin_api::{
    watch::{CoreEvent, EventKind, NativeRecord},
    ErrorCode, PluginError,
};
use agentfs_proto::{WireCoreEvent, WireError, WireEventKind, WireRecord};

/// A plugin error on the wire (same code numbers).
pub fn wire_error(e: PluginError) -> WireError {
    WireError {
        code: e.code.0,
        errno: e.errno,
        message: e.message.into_string(),
    }
}

/// A wire error as a plugin error (protocol codes become the closest code).
pub fn plugin_error(e: WireError) -> PluginError {
    let mut p = PluginError::new(ErrorCode(e.error_code()), e.message);
    p.errno = e.errno;
    p
}

/// A native record on the wire.
pub fn wire_record(r: &NativeRecord) -> WireRecord {
    WireRecord {
        watch_id: r.watch_id,
        handle: r.handle,
        seq: r.seq,
        flags: r.flags,
        cookie: r.cookie,
        name: r.name.as_str().to_string(),
        retire_watch: r.retire_watch,
    }
}

/// A wire record as the ABI's native record.
pub fn native_record(r: &WireRecord) -> NativeRecord {
    NativeRecord {
        watch_id: r.watch_id,
        handle: r.handle,
        seq: r.seq,
        flags: r.flags,
        cookie: r.cookie,
        name: r.name.as_str().into(),
        retire_watch: r.retire_watch,
    }
}

/// The wire kind of an ABI event kind (unknown kinds travel by number).
pub fn wire_kind(k: EventKind) -> WireEventKind {
    match k {
        EventKind::CREATED => WireEventKind::Created,
        EventKind::REMOVED => WireEventKind::Removed,
        EventKind::MODIFIED => WireEventKind::Modified,
        EventKind::RENAMED => WireEventKind::Renamed,
        EventKind::ATTRIBUTES_CHANGED => WireEventKind::AttributesChanged,
        EventKind::BRANCH_CREATED => WireEventKind::BranchCreated,
        EventKind::SNAPSHOT_CREATED => WireEventKind::SnapshotCreated,
        EventKind(n) => WireEventKind::Other(n),
    }
}

/// The ABI event kind of a wire kind.
pub fn abi_kind(k: WireEventKind) -> EventKind {
    match k {
        WireEventKind::Created => EventKind::CREATED,
        WireEventKind::Removed => EventKind::REMOVED,
        WireEventKind::Modified => EventKind::MODIFIED,
        WireEventKind::Renamed => EventKind::RENAMED,
        WireEventKind::AttributesChanged => EventKind::ATTRIBUTES_CHANGED,
        WireEventKind::BranchCreated => EventKind::BRANCH_CREATED,
        WireEventKind::SnapshotCreated => EventKind::SNAPSHOT_CREATED,
        WireEventKind::Other(n) => EventKind(n),
    }
}

/// A core event on the wire.
pub fn wire_event(e: &CoreEvent) -> WireCoreEvent {
    WireCoreEvent {
        seq: e.seq,
        pid: e.pid,
        kind: wire_kind(e.kind),
        branch: e.branch.as_str().to_string(),
        path: e.path.as_str().into(),
        to: e.to.as_str().into(),
        is_dir: e.is_dir,
        size_before: e.size_before,
        size_after: e.size_after,
    }
}

/// A wire core event as the core's (a forwarded one: see
/// [`Request::PublishEvents`](agentfs_proto::Request::PublishEvents)).
pub fn core_event(e: WireCoreEvent) -> Result<agentfs_core::Event, agentfs_core::CoreError> {
    use agentfs_core::{BranchPath, CoreError, EventKind as K};
    let to = || BranchPath::parse(e.to.as_os_str());
    let kind = match e.kind {
        WireEventKind::Created => K::Created,
        WireEventKind::Removed => K::Removed,
        WireEventKind::Modified => K::Modified,
        WireEventKind::Renamed => K::Renamed { to: to()? },
        WireEventKind::AttributesChanged => K::AttributesChanged,
        WireEventKind::BranchCreated => K::BranchCreated,
        WireEventKind::SnapshotCreated => K::SnapshotCreated {
            snapshot: e.to.to_string_lossy().into_owned(),
        },
        WireEventKind::Other(n) => {
            return Err(CoreError::InvalidArgument(format!(
                "event kind {n}: not one this daemon knows"
            )))
        }
    };
    let known = |v: u64| (v != u64::MAX).then_some(v);
    Ok(agentfs_core::Event {
        seq: 0,
        pid: e.pid,
        branch: e.branch,
        kind,
        path: BranchPath::parse(e.path.as_os_str())?,
        is_dir: e.is_dir,
        size_before: known(e.size_before),
        size_after: known(e.size_after),
    })
}

/// A wire core event as the ABI's.
pub fn abi_event(e: &WireCoreEvent) -> CoreEvent {
    CoreEvent {
        seq: e.seq,
        pid: e.pid,
        kind: abi_kind(e.kind),
        branch: e.branch.as_str().into(),
        // The ABI's events carry text: other bytes are replaced.
        path: e.path.to_string_lossy().as_ref().into(),
        to: e.to.to_string_lossy().as_ref().into(),
        is_dir: e.is_dir,
        size_before: e.size_before,
        size_after: e.size_after,
    }
}

#[cfg(test)]
mod tests {
    use agentfs_vocab::codes;

    use super::*;

    #[test]
    fn plugin_errors_round_trip_with_errno() {
        let p = PluginError::from_io("open x", &std::io::Error::from_raw_os_error(libc::ENOENT));
        let w = wire_error(p.clone());
        assert_eq!(w.code, codes::NOT_FOUND);
        assert_eq!(w.code_name(), "not-found");
        assert_eq!(plugin_error(w), p);
        let w = WireError::new(WireError::PEER_REFUSED, "uid 1000 is not 0");
        assert_eq!(plugin_error(w).code, ErrorCode::PERMISSION_DENIED);
    }

    #[test]
    fn every_code_has_the_same_name_on_both_sides() {
        for &(c, name) in codes::ALL {
            assert_eq!(ErrorCode(c).name(), name);
            assert_eq!(WireError::new(c, "x").code_name(), name);
        }
    }

    #[test]
    fn events_and_records_round_trip() {
        for k in 1..=8 {
            assert_eq!(abi_kind(wire_kind(EventKind(k))), EventKind(k));
        }
        let e = CoreEvent {
            seq: 3,
            pid: 9,
            kind: EventKind::RENAMED,
            branch: "b".into(),
            path: "a".into(),
            to: "c".into(),
            is_dir: true,
            size_before: 1,
            size_after: u64::MAX,
        };
        assert_eq!(abi_event(&wire_event(&e)), e);
        let r = NativeRecord {
            watch_id: 1,
            handle: 2,
            seq: 3,
            flags: 4,
            cookie: 5,
            name: "n".into(),
            retire_watch: true,
        };
        assert_eq!(native_record(&wire_record(&r)), r);
    }
}
