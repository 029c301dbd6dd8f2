//! Native watch-API constants, defined here so every platform builds the
//! three providers: kqueue values from macOS `<sys/event.h>`, FSEvents values
//! from `<CoreServices/.../FSEvents.h>`, inotify values from Linux
//! `<sys/inotify.h>`. Where the `libc` crate has them for the build target,
//! a compile-time assertion checks ours against it.

/// kqueue / kevent (macOS `<sys/event.h>`).
pub mod kqueue {
    /// Vnode filter.
    pub const EVFILT_VNODE: i16 = -4;
    /// User filter (the program's own events; never the shim's doorbell).
    pub const EVFILT_USER: i16 = -10;
    /// kevent flag: add the event.
    pub const EV_ADD: u16 = 0x0001;
    /// kevent flag: delete the event.
    pub const EV_DELETE: u16 = 0x0002;
    /// kevent flag: enable the event.
    pub const EV_ENABLE: u16 = 0x0004;
    /// kevent flag: report once, then delete.
    pub const EV_ONESHOT: u16 = 0x0010;
    /// kevent flag: reset state after the event is retrieved.
    pub const EV_CLEAR: u16 = 0x0020;
    /// The vnode was unlinked.
    pub const NOTE_DELETE: u32 = 0x0000_0001;
    /// Data contents changed (for a directory: an entry was added or removed).
    pub const NOTE_WRITE: u32 = 0x0000_0002;
    /// The size increased.
    pub const NOTE_EXTEND: u32 = 0x0000_0004;
    /// Attributes changed.
    pub const NOTE_ATTRIB: u32 = 0x0000_0008;
    /// The link count changed.
    pub const NOTE_LINK: u32 = 0x0000_0010;
    /// The vnode was renamed.
    pub const NOTE_RENAME: u32 = 0x0000_0020;
    /// Access was revoked.
    pub const NOTE_REVOKE: u32 = 0x0000_0040;
    /// Every vnode fflag a provider may synthesize.
    pub const NOTE_ALL_VNODE: u32 = NOTE_DELETE
        | NOTE_WRITE
        | NOTE_EXTEND
        | NOTE_ATTRIB
        | NOTE_LINK
        | NOTE_RENAME
        | NOTE_REVOKE;
    /// EVFILT_USER: trigger the event.
    pub const NOTE_TRIGGER: u32 = 0x0100_0000;
    /// Size of `struct kevent` on 64-bit macOS (x86_64 and arm64).
    pub const KEVENT_SIZE: usize = 32;

    #[cfg(any(target_os = "macos", target_os = "ios"))]
    const _: () = {
        assert!(EVFILT_VNODE == libc::EVFILT_VNODE);
        assert!(EVFILT_USER == libc::EVFILT_USER);
        assert!(EV_ADD == libc::EV_ADD);
        assert!(EV_DELETE == libc::EV_DELETE);
        assert!(EV_ENABLE == libc::EV_ENABLE);
        assert!(EV_ONESHOT == libc::EV_ONESHOT);
        assert!(EV_CLEAR == libc::EV_CLEAR);
        assert!(NOTE_DELETE == libc::NOTE_DELETE);
        assert!(NOTE_WRITE == libc::NOTE_WRITE);
        assert!(NOTE_EXTEND == libc::NOTE_EXTEND);
        assert!(NOTE_ATTRIB == libc::NOTE_ATTRIB);
        assert!(NOTE_LINK == libc::NOTE_LINK);
        assert!(NOTE_RENAME == libc::NOTE_RENAME);
        assert!(NOTE_REVOKE == libc::NOTE_REVOKE);
        assert!(NOTE_TRIGGER == libc::NOTE_TRIGGER);
        assert!(KEVENT_SIZE == std::mem::size_of::<libc::kevent>());
    };
}

/// FSEvents (macOS `FSEvents.h`).
pub mod fsevents {
    /// Stream create flag: report individual files, not just directories.
    pub const CREATE_FLAG_FILE_EVENTS: u32 = 0x0000_0010;
    /// Stream create flag: report changes to the watched roots themselves.
    pub const CREATE_FLAG_WATCH_ROOT: u32 = 0x0000_0004;
    /// Stream create flag: ignore events caused by this process.
    pub const CREATE_FLAG_IGNORE_SELF: u32 = 0x0000_0008;
    /// Stream create flag: mark events caused by this process `OwnEvent`.
    pub const CREATE_FLAG_MARK_SELF: u32 = 0x0000_0020;
    /// Stream create flag: deliver as soon as possible (no defer).
    pub const CREATE_FLAG_NO_DEFER: u32 = 0x0000_0002;
    /// Stream create flag: callback gets CFTypes.
    pub const CREATE_FLAG_USE_CF_TYPES: u32 = 0x0000_0001;
    /// Stream create flag: extended data (CFDictionary per event).
    pub const CREATE_FLAG_USE_EXTENDED_DATA: u32 = 0x0000_0040;
    /// Stream create flag: full history.
    pub const CREATE_FLAG_FULL_HISTORY: u32 = 0x0000_0080;
    /// Every create flag known to this crate.
    pub const CREATE_FLAGS_KNOWN: u32 = 0x0000_00ff;

    /// No item flags: "something changed in this directory".
    pub const FLAG_NONE: u32 = 0x0000_0000;
    /// Rescan the subtree.
    pub const FLAG_MUST_SCAN_SUB_DIRS: u32 = 0x0000_0001;
    /// The path to a watched root changed.
    pub const FLAG_ROOT_CHANGED: u32 = 0x0000_0020;
    /// The item was created.
    pub const FLAG_ITEM_CREATED: u32 = 0x0000_0100;
    /// The item was removed.
    pub const FLAG_ITEM_REMOVED: u32 = 0x0000_0200;
    /// The item's inode metadata changed.
    pub const FLAG_ITEM_INODE_META_MOD: u32 = 0x0000_0400;
    /// The item was renamed (reported for both names).
    pub const FLAG_ITEM_RENAMED: u32 = 0x0000_0800;
    /// The item's content changed.
    pub const FLAG_ITEM_MODIFIED: u32 = 0x0000_1000;
    /// The item's extended attributes changed.
    pub const FLAG_ITEM_XATTR_MOD: u32 = 0x0000_8000;
    /// The item is a regular file.
    pub const FLAG_ITEM_IS_FILE: u32 = 0x0001_0000;
    /// The item is a directory.
    pub const FLAG_ITEM_IS_DIR: u32 = 0x0002_0000;
    /// The item is a symbolic link.
    pub const FLAG_ITEM_IS_SYMLINK: u32 = 0x0004_0000;
    /// The event was caused by the watching process (`MarkSelf`).
    pub const FLAG_OWN_EVENT: u32 = 0x0008_0000;
}

/// inotify (Linux `<sys/inotify.h>`).
pub mod inotify {
    /// File was accessed.
    pub const IN_ACCESS: u32 = 0x0000_0001;
    /// File was modified.
    pub const IN_MODIFY: u32 = 0x0000_0002;
    /// Metadata changed.
    pub const IN_ATTRIB: u32 = 0x0000_0004;
    /// Writable file closed.
    pub const IN_CLOSE_WRITE: u32 = 0x0000_0008;
    /// Unwritable file closed.
    pub const IN_CLOSE_NOWRITE: u32 = 0x0000_0010;
    /// File was opened.
    pub const IN_OPEN: u32 = 0x0000_0020;
    /// File was moved from X.
    pub const IN_MOVED_FROM: u32 = 0x0000_0040;
    /// File was moved to Y.
    pub const IN_MOVED_TO: u32 = 0x0000_0080;
    /// Subfile was created.
    pub const IN_CREATE: u32 = 0x0000_0100;
    /// Subfile was deleted.
    pub const IN_DELETE: u32 = 0x0000_0200;
    /// Self was deleted.
    pub const IN_DELETE_SELF: u32 = 0x0000_0400;
    /// Self was moved.
    pub const IN_MOVE_SELF: u32 = 0x0000_0800;
    /// Backing filesystem was unmounted.
    pub const IN_UNMOUNT: u32 = 0x0000_2000;
    /// Event queue overflowed.
    pub const IN_Q_OVERFLOW: u32 = 0x0000_4000;
    /// Watch was removed.
    pub const IN_IGNORED: u32 = 0x0000_8000;
    /// Only watch the path if it is a directory.
    pub const IN_ONLYDIR: u32 = 0x0100_0000;
    /// Do not follow a symlink.
    pub const IN_DONT_FOLLOW: u32 = 0x0200_0000;
    /// Exclude events on unlinked objects.
    pub const IN_EXCL_UNLINK: u32 = 0x0400_0000;
    /// Only create a watch, fail with EEXIST if one exists.
    pub const IN_MASK_CREATE: u32 = 0x1000_0000;
    /// Add to the mask of an already existing watch.
    pub const IN_MASK_ADD: u32 = 0x2000_0000;
    /// Event occurred against a directory.
    pub const IN_ISDIR: u32 = 0x4000_0000;
    /// Only send the event once.
    pub const IN_ONESHOT: u32 = 0x8000_0000;
    /// All events a watch can ask for.
    pub const IN_ALL_EVENTS: u32 = 0x0000_0fff;
    /// Every bit `inotify_add_watch` knows; a mask with none is `EINVAL`.
    pub const IN_ALL_BITS: u32 = IN_ALL_EVENTS
        | IN_UNMOUNT
        | IN_Q_OVERFLOW
        | IN_IGNORED
        | IN_ONLYDIR
        | IN_DONT_FOLLOW
        | IN_EXCL_UNLINK
        | IN_MASK_CREATE
        | IN_MASK_ADD
        | IN_ISDIR
        | IN_ONESHOT;
    /// Size of the fixed part of `struct inotify_event`.
    pub const EVENT_HEADER_SIZE: usize = 16;

    #[cfg(any(target_os = "linux", target_os = "android"))]
    const _: () = {
        assert!(IN_ACCESS == libc::IN_ACCESS);
        assert!(IN_MODIFY == libc::IN_MODIFY);
        assert!(IN_ATTRIB == libc::IN_ATTRIB);
        assert!(IN_CLOSE_WRITE == libc::IN_CLOSE_WRITE);
        assert!(IN_CLOSE_NOWRITE == libc::IN_CLOSE_NOWRITE);
        assert!(IN_OPEN == libc::IN_OPEN);
        assert!(IN_MOVED_FROM == libc::IN_MOVED_FROM);
        assert!(IN_MOVED_TO == libc::IN_MOVED_TO);
        assert!(IN_CREATE == libc::IN_CREATE);
        assert!(IN_DELETE == libc::IN_DELETE);
        assert!(IN_DELETE_SELF == libc::IN_DELETE_SELF);
        assert!(IN_MOVE_SELF == libc::IN_MOVE_SELF);
        assert!(IN_UNMOUNT == libc::IN_UNMOUNT);
        assert!(IN_Q_OVERFLOW == libc::IN_Q_OVERFLOW);
        assert!(IN_IGNORED == libc::IN_IGNORED);
        assert!(IN_ONLYDIR == libc::IN_ONLYDIR);
        assert!(IN_DONT_FOLLOW == libc::IN_DONT_FOLLOW);
        assert!(IN_EXCL_UNLINK == libc::IN_EXCL_UNLINK);
        assert!(IN_MASK_ADD == libc::IN_MASK_ADD);
        assert!(IN_MASK_CREATE == libc::IN_MASK_CREATE);
        assert!(IN_ISDIR == libc::IN_ISDIR);
        assert!(IN_ONESHOT == libc::IN_ONESHOT);
        assert!(IN_ALL_EVENTS == libc::IN_ALL_EVENTS);
        assert!(EVENT_HEADER_SIZE == std::mem::size_of::<libc::inotify_event>());
    };
}

/// The names of the flags set in a native record's `flags`, in bit order
/// (`["IN_CREATE", "IN_ISDIR"]`); bits without a name appear in hex. For
/// printing records (`agentfs watch --native`).
pub fn flag_names(api: u32, flags: u64) -> Vec<String> {
    const KQUEUE: &[(u32, &str)] = &[
        (kqueue::NOTE_DELETE, "NOTE_DELETE"),
        (kqueue::NOTE_WRITE, "NOTE_WRITE"),
        (kqueue::NOTE_EXTEND, "NOTE_EXTEND"),
        (kqueue::NOTE_ATTRIB, "NOTE_ATTRIB"),
        (kqueue::NOTE_LINK, "NOTE_LINK"),
        (kqueue::NOTE_RENAME, "NOTE_RENAME"),
        (kqueue::NOTE_REVOKE, "NOTE_REVOKE"),
    ];
    const FSEVENTS: &[(u32, &str)] = &[
        (fsevents::FLAG_MUST_SCAN_SUB_DIRS, "MustScanSubDirs"),
        (fsevents::FLAG_ROOT_CHANGED, "RootChanged"),
        (fsevents::FLAG_ITEM_CREATED, "ItemCreated"),
        (fsevents::FLAG_ITEM_REMOVED, "ItemRemoved"),
        (fsevents::FLAG_ITEM_INODE_META_MOD, "ItemInodeMetaMod"),
        (fsevents::FLAG_ITEM_RENAMED, "ItemRenamed"),
        (fsevents::FLAG_ITEM_MODIFIED, "ItemModified"),
        (fsevents::FLAG_ITEM_XATTR_MOD, "ItemXattrMod"),
        (fsevents::FLAG_ITEM_IS_FILE, "ItemIsFile"),
        (fsevents::FLAG_ITEM_IS_DIR, "ItemIsDir"),
        (fsevents::FLAG_ITEM_IS_SYMLINK, "ItemIsSymlink"),
        (fsevents::FLAG_OWN_EVENT, "OwnEvent"),
    ];
    const INOTIFY: &[(u32, &str)] = &[
        (inotify::IN_ACCESS, "IN_ACCESS"),
        (inotify::IN_MODIFY, "IN_MODIFY"),
        (inotify::IN_ATTRIB, "IN_ATTRIB"),
        (inotify::IN_CLOSE_WRITE, "IN_CLOSE_WRITE"),
        (inotify::IN_CLOSE_NOWRITE, "IN_CLOSE_NOWRITE"),
        (inotify::IN_OPEN, "IN_OPEN"),
        (inotify::IN_MOVED_FROM, "IN_MOVED_FROM"),
        (inotify::IN_MOVED_TO, "IN_MOVED_TO"),
        (inotify::IN_CREATE, "IN_CREATE"),
        (inotify::IN_DELETE, "IN_DELETE"),
        (inotify::IN_DELETE_SELF, "IN_DELETE_SELF"),
        (inotify::IN_MOVE_SELF, "IN_MOVE_SELF"),
        (inotify::IN_UNMOUNT, "IN_UNMOUNT"),
        (inotify::IN_Q_OVERFLOW, "IN_Q_OVERFLOW"),
        (inotify::IN_IGNORED, "IN_IGNORED"),
        (inotify::IN_ISDIR, "IN_ISDIR"),
    ];
    let table = match api {
        crate::api::KQUEUE => KQUEUE,
        crate::api::FSEVENTS => FSEVENTS,
        crate::api::INOTIFY => INOTIFY,
        _ => &[],
    };
    let mut rest = flags;
    let mut out = Vec::new();
    for bit in 0..64 {
        let b = 1u64 << bit;
        if flags & b == 0 {
            continue;
        }
        if let Some((_, n)) = table.iter().find(|(v, _)| u64::from(*v) == b) {
            out.push((*n).to_string());
            rest &= !b;
        }
    }
    if rest != 0 {
        out.push(format!("{rest:#x}"));
    }
    out
}

#[cfg(test)]
mod flag_name_tests {
    use super::*;
    use crate::api;

    #[test]
    fn names_in_bit_order_and_unknown_bits_in_hex() {
        assert_eq!(
            flag_names(
                api::INOTIFY,
                u64::from(inotify::IN_ISDIR | inotify::IN_CREATE)
            ),
            ["IN_CREATE", "IN_ISDIR"]
        );
        assert_eq!(
            flag_names(
                api::KQUEUE,
                u64::from(kqueue::NOTE_WRITE | kqueue::NOTE_EXTEND)
            ),
            ["NOTE_WRITE", "NOTE_EXTEND"]
        );
        assert_eq!(flag_names(api::FSEVENTS, 0x1_0000_0000), ["0x100000000"]);
        assert!(flag_names(api::FSEVENTS, 0).is_empty());
    }
}
