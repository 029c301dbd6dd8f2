//! `Tree::open`, the core of the daemon's `fd_open`: where the fd points,
//! copy-up, create, truncate, the events, and paths that must not resolve.

mod common;

use std::{
    fs,
    io::{Read, Seek, SeekFrom, Write},
    os::unix::fs::MetadataExt,
};

use agentfs_core::{CoreError, OpenOptions, Origin, Store};
use common::*;

fn setup() -> (tempfile::TempDir, Store) {
    let t = tempfile::tempdir().unwrap();
    let base = t.path().join("base");
    make_base(&base);
    let s = store(mock(), Some(&base));
    s.create_branch("b", None, None).unwrap();
    (t, s)
}

fn write() -> OpenOptions {
    OpenOptions {
        write: true,
        ..Default::default()
    }
}

#[test]
fn a_read_only_open_of_an_unchanged_file_gets_the_base_file() {
    let (t, s) = setup();
    let sub = s.subscribe();
    let o = s
        .branch("b")
        .open("src/main.rs", &OpenOptions::default())
        .unwrap();
    assert!(!o.copied_up && !o.created);
    let base = fs::metadata(t.path().join("base/src/main.rs")).unwrap();
    let got = o.file.metadata().unwrap();
    assert_eq!((got.dev(), got.ino()), (base.dev(), base.ino()));
    assert_eq!(
        s.branch("b").lstat("src/main.rs").unwrap().origin,
        Origin::Base
    );
    assert!(drain(&sub).is_empty(), "reading publishes nothing");
    // Through a symlink: the target is opened, and reported canonically.
    let o = s
        .branch("b")
        .open("main-link", &OpenOptions::default())
        .unwrap();
    assert_eq!(o.path.to_string(), "src/main.rs");
}

#[test]
fn a_write_open_copies_up_and_never_touches_the_base() {
    let (t, s) = setup();
    let sub = s.subscribe();
    let mut o = s
        .branch("b")
        .open(
            "src/lib.rs",
            &OpenOptions {
                read: true,
                write: true,
                ..Default::default()
            },
        )
        .unwrap();
    // The mock backstore clones only inside its store: from the base it copies.
    assert!(o.copied_up && !o.reflinked);
    assert_eq!(s.copy_stats(), (0, 1));
    assert!(drain(&sub).is_empty(), "a copy-up changes nothing visible");
    let mut content = String::new();
    o.file.read_to_string(&mut content).unwrap();
    assert_eq!(content, "pub fn f() {}\n");
    o.file.seek(SeekFrom::End(0)).unwrap();
    o.file.write_all(b"// more\n").unwrap();
    drop(o);
    assert_eq!(
        fs::read(t.path().join("base/src/lib.rs")).unwrap(),
        b"pub fn f() {}\n"
    );
    let b = s.branch("b");
    assert_eq!(
        b.read_file("src/lib.rs").unwrap(),
        b"pub fn f() {}\n// more\n"
    );
    assert_eq!(b.lstat("src/lib.rs").unwrap().origin, Origin::Active);
    b.report_modified("src/lib.rs", Some(14)).unwrap();
    let ev: Vec<_> = sub.events.try_iter().collect();
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].summary(), "modified src/lib.rs");
    assert_eq!((ev[0].size_before, ev[0].size_after), (Some(14), Some(22)));

    // A file in a committed layer (inside the store) is reflinked.
    s.create_snapshot("b", Some("s1")).unwrap();
    let o = b.open("src/lib.rs", &write()).unwrap();
    assert!(o.copied_up && o.reflinked);
    assert_eq!(s.copy_stats(), (1, 1));
    // Already in the active layer: nothing to copy.
    let o = b.open("src/lib.rs", &write()).unwrap();
    assert!(!o.copied_up && !o.reflinked);
}

#[test]
fn create_exclusive_and_truncate_follow_open_2() {
    let (t, s) = setup();
    let b = s.branch("b");
    let sub = s.subscribe();
    let create = OpenOptions {
        write: true,
        create: true,
        mode: 0o600,
        ..Default::default()
    };
    let mut o = b.open("src/new.rs", &create).unwrap();
    assert!(o.created && !o.copied_up);
    o.file.write_all(b"new").unwrap();
    assert_eq!(b.read_file("src/new.rs").unwrap(), b"new");
    assert_eq!(b.lstat("src/new.rs").unwrap().mode, 0o600);
    assert_eq!(drain(&sub), ["created src/new.rs"]);
    // O_CREAT on an existing file opens it; with O_EXCL it fails.
    assert!(!b.open("src/new.rs", &create).unwrap().created);
    let excl = OpenOptions {
        exclusive: true,
        ..create
    };
    assert!(matches!(
        b.open("README.md", &excl),
        Err(CoreError::AlreadyExists(_))
    ));
    assert!(matches!(
        b.open("missing", &write()),
        Err(CoreError::NotFound(_))
    ));
    // O_TRUNC of a base file: empty in the branch, whole in the base.
    let trunc = OpenOptions {
        truncate: true,
        ..write()
    };
    let o = b.open("docs/guide.md", &trunc).unwrap();
    assert_eq!(o.file.metadata().unwrap().len(), 0);
    assert!(!o.copied_up, "nothing is copied for a truncation");
    assert_eq!(b.read_file("docs/guide.md").unwrap(), b"");
    assert_eq!(
        fs::read(t.path().join("base/docs/guide.md")).unwrap(),
        b"guide\n"
    );
    // ... and of a file already in the branch.
    b.open("src/new.rs", &trunc).unwrap();
    assert_eq!(b.read_file("src/new.rs").unwrap(), b"");
    assert_eq!(
        drain(&sub),
        ["modified docs/guide.md", "modified src/new.rs"]
    );
    assert!(drain(&sub).is_empty());
}

#[test]
fn paths_never_resolve_outside_the_branch() {
    let (t, s) = setup();
    let b = s.branch("b");
    fs::write(t.path().join("outside"), b"secret").unwrap();
    b.symlink("/etc/passwd", "abs").unwrap();
    b.symlink("../outside", "up").unwrap();
    for (path, opts) in [
        ("../outside", OpenOptions::default()),
        ("/etc/passwd", OpenOptions::default()),
        ("abs", OpenOptions::default()),
        ("up", OpenOptions::default()),
        ("up", write()),
        (
            "abs",
            OpenOptions {
                create: true,
                ..write()
            },
        ),
    ] {
        let e = b.open(path, &opts).unwrap_err();
        assert!(
            matches!(e, CoreError::Escapes { .. } | CoreError::InvalidPath { .. }),
            "{path}: {e}"
        );
    }
    assert!(matches!(
        b.open(
            "main-link",
            &OpenOptions {
                nofollow: true,
                ..Default::default()
            }
        ),
        Err(CoreError::SymlinkLoop(_))
    ));
    assert!(matches!(
        b.open("src", &OpenOptions::default()),
        Err(CoreError::IsDirectory(_))
    ));
    assert!(matches!(
        b.open("", &write()),
        Err(CoreError::IsDirectory(_))
    ));
    s.create_snapshot("b", Some("s1")).unwrap();
    assert!(s
        .snapshot("s1")
        .open("README.md", &OpenOptions::default())
        .is_ok());
    assert!(
        s.snapshot("s1").open("README.md", &write()).is_err(),
        "snapshots are read-only"
    );
    assert_eq!(fs::read(t.path().join("outside")).unwrap(), b"secret");
}
