//! Overlay semantics through the core API, on the real mock (with and
//! without reflink) and hostfs plugins.

mod common;

use std::{ffi::OsStr, fs, path::Path, time::SystemTime};

use agentfs_core::{ChangeType, CoreError, FileKind, Origin, Store, WORK_DIR};
use common::*;

/// Runs `f` once per backstore flavour, each with a fresh store over a
/// fresh copy of the sample base, then checks the base is untouched.
/// The btrfs flavour runs the btrfs plugin (layers are subvolumes, native
/// snapshots, reflink) on a loop-mounted btrfs holding base and store.
fn each(f: impl Fn(&str, &Store, &Path)) {
    for flavour in ["mock", "mock-copy", "hostfs", "btrfs"] {
        let mounted = match flavour {
            "btrfs" => match agentfs_testfs::mount_or_skip(
                agentfs_testfs::FsKind::Btrfs,
                256,
                "overlay tests on the btrfs plugin",
            ) {
                Some(fs) => Some(fs),
                None => continue,
            },
            _ => None,
        };
        let t = match &mounted {
            Some(fs) => tempfile::tempdir_in(fs.path()).unwrap(),
            None => tempfile::tempdir().unwrap(),
        };
        let base = t.path().join("base");
        make_base(&base);
        let before = image_dir(&base);
        let b = match flavour {
            "mock" => mock(),
            "mock-copy" => mock_copying(),
            "btrfs" => btrfs(&t.path().join("store")),
            _ => hostfs(&t.path().join("store")),
        };
        let s = store(b, Some(&base));
        f(flavour, &s, &base);
        assert_eq!(image_dir(&base), before, "{flavour}: the base changed");
    }
}

#[test]
fn reads_come_from_the_base_and_writes_land_in_the_branch() {
    each(|fl, s, base| {
        s.create_branch("b", None, None).unwrap();
        let t = s.branch("b");
        assert_eq!(image_tree(&t), image_dir(base), "{fl}: fresh branch = base");
        assert_eq!(t.stat("src/main.rs").unwrap().origin, Origin::Base);
        t.write_file("src/main.rs", b"fn main() { changed() }\n")
            .unwrap();
        t.write_file("new.txt", b"new").unwrap();
        assert_eq!(
            t.read_file("src/main.rs").unwrap(),
            b"fn main() { changed() }\n"
        );
        assert_eq!(t.stat("src/main.rs").unwrap().origin, Origin::Active);
        assert_eq!(t.read_file("new.txt").unwrap(), b"new");
        // Reading through the base symlink sees the branch's version.
        assert_eq!(
            t.read_file("main-link").unwrap(),
            b"fn main() { changed() }\n"
        );
        // A second branch is untouched.
        s.create_branch("c", None, None).unwrap();
        assert_eq!(image_tree(&s.branch("c")), image_dir(base), "{fl}");
    });
}

#[test]
fn copy_up_keeps_mode_times_and_untouched_bytes() {
    each(|fl, s, base| {
        s.create_branch("b", None, None).unwrap();
        let t = s.branch("b");
        let before = t.stat("run.sh").unwrap();
        t.chmod("run.sh", 0o750).unwrap();
        let after = t.stat("run.sh").unwrap();
        assert_eq!(after.mode, 0o750, "{fl}");
        assert_eq!(after.mtime, before.mtime, "{fl}: copy-up keeps mtime");
        assert_eq!(
            t.read_file("run.sh").unwrap(),
            fs::read(base.join("run.sh")).unwrap()
        );
        t.write_at("src/lib.rs", 4, b"XX").unwrap();
        assert_eq!(
            t.read_file("src/lib.rs").unwrap(),
            b"pub XX f() {}\n",
            "{fl}"
        );
        t.write_at("src/lib.rs", 20, b"!").unwrap();
        let d = t.read_file("src/lib.rs").unwrap();
        assert_eq!(d.len(), 21);
        assert_eq!(&d[14..20], &[0u8; 6]);
        // Parent directories were copied up with their mode.
        let ds = t.stat("src").unwrap();
        assert_eq!(ds.origin, Origin::Active);
        assert_eq!(
            ds.mode,
            fs::metadata(base.join("src")).unwrap().permissions().mode() & 0o7777
        );
        t.truncate("src/nested/deep.txt", 2).unwrap();
        assert_eq!(t.read_file("src/nested/deep.txt").unwrap(), b"de");
        t.truncate("docs/guide.md", 0).unwrap();
        assert_eq!(t.read_file("docs/guide.md").unwrap(), b"");
        let (reflinked, copied) = s.copy_stats();
        match fl {
            "mock" => assert!(
                reflinked == 0 && copied > 0,
                "base is outside the mock: copies"
            ),
            "mock-copy" => assert_eq!(reflinked, 0),
            _ => {}
        }
    });
}

use std::os::unix::fs::PermissionsExt;

#[test]
fn unlink_whites_out_and_the_name_can_come_back() {
    each(|fl, s, _| {
        s.create_branch("b", None, None).unwrap();
        let t = s.branch("b");
        t.unlink("README.md").unwrap();
        assert!(!t.exists("README.md").unwrap(), "{fl}");
        assert!(matches!(
            t.read_file("README.md"),
            Err(CoreError::NotFound(_))
        ));
        let names: Vec<_> = t
            .read_dir("")
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert!(!names.iter().any(|n| n == "README.md"), "{fl}: {names:?}");
        // The base's marker-like file is a plain file, visible and harmless.
        assert!(
            names.iter().any(|n| n == ".agentfs~wh.README.md"),
            "{fl}: {names:?}"
        );
        t.write_file("README.md", b"again").unwrap();
        assert_eq!(t.read_file("README.md").unwrap(), b"again");
        // Removing a file that only the branch has leaves no whiteout need.
        t.write_file("tmp.txt", b"x").unwrap();
        t.unlink("tmp.txt").unwrap();
        assert!(!t.exists("tmp.txt").unwrap());
        assert!(matches!(t.unlink("src"), Err(CoreError::IsDirectory(_))));
        assert!(matches!(t.unlink("nope"), Err(CoreError::NotFound(_))));
        // A symlink is removed, not its target.
        t.unlink("main-link").unwrap();
        assert!(t.exists("src/main.rs").unwrap());
    });
}

#[test]
fn deleted_directories_come_back_empty() {
    each(|fl, s, _| {
        s.create_branch("b", None, None).unwrap();
        let t = s.branch("b");
        assert!(matches!(t.rmdir("src"), Err(CoreError::NotEmpty(_))));
        t.remove_all("src").unwrap();
        assert!(!t.exists("src").unwrap(), "{fl}");
        t.mkdir("src", 0o700).unwrap();
        assert!(
            t.read_dir("src").unwrap().is_empty(),
            "{fl}: recreated dir is opaque"
        );
        assert_eq!(t.stat("src").unwrap().mode, 0o700);
        t.write_file("src/x", b"x").unwrap();
        assert_eq!(t.read_dir("src").unwrap().len(), 1);
        assert!(matches!(
            t.mkdir("src", 0o755),
            Err(CoreError::AlreadyExists(_))
        ));
        assert!(matches!(
            t.rmdir("README.md"),
            Err(CoreError::NotDirectory(_))
        ));
        assert!(matches!(t.rmdir(""), Err(CoreError::InvalidArgument(_))));
        // A directory only in the branch goes without a trace.
        t.mkdir("only", 0o755).unwrap();
        t.rmdir("only").unwrap();
        assert!(!t.exists("only").unwrap());
    });
}

#[test]
fn rename_files_and_directories_from_lower_layers() {
    each(|fl, s, _| {
        s.create_branch("b", None, None).unwrap();
        let t = s.branch("b");
        // A base file.
        t.rename("README.md", "docs/README.md").unwrap();
        assert!(!t.exists("README.md").unwrap(), "{fl}");
        assert_eq!(t.read_file("docs/README.md").unwrap(), b"# project\n");
        // A base directory with nested content, into a new place.
        t.rename("src", "code").unwrap();
        assert!(!t.exists("src").unwrap(), "{fl}");
        assert_eq!(t.read_file("code/nested/deep.txt").unwrap(), b"deep\n");
        assert_eq!(t.read_file("code/main.rs").unwrap(), b"fn main() {}\n");
        // And back: the old name was whited out, the new dir is opaque.
        t.rename("code", "src").unwrap();
        assert!(!t.exists("code").unwrap());
        assert_eq!(t.read_dir("src").unwrap().len(), 3, "{fl}");
        // A directory merged from branch and base.
        t.write_file("docs/extra.md", b"extra").unwrap();
        t.rename("docs", "manual").unwrap();
        let names: Vec<_> = t
            .read_dir("manual")
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, ["README.md", "extra.md", "guide.md"], "{fl}");
        assert!(!t.exists("docs").unwrap());
        // A branch-only file over an existing base file.
        t.write_file("a.txt", b"a").unwrap();
        t.rename("a.txt", "run.sh").unwrap();
        assert_eq!(t.read_file("run.sh").unwrap(), b"a");
        assert!(!t.exists("a.txt").unwrap());
        // Symlink from the base, renamed, still points where it did.
        t.rename("main-link", "ml").unwrap();
        assert_eq!(t.read_link("ml").unwrap(), "src/main.rs");
        // Same entry: nothing happens.
        t.rename("ml", "ml").unwrap();
        assert!(t.exists("ml").unwrap());
    });
}

#[test]
fn rename_follows_posix_rules() {
    each(|fl, s, _| {
        s.create_branch("b", None, None).unwrap();
        let t = s.branch("b");
        let e = t.rename("src", "src/nested/x").unwrap_err();
        assert!(matches!(e, CoreError::InvalidArgument(_)), "{fl}: {e}");
        let e = t.rename("src", "docs").unwrap_err();
        assert!(matches!(e, CoreError::NotEmpty(_)), "{fl}: {e}");
        let e = t.rename("src", "README.md").unwrap_err();
        assert!(matches!(e, CoreError::NotDirectory(_)), "{fl}: {e}");
        let e = t.rename("README.md", "src").unwrap_err();
        assert!(matches!(e, CoreError::IsDirectory(_)), "{fl}: {e}");
        let e = t.rename("nope", "x").unwrap_err();
        assert!(matches!(e, CoreError::NotFound(_)), "{fl}: {e}");
        let e = t.rename("README.md", "nodir/x").unwrap_err();
        assert!(matches!(e, CoreError::NotFound(_)), "{fl}: {e}");
        // A directory over an empty directory replaces it: one in the
        // branch (emptied of base content), one only in the branch.
        t.remove_all("docs").unwrap();
        t.mkdir("docs", 0o755).unwrap();
        t.rename("src", "docs").unwrap();
        assert!(!t.exists("src").unwrap(), "{fl}");
        assert_eq!(t.read_dir("docs").unwrap().len(), 3, "{fl}");
        t.mkdir("e1", 0o755).unwrap();
        t.mkdir("e2", 0o755).unwrap();
        t.write_file("e1/f", b"f").unwrap();
        t.rename("e1", "e2").unwrap();
        assert_eq!(t.read_file("e2/f").unwrap(), b"f");
        assert!(!t.exists("e1").unwrap());
    });
}

#[test]
fn symlinks_resolve_inside_the_branch_only() {
    each(|fl, s, _| {
        s.create_branch("b", None, None).unwrap();
        let t = s.branch("b");
        assert_eq!(t.read_link("main-link").unwrap(), "src/main.rs");
        assert_eq!(t.stat("main-link").unwrap().kind, FileKind::File);
        assert_eq!(t.lstat("main-link").unwrap().kind, FileKind::Symlink);
        t.symlink("../src", "docs/up").unwrap();
        assert_eq!(
            t.read_file("docs/up/main.rs").unwrap(),
            b"fn main() {}\n",
            "{fl}"
        );
        assert_eq!(t.read_dir("docs/up").unwrap().len(), 3);
        t.symlink("/etc/passwd", "abs").unwrap();
        t.symlink("../../../../etc/passwd", "climb").unwrap();
        t.symlink("loop2", "loop1").unwrap();
        t.symlink("loop1", "loop2").unwrap();
        for p in ["abs", "climb"] {
            let e = t.read_file(p).unwrap_err();
            assert!(matches!(e, CoreError::Escapes { .. }), "{fl} {p}: {e}");
            let e = t.write_file(p, b"x").unwrap_err();
            assert!(matches!(e, CoreError::Escapes { .. }), "{fl} {p}: {e}");
        }
        assert!(matches!(
            t.read_file("loop1"),
            Err(CoreError::SymlinkLoop(_))
        ));
        // Writing through an in-branch link writes the target.
        t.write_file("main-link", b"via link").unwrap();
        assert_eq!(t.read_file("src/main.rs").unwrap(), b"via link");
        assert_eq!(t.lstat("main-link").unwrap().kind, FileKind::Symlink);
        assert!(matches!(
            t.symlink("x", "README.md"),
            Err(CoreError::AlreadyExists(_))
        ));
    });
}

#[test]
fn hostile_paths_never_leave_the_branch() {
    each(|fl, s, base| {
        s.create_branch("b", None, None).unwrap();
        let t = s.branch("b");
        for p in ["/etc/passwd", "../x", "src/../../x", "a\0b"] {
            for r in [
                t.read_file(p).map(drop),
                t.write_file(p, b"x"),
                t.mkdir(p, 0o755),
                t.unlink(p),
                t.rename("README.md", p),
                t.symlink("x", p),
            ] {
                assert!(
                    matches!(r, Err(CoreError::InvalidPath { .. })),
                    "{fl}: {p:?} gave {r:?}"
                );
            }
        }
        // Nothing appeared next to the base or in its parent.
        let parent = base.parent().unwrap();
        assert!(!parent.join("x").exists());
    });
}

#[test]
fn attributes_and_links() {
    each(|fl, s, _| {
        s.create_branch("b", None, None).unwrap();
        let t = s.branch("b");
        let when = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
        t.set_times("docs/guide.md", None, Some(when)).unwrap();
        assert_eq!(t.stat("docs/guide.md").unwrap().mtime, when, "{fl}");
        t.chmod("docs", 0o700).unwrap();
        assert_eq!(t.stat("docs").unwrap().mode, 0o700);
        assert_eq!(
            t.read_dir("docs").unwrap().len(),
            1,
            "{fl}: dir copy-up keeps content"
        );
        let e = t.link("README.md", "hard").unwrap_err();
        assert!(matches!(e, CoreError::Unsupported(_)), "{fl}: {e}");
        let name = OsStr::new("user.agentfs.test");
        match t.set_xattr("README.md", name, b"v") {
            Ok(()) => {
                assert_eq!(t.get_xattr("README.md", name).unwrap().unwrap(), b"v");
                assert!(t.list_xattr("README.md").unwrap().iter().any(|n| n == name));
                t.remove_xattr("README.md", name).unwrap();
                assert_eq!(t.get_xattr("README.md", name).unwrap(), None);
            }
            Err(CoreError::Unsupported(m)) => eprintln!("{fl}: xattrs unsupported here: {m}"),
            Err(e) => panic!("{fl}: {e}"),
        }
    });
}

#[test]
fn reserved_looking_names_are_ordinary_files() {
    each(|fl, s, _| {
        s.create_branch("b", None, None).unwrap();
        let t = s.branch("b");
        for n in [
            ".agentfs~opaque",
            ".agentfs~wh.docs",
            ".agentfs~work",
            ".agentfs~esc.x",
        ] {
            t.write_file(n, n.as_bytes()).unwrap();
        }
        t.mkdir("docs/.agentfs~opaque", 0o755).unwrap();
        assert_eq!(
            t.read_file(".agentfs~wh.docs").unwrap(),
            b".agentfs~wh.docs"
        );
        assert!(
            t.exists("docs/guide.md").unwrap(),
            "{fl}: no accidental whiteout"
        );
        assert_eq!(
            t.read_dir("docs").unwrap().len(),
            2,
            "{fl}: no accidental opaque"
        );
        t.unlink(".agentfs~wh.README.md").unwrap();
        assert!(t.exists("README.md").unwrap());
        assert!(!t.exists(".agentfs~wh.README.md").unwrap());
    });
}

#[test]
fn long_names_get_whiteouts_too() {
    each(|fl, s, base| {
        let long = "L".repeat(250);
        fs::write(base.join(&long), b"long").unwrap();
        s.create_branch("b", None, None).unwrap();
        let t = s.branch("b");
        assert_eq!(t.read_file(long.as_str()).unwrap(), b"long");
        t.unlink(long.as_str()).unwrap();
        assert!(!t.exists(long.as_str()).unwrap(), "{fl}");
        assert!(!t
            .read_dir("")
            .unwrap()
            .iter()
            .any(|e| e.name == long.as_str()));
        fs::remove_file(base.join(&long)).unwrap();
    });
}

#[test]
fn snapshots_are_isolated_and_branches_grow_from_them() {
    each(|fl, s, base| {
        s.create_branch("main", None, None).unwrap();
        let t = s.branch("main");
        t.write_file("a.txt", b"one").unwrap();
        t.unlink("README.md").unwrap();
        let snap = s.create_snapshot("main", Some("s1")).unwrap();
        assert_eq!(snap.name, "s1");
        let frozen = s.layer_store().layer_path(&snap.layer).unwrap();
        assert!(!frozen.join(WORK_DIR).exists(), "{fl}: temporaries frozen");
        let at_snapshot = image_tree(&s.snapshot("s1"));
        t.write_file("a.txt", b"two").unwrap();
        t.write_file("README.md", b"back").unwrap();
        t.remove_all("src").unwrap();
        assert_eq!(
            image_tree(&s.snapshot("s1")),
            at_snapshot,
            "{fl}: snapshot changed"
        );
        assert_eq!(s.snapshot("s1").read_file("a.txt").unwrap(), b"one");
        // Snapshots are read-only.
        assert!(matches!(
            s.snapshot("s1").write_file("x", b"x"),
            Err(CoreError::ReadOnly(_))
        ));
        // A branch from the snapshot starts there and diverges alone.
        s.create_branch("fork", Some("s1"), None).unwrap();
        let f = s.branch("fork");
        assert_eq!(image_tree(&f), at_snapshot);
        f.write_file("a.txt", b"fork").unwrap();
        assert_eq!(t.read_file("a.txt").unwrap(), b"two");
        assert_eq!(s.snapshot("s1").read_file("a.txt").unwrap(), b"one");
        // Deleting a snapshot others build on is Busy and changes nothing.
        let e = s.delete_snapshot("s1").unwrap_err();
        assert!(matches!(e, CoreError::Busy { .. }), "{fl}: {e}");
        assert!(e.to_string().contains("fork"), "{e}");
        assert_eq!(image_tree(&s.snapshot("s1")), at_snapshot);
        s.delete_branch("fork").unwrap();
        let native = s.list_snapshots().unwrap()[0].native;
        if native {
            s.delete_snapshot("s1").unwrap();
        } else {
            // Without native snapshots, main itself is built on s1.
            assert!(matches!(
                s.delete_snapshot("s1"),
                Err(CoreError::Busy { .. })
            ));
            s.delete_branch("main").unwrap();
            s.delete_snapshot("s1").unwrap();
        }
        assert!(s.list_snapshots().unwrap().is_empty());
        assert!(base.join("README.md").exists());
    });
}

#[test]
fn branch_and_snapshot_names_are_checked() {
    each(|_, s, _| {
        for bad in ["", "../x", "a/b", ".hidden", "-opt"] {
            assert!(matches!(
                s.create_branch(bad, None, None),
                Err(CoreError::InvalidName { .. })
            ));
        }
        s.create_branch("b", None, None).unwrap();
        assert!(matches!(
            s.create_branch("b", None, None),
            Err(CoreError::AlreadyExists(_))
        ));
        assert!(matches!(
            s.create_branch("c", Some("nope"), None),
            Err(CoreError::NotFound(_))
        ));
        assert!(matches!(
            s.create_snapshot("nope", None),
            Err(CoreError::NotFound(_))
        ));
        let auto = s.create_snapshot("b", None).unwrap();
        assert_eq!(auto.name, "b.1");
        assert_eq!(s.create_snapshot("b", None).unwrap().name, "b.2");
        assert!(matches!(
            s.create_snapshot("b", Some("b.1")),
            Err(CoreError::AlreadyExists(_))
        ));
        assert!(matches!(s.delete_branch("zz"), Err(CoreError::NotFound(_))));
        assert!(matches!(
            s.delete_snapshot("zz"),
            Err(CoreError::NotFound(_))
        ));
    });
}

#[test]
fn diff_lists_added_modified_and_deleted() {
    each(|fl, s, _| {
        s.create_branch("b", None, None).unwrap();
        let t = s.branch("b");
        t.write_file("src/main.rs", b"changed").unwrap();
        t.write_file("new.txt", b"n").unwrap();
        t.unlink("README.md").unwrap();
        t.remove_all("docs").unwrap();
        t.chmod("src/lib.rs", 0o600).unwrap();
        t.write_file("src/nested/deep.txt", b"deep\n").unwrap(); // same bytes
        let d = diff_of(s, "b", None);
        use ChangeType::*;
        assert_eq!(
            d,
            vec![
                ("README.md".into(), Deleted),
                ("docs".into(), Deleted),
                ("docs/guide.md".into(), Deleted),
                ("new.txt".into(), Added),
                ("src/lib.rs".into(), Modified),
                ("src/main.rs".into(), Modified),
            ],
            "{fl}"
        );
        s.create_snapshot("b", Some("s")).unwrap();
        assert!(s.diff("b", Some("s")).unwrap().is_empty(), "{fl}");
        t.rename("new.txt", "newer.txt").unwrap();
        let d = diff_of(s, "b", Some("s"));
        assert_eq!(
            d,
            vec![("new.txt".into(), Deleted), ("newer.txt".into(), Added)],
            "{fl}"
        );
    });
}

#[test]
fn deep_chains_are_compacted_without_changing_the_view() {
    let t = tempfile::tempdir().unwrap();
    let base = t.path().join("base");
    make_base(&base);
    let s = Store::init(
        hostfs(&t.path().join("store")),
        agentfs_core::InitOptions {
            default_base: Some(base.clone()),
            compact_threshold: Some(3),
        },
        agentfs_core::LockWait::Block,
    )
    .unwrap();
    s.create_branch("b", None, None).unwrap();
    let b = s.branch("b");
    let mut images = Vec::new();
    for i in 0..8 {
        b.write_file(format!("f{i}").as_str(), format!("{i}").as_bytes())
            .unwrap();
        if i % 2 == 0 {
            b.unlink(format!("f{}", i / 2).as_str()).ok();
        }
        if i == 3 {
            b.remove_all("src").unwrap();
            b.mkdir("src", 0o755).unwrap();
            b.write_file("src/only.rs", b"only").unwrap();
        }
        if i == 5 {
            b.unlink("README.md").unwrap();
        }
        let name = format!("s{i}");
        s.create_snapshot("b", Some(&name)).unwrap();
        images.push((name, image_tree(&b)));
        let depth = s.list_branches().unwrap()[0].depth;
        assert!(depth <= 3, "depth {depth} after snapshot {i}");
    }
    for (name, img) in &images {
        assert_eq!(&image_tree(&s.snapshot(name)), img, "snapshot {name}");
    }
    assert_eq!(&image_tree(&b), &images.last().unwrap().1);
    assert!(!b.exists("src/main.rs").unwrap());
    assert!(!b.exists("README.md").unwrap());
    // Explicit compaction down to one layer.
    b.write_file("after", b"x").unwrap();
    let img = image_tree(&b);
    s.compact_branch("b").unwrap();
    assert_eq!(s.list_branches().unwrap()[0].depth, 1);
    assert_eq!(image_tree(&b), img);
    // Old snapshots stay readable and deletable once nothing builds on them.
    for (name, img) in &images {
        assert_eq!(&image_tree(&s.snapshot(name)), img, "snapshot {name}");
    }
    for (name, _) in images.iter().rev() {
        s.delete_snapshot(name).unwrap();
    }
    assert_eq!(image_tree(&b), img);
}

#[test]
fn diff_sees_through_directories_recreated_over_whiteouts() {
    each(|fl, s, _| {
        s.create_branch("b", None, None).unwrap();
        let t = s.branch("b");
        t.rename("docs", "moved").unwrap();
        s.create_snapshot("b", Some("s")).unwrap();
        // Re-created in a newer layer than the whiteout: not opaque itself,
        // but nothing of the base shows through it.
        t.mkdir("docs", 0o755).unwrap();
        assert!(t.read_dir("docs").unwrap().is_empty(), "{fl}");
        let d = diff_of(s, "b", None);
        use ChangeType::*;
        assert_eq!(
            d,
            vec![
                ("docs/guide.md".into(), Deleted),
                ("moved".into(), Added),
                ("moved/guide.md".into(), Added),
            ],
            "{fl}"
        );
    });
}
