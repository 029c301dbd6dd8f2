//! Unit tests, and the comparison with real kernel records (Linux).

use super::*;

fn watch(id: u64, path: &str, is_dir: bool, mask: u32) -> WatchSpec {
    WatchSpec {
        watch_id: id,
        pid: 10,
        instance: 1,
        handle: id,
        branch: "b".into(),
        path: path.into(),
        visible_root: "".into(),
        is_dir,
        flags: u64::from(mask),
    }
}

fn ev(seq: u64, kind: EventKind, path: &str, to: &str, is_dir: bool) -> CoreEvent {
    CoreEvent {
        seq,
        pid: 0,
        kind,
        branch: "b".into(),
        path: path.into(),
        to: to.into(),
        is_dir,
        size_before: 1,
        size_after: 5,
    }
}

#[test]
fn names_are_padded_like_the_kernel() {
    assert_eq!(padded_name_len(0), 0);
    assert_eq!(padded_name_len(1), 16);
    assert_eq!(padded_name_len(15), 16);
    assert_eq!(padded_name_len(16), 32);
    let p = InotifyProvider;
    let w = watch(4, "", true, IN_ALL_EVENTS);
    let recs = p
        .synthesize(&[w], &ev(1, EventKind::CREATED, "abc", "", false))
        .unwrap();
    let b = p.encode(&recs).unwrap();
    assert_eq!(b.len(), 32);
    let e = InotifyEvent::parse_all(&b).unwrap();
    assert_eq!(
        e,
        vec![InotifyEvent {
            wd: 4,
            mask: IN_CREATE,
            cookie: 0,
            len: 16,
            name: b"abc".to_vec()
        }]
    );
    assert!(InotifyEvent::parse_all(&b[..20]).is_none());
}

#[test]
fn onlydir_refuses_files_with_enotdir() {
    let p = InotifyProvider;
    let e = p
        .register(&[], watch(1, "f", false, IN_MODIFY | IN_ONLYDIR))
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::NOT_DIRECTORY);
    assert_eq!(e.errno, libc::ENOTDIR);
    let ok = p
        .register(&[], watch(1, "/d/", true, IN_CREATE | IN_ONLYDIR))
        .unwrap();
    assert_eq!(ok.path, "d");
    assert_eq!(
        ok.flags as u32, IN_CREATE,
        "registration-only bits are dropped"
    );
}

#[test]
fn mask_add_merges_and_plain_re_add_replaces() {
    let p = InotifyProvider;
    let old = watch(1, "d", true, IN_CREATE);
    let mut add = watch(9, "d", true, IN_DELETE | IN_MASK_ADD);
    add.handle = 77;
    let r = p.register(std::slice::from_ref(&old), add).unwrap();
    assert_eq!((r.watch_id, r.handle), (1, 1), "same watch, same wd");
    assert_eq!(r.flags as u32, IN_CREATE | IN_DELETE);
    let r = p
        .register(std::slice::from_ref(&old), watch(9, "d", true, IN_DELETE))
        .unwrap();
    assert_eq!((r.watch_id, r.flags as u32), (1, IN_DELETE));
    let e = p
        .register(
            std::slice::from_ref(&old),
            watch(9, "d", true, IN_DELETE | IN_MASK_CREATE),
        )
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::ALREADY_EXISTS);
    let e = p
        .register(&[], watch(9, "d", true, 0x0800_0000))
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::INVALID_ARGUMENT);
}

#[test]
fn oneshot_retires_after_the_first_event() {
    let p = InotifyProvider;
    let w = watch(1, "d", true, IN_CREATE | IN_ONESHOT);
    let r = p
        .synthesize(&[w], &ev(1, EventKind::CREATED, "d/x", "", false))
        .unwrap();
    let flags: Vec<u32> = r.iter().map(|r| r.flags as u32).collect();
    assert_eq!(flags, vec![IN_CREATE, IN_IGNORED]);
    assert!(!r[0].retire_watch && r[1].retire_watch);
}

#[test]
fn coalescing_merges_identical_tail_events_only() {
    let p = InotifyProvider;
    let w = watch(1, "f", false, IN_ALL_EVENTS);
    let mut recs = Vec::new();
    for seq in 0..1000 {
        recs.extend(
            p.synthesize(
                std::slice::from_ref(&w),
                &ev(seq, EventKind::MODIFIED, "f", "", false),
            )
            .unwrap(),
        );
    }
    recs.extend(
        p.synthesize(
            std::slice::from_ref(&w),
            &ev(1000, EventKind::ATTRIBUTES_CHANGED, "f", "", false),
        )
        .unwrap(),
    );
    recs.extend(
        p.synthesize(
            std::slice::from_ref(&w),
            &ev(1001, EventKind::MODIFIED, "f", "", false),
        )
        .unwrap(),
    );
    let c = p.coalesce(recs).unwrap();
    let flags: Vec<u32> = c.iter().map(|r| r.flags as u32).collect();
    assert_eq!(flags, vec![IN_MODIFY, IN_ATTRIB, IN_MODIFY]);
    assert_eq!(c[0].seq, 999);
}

#[cfg(target_os = "linux")]
mod kernel {
    //! The same operation through the real kernel and through the provider
    //! must give the same bytes (cookies compared by pairing, not value).

    use std::{
        ffi::CString,
        fs,
        io::Write,
        os::unix::ffi::OsStrExt,
        path::{Path, PathBuf},
    };

    use super::*;

    const MASK: u32 = IN_CREATE
        | IN_DELETE
        | IN_MODIFY
        | IN_ATTRIB
        | IN_MOVED_FROM
        | IN_MOVED_TO
        | IN_DELETE_SELF
        | IN_MOVE_SELF;

    struct Inotify(i32);

    impl Inotify {
        fn new() -> Self {
            // SAFETY: plain syscall wrapper; the returned fd is owned by Self.
            let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
            assert!(
                fd >= 0,
                "inotify_init1: {}",
                std::io::Error::last_os_error()
            );
            Self(fd)
        }
        fn add(&self, p: &Path, mask: u32) -> std::io::Result<i32> {
            let c = CString::new(p.as_os_str().as_bytes()).unwrap();
            // SAFETY: `c` is a valid NUL-terminated path for the call's duration.
            let wd = unsafe { libc::inotify_add_watch(self.0, c.as_ptr(), mask) };
            if wd < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(wd)
            }
        }
        fn read_all(&self) -> Vec<u8> {
            let mut buf = vec![0u8; 65536];
            // SAFETY: `buf` is writable for its length; the fd is non-blocking.
            let n = unsafe { libc::read(self.0, buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                assert_eq!(e.raw_os_error(), Some(libc::EAGAIN), "read: {e}");
                return Vec::new();
            }
            buf.truncate(n as usize);
            buf
        }
    }

    impl Drop for Inotify {
        fn drop(&mut self) {
            // SAFETY: we own the fd.
            unsafe { libc::close(self.0) };
        }
    }

    /// Replaces cookie values by their order of first appearance.
    fn normalise(mut evs: Vec<InotifyEvent>) -> Vec<InotifyEvent> {
        let mut seen: Vec<u32> = Vec::new();
        for e in &mut evs {
            if e.cookie != 0 {
                let i = seen.iter().position(|&c| c == e.cookie).unwrap_or_else(|| {
                    seen.push(e.cookie);
                    seen.len() - 1
                });
                e.cookie = i as u32 + 1;
            }
        }
        evs
    }

    /// Sets up `files`/`dirs` in a tempdir, watches `watched` (rel path,
    /// is_dir) in the kernel and in the provider, runs `op`, and compares.
    fn compare(
        what: &str,
        dirs: &[&str],
        files: &[&str],
        watched: &[(&str, bool)],
        op: impl FnOnce(&Path),
        events: &[CoreEvent],
    ) {
        compare_with_mask(what, MASK, dirs, files, watched, op, events)
    }

    #[allow(clippy::too_many_arguments)]
    fn compare_with_mask(
        what: &str,
        mask: u32,
        dirs: &[&str],
        files: &[&str],
        watched: &[(&str, bool)],
        op: impl FnOnce(&Path),
        events: &[CoreEvent],
    ) {
        let t = tempfile::tempdir().unwrap();
        let root: PathBuf = t.path().to_path_buf();
        for d in dirs {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        for f in files {
            fs::write(root.join(f), b"x").unwrap();
        }
        let ino = Inotify::new();
        let p = InotifyProvider;
        let mut specs: Vec<WatchSpec> = Vec::new();
        for (i, (rel, is_dir)) in watched.iter().enumerate() {
            let wd = ino.add(&root.join(rel), mask).unwrap();
            let mut s = watch(i as u64 + 1, rel, *is_dir, mask);
            s.handle = wd as u64;
            specs.push(p.register(&specs, s).unwrap());
        }
        op(&root);
        let kernel = normalise(InotifyEvent::parse_all(&ino.read_all()).unwrap());
        let mut recs = Vec::new();
        for e in events {
            let r = p.synthesize(&specs, e).unwrap();
            specs.retain(|s| !r.iter().any(|r| r.retire_watch && r.watch_id == s.watch_id));
            recs.extend(r);
        }
        let ours = normalise(InotifyEvent::parse_all(&p.encode(&recs).unwrap()).unwrap());
        assert_eq!(ours, kernel, "{what}: provider vs kernel");
    }

    #[test]
    fn records_match_the_kernel_byte_for_byte() {
        use EventKind as K;
        compare(
            "create",
            &[],
            &[],
            &[("", true)],
            |r| drop(fs::File::create(r.join("abc")).unwrap()),
            &[ev(1, K::CREATED, "abc", "", false)],
        );
        compare(
            "mkdir with a 16-byte name",
            &[],
            &[],
            &[("", true)],
            |r| fs::create_dir(r.join("a".repeat(16))).unwrap(),
            &[ev(1, K::CREATED, &"a".repeat(16), "", true)],
        );
        compare(
            "unlink",
            &[],
            &["f"],
            &[("", true), ("f", false)],
            |r| fs::remove_file(r.join("f")).unwrap(),
            &[ev(1, K::REMOVED, "f", "", false)],
        );
        compare(
            "rmdir",
            &["s"],
            &[],
            &[("", true), ("s", true)],
            |r| fs::remove_dir(r.join("s")).unwrap(),
            &[ev(1, K::REMOVED, "s", "", true)],
        );
        compare(
            "append",
            &[],
            &["f"],
            &[("", true), ("f", false)],
            |r| {
                let mut f = fs::OpenOptions::new()
                    .append(true)
                    .open(r.join("f"))
                    .unwrap();
                f.write_all(b"more").unwrap();
            },
            &[ev(1, K::MODIFIED, "f", "", false)],
        );
        compare(
            "chmod file",
            &[],
            &["f"],
            &[("", true), ("f", false)],
            |r| {
                use std::os::unix::fs::PermissionsExt;
                fs::set_permissions(r.join("f"), fs::Permissions::from_mode(0o600)).unwrap()
            },
            &[ev(1, K::ATTRIBUTES_CHANGED, "f", "", false)],
        );
        compare(
            "chmod directory",
            &["s"],
            &[],
            &[("", true), ("s", true)],
            |r| {
                use std::os::unix::fs::PermissionsExt;
                fs::set_permissions(r.join("s"), fs::Permissions::from_mode(0o700)).unwrap()
            },
            &[ev(1, K::ATTRIBUTES_CHANGED, "s", "", true)],
        );
        compare(
            "rename in one directory",
            &[],
            &["a"],
            &[("", true), ("a", false)],
            |r| fs::rename(r.join("a"), r.join("b")).unwrap(),
            &[ev(1, K::RENAMED, "a", "b", false)],
        );
        compare(
            "rename over an existing file",
            &[],
            &["a", "b"],
            &[("", true), ("a", false), ("b", false)],
            |r| fs::rename(r.join("a"), r.join("b")).unwrap(),
            &[ev(1, K::RENAMED, "a", "b", false)],
        );
        compare(
            "rename a directory across parents",
            &["x/s", "y"],
            &[],
            &[("x", true), ("y", true), ("x/s", true)],
            |r| fs::rename(r.join("x/s"), r.join("y/t")).unwrap(),
            &[ev(1, K::RENAMED, "x/s", "y/t", true)],
        );
        compare(
            "delete then recreate",
            &[],
            &["f"],
            &[("", true), ("f", false)],
            |r| {
                fs::remove_file(r.join("f")).unwrap();
                fs::write(r.join("f"), b"").unwrap();
            },
            &[
                ev(1, K::REMOVED, "f", "", false),
                ev(2, K::CREATED, "f", "", false),
            ],
        );
    }

    #[test]
    fn oneshot_and_mask_add_match_the_kernel() {
        use EventKind as K;
        compare_with_mask(
            "IN_ONESHOT",
            MASK | IN_ONESHOT,
            &[],
            &[],
            &[("", true)],
            |r| {
                fs::write(r.join("a"), b"").unwrap();
                fs::write(r.join("b"), b"").unwrap();
            },
            &[
                ev(1, K::CREATED, "a", "", false),
                ev(2, K::CREATED, "b", "", false),
            ],
        );
        // IN_MASK_ADD: the kernel returns the same wd with the masks merged.
        let t = tempfile::tempdir().unwrap();
        let ino = Inotify::new();
        let wd1 = ino.add(t.path(), IN_CREATE).unwrap();
        let wd2 = ino.add(t.path(), IN_DELETE | IN_MASK_ADD).unwrap();
        assert_eq!(wd1, wd2);
        let p = InotifyProvider;
        let mut first = watch(1, "", true, IN_CREATE);
        first.handle = wd1 as u64;
        let first = p.register(&[], first).unwrap();
        let merged = p
            .register(
                std::slice::from_ref(&first),
                watch(2, "", true, IN_DELETE | IN_MASK_ADD),
            )
            .unwrap();
        assert_eq!(merged.handle, wd2 as u64);
        fs::write(t.path().join("x"), b"").unwrap();
        fs::remove_file(t.path().join("x")).unwrap();
        let kernel = InotifyEvent::parse_all(&ino.read_all()).unwrap();
        let mut recs = Vec::new();
        for e in [
            ev(1, K::CREATED, "x", "", false),
            ev(2, K::REMOVED, "x", "", false),
        ] {
            recs.extend(p.synthesize(std::slice::from_ref(&merged), &e).unwrap());
        }
        let ours = InotifyEvent::parse_all(&p.encode(&recs).unwrap()).unwrap();
        assert_eq!(ours, kernel);
    }

    #[test]
    fn onlydir_fails_like_the_kernel() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("f"), b"").unwrap();
        let kernel = Inotify::new()
            .add(&t.path().join("f"), IN_MODIFY | IN_ONLYDIR)
            .unwrap_err();
        let ours = InotifyProvider
            .register(&[], watch(1, "f", false, IN_MODIFY | IN_ONLYDIR))
            .unwrap_err();
        assert_eq!(kernel.raw_os_error(), Some(ours.errno));
        let kernel = Inotify::new().add(t.path(), 0x0800_0000).unwrap_err();
        let ours = InotifyProvider
            .register(&[], watch(1, "", true, 0x0800_0000))
            .unwrap_err();
        assert_eq!(kernel.raw_os_error(), Some(ours.errno));
    }
}
