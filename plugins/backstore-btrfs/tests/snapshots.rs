//! Native snapshots (btrfs subvolumes) on a real loop-mounted btrfs, and
//! their absence elsewhere.
#![cfg(target_os = "linux")]

mod common;

use std::{collections::HashSet, fs, io::ErrorKind, sync::Arc};

use agentfs_backstore_btrfs::subvol;
use agentfs_plugin_api::{backstore::BackstoreImpl, ErrorCode};
use agentfs_testfs::{mount_or_skip, FsKind};
use common::backstore_in;

#[test]
fn native_snapshot_is_read_only_and_isolated() {
    let Some(tfs) = mount_or_skip(FsKind::Btrfs, 256, "native_snapshot_is_read_only") else {
        return;
    };
    let b = backstore_in(tfs.path());
    let l = b.create_layer("work").unwrap();
    fs::create_dir(l.join("dir")).unwrap();
    fs::write(l.join("dir/a"), b"v1").unwrap();
    fs::write(l.join("b"), b"keep").unwrap();

    let s = b.snapshot_layer("work", "work.snap", true).unwrap();
    assert_eq!(s, b.layer_path("work.snap").unwrap());
    assert!(subvol::is_subvolume(&s).unwrap());
    assert!(subvol::is_read_only(&s).unwrap());
    assert_ne!(
        subvol::subvolume_id(&s).unwrap(),
        subvol::subvolume_id(&l).unwrap()
    );

    // Every kind of write into the snapshot is refused with EROFS.
    let ro = |r: std::io::Result<()>, what: &str| {
        let e = r.expect_err(what);
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{what}: {e}");
    };
    ro(fs::write(s.join("new"), b"x"), "create a file");
    ro(fs::write(s.join("dir/a"), b"v2"), "overwrite a file");
    ro(fs::remove_file(s.join("b")), "remove a file");
    ro(fs::create_dir(s.join("d2")), "make a directory");
    ro(fs::rename(s.join("b"), s.join("c")), "rename");
    // ... and through the plugin, with the ReadOnly code.
    let e = b.reflink(&l.join("b"), &s.join("clone")).unwrap_err();
    assert_eq!(e.code, ErrorCode::READ_ONLY, "{e}");

    // Later writes to the layer never show in the snapshot.
    fs::write(l.join("dir/a"), b"v2").unwrap();
    fs::remove_file(l.join("b")).unwrap();
    fs::write(l.join("c"), b"new").unwrap();
    assert_eq!(fs::read(s.join("dir/a")).unwrap(), b"v1");
    assert_eq!(fs::read(s.join("b")).unwrap(), b"keep");
    assert_eq!(
        fs::metadata(s.join("c")).unwrap_err().kind(),
        ErrorKind::NotFound
    );

    // A writable snapshot of the read-only one: a branch from the snapshot.
    let w = b.snapshot_layer("work.snap", "branch", false).unwrap();
    assert!(!subvol::is_read_only(&w).unwrap());
    fs::write(w.join("b"), b"branch edit").unwrap();
    assert_eq!(fs::read(s.join("b")).unwrap(), b"keep");
    assert_eq!(fs::read(w.join("dir/a")).unwrap(), b"v1");

    // Taken ids are refused; a missing source is NotFound; ids are checked.
    let e = b.snapshot_layer("work", "branch", true).unwrap_err();
    assert_eq!(e.code, ErrorCode::ALREADY_EXISTS);
    assert_eq!(fs::read(w.join("b")).unwrap(), b"branch edit");
    let e = b.snapshot_layer("nope", "x", true).unwrap_err();
    assert_eq!(e.code, ErrorCode::NOT_FOUND);
    let e = b.snapshot_layer("work", "../escape", true).unwrap_err();
    assert_eq!(e.code, ErrorCode::INVALID_ARGUMENT);

    // Deleting: the read-only snapshot, the branch and the layer.
    for id in ["work.snap", "branch", "work"] {
        b.delete_layer(id).unwrap();
        assert_eq!(b.layer_path(id).unwrap_err().code, ErrorCode::NOT_FOUND);
        assert_eq!(b.delete_layer(id).unwrap_err().code, ErrorCode::NOT_FOUND);
    }
    assert!(b.list_layers().unwrap().is_empty());
    // Subvolume deletion is in place: no trash left under layers/.
    assert_eq!(
        fs::read_dir(b.root().join("layers")).unwrap().count(),
        0,
        "leftovers under layers/"
    );
}

#[test]
fn a_plain_directory_layer_is_not_snapshotted_natively() {
    let Some(tfs) = mount_or_skip(FsKind::Btrfs, 256, "a_plain_directory_layer") else {
        return;
    };
    let b = backstore_in(tfs.path());
    // A layer made by another backstore (a plain directory) in the same store.
    fs::create_dir(b.root().join("layers/plain")).unwrap();
    fs::write(b.root().join("layers/plain/f"), b"x").unwrap();
    let e = b.snapshot_layer("plain", "s", true).unwrap_err();
    assert_eq!(e.code, ErrorCode::UNSUPPORTED, "{e}");
    assert!(e.message().contains("plain directory"), "{e}");
    // It can still be deleted.
    b.delete_layer("plain").unwrap();
    assert!(b.list_layers().unwrap().is_empty());
}

#[test]
fn native_snapshots_are_unsupported_on_xfs_and_ext4() {
    for kind in [FsKind::Xfs, FsKind::Ext4] {
        let Some(tfs) = mount_or_skip(kind, 300, "native_snapshots_are_unsupported") else {
            continue;
        };
        let b = backstore_in(tfs.path());
        let l = b.create_layer("l").unwrap();
        fs::write(l.join("f"), b"x").unwrap();
        let e = b.snapshot_layer("l", "s", true).unwrap_err();
        assert_eq!(e.code, ErrorCode::UNSUPPORTED, "{kind}: {e}");
        assert!(e.message().contains(&kind.to_string()), "{kind}: {e}");
        assert_eq!(b.layer_path("s").unwrap_err().code, ErrorCode::NOT_FOUND);
        // A missing source is still reported as such.
        let e = b.snapshot_layer("nope", "s", true).unwrap_err();
        assert_eq!(e.code, ErrorCode::NOT_FOUND, "{kind}");
        b.delete_layer("l").unwrap();
        assert!(b.list_layers().unwrap().is_empty());
    }
}

#[test]
fn concurrent_snapshots_all_succeed_with_unique_ids() {
    let Some(tfs) = mount_or_skip(FsKind::Btrfs, 512, "concurrent_snapshots") else {
        return;
    };
    let b = Arc::new(backstore_in(tfs.path()));
    let l = b.create_layer("src").unwrap();
    for i in 0..50 {
        fs::write(l.join(format!("f{i}")), format!("{i}")).unwrap();
    }
    let handles: Vec<_> = (0..100)
        .map(|i| {
            let b = Arc::clone(&b);
            std::thread::spawn(move || {
                let p = b
                    .snapshot_layer("src", &format!("snap-{i:03}"), i % 2 == 0)
                    .unwrap_or_else(|e| panic!("snapshot {i}: {e}"));
                (p.clone(), subvol::subvolume_id(&p).unwrap())
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let paths: HashSet<_> = results.iter().map(|(p, _)| p.clone()).collect();
    let ids: HashSet<_> = results.iter().map(|(_, id)| *id).collect();
    assert_eq!(paths.len(), 100, "snapshot paths are not unique");
    assert_eq!(ids.len(), 100, "btrfs subvolume ids are not unique");
    assert!(!ids.contains(&subvol::subvolume_id(&l).unwrap()));
    assert_eq!(b.list_layers().unwrap().len(), 101);
    for (i, (p, _)) in results.iter().enumerate() {
        assert_eq!(subvol::is_read_only(p).unwrap(), i % 2 == 0);
        assert_eq!(fs::read(p.join("f49")).unwrap(), b"49");
    }
}
