//! Probe, reflink and its errors on real loop-mounted btrfs, XFS
//! (reflink=1) and ext4, and on tmpfs.
#![cfg(target_os = "linux")]

mod common;

use std::{fs, io::Write, os::unix::fs::FileExt, path::Path};

use agentfs_backstore_btrfs::LayerKind;
use agentfs_plugin_api::{
    backstore::{BackstoreImpl, Capabilities},
    ErrorCode,
};
use agentfs_testfs::{mount_or_skip, FsKind};
use common::{backstore_in, write_pattern};
use proptest::{prelude::*, test_runner::TestRunner};

#[test]
fn capabilities_follow_the_filesystem_under_the_root() {
    // (kind, fs_type, reflink, native snapshots)
    let expected = [
        (FsKind::Btrfs, "btrfs", true, true),
        (FsKind::Xfs, "xfs", true, false),
        (FsKind::Ext4, "ext4", false, false),
        (FsKind::Tmpfs, "tmpfs", false, false),
    ];
    for (kind, name, reflink, snaps) in expected {
        let Some(tfs) = mount_or_skip(kind, 300, "capabilities_follow_the_filesystem") else {
            continue;
        };
        let b = backstore_in(tfs.path());
        assert_eq!(b.fs_type(), name);
        assert_eq!(b.status().unwrap().fs_type.as_str(), name);
        let caps = b.capabilities();
        assert_eq!(
            caps.contains(Capabilities::NATIVE_REFLINK),
            reflink,
            "{kind}"
        );
        assert_eq!(
            caps.contains(Capabilities::NATIVE_SNAPSHOTS),
            snaps,
            "{kind}"
        );
        assert!(caps.contains(Capabilities::PERSISTENT));
        assert!(!caps.contains(Capabilities::RAM_BACKED));
        let want_kind = if snaps {
            LayerKind::Subvolumes
        } else {
            LayerKind::Directories
        };
        assert_eq!(b.layer_kind(), want_kind, "{kind}");

        // The capabilities agree with what the calls do.
        let l = b.create_layer("l1").unwrap();
        assert_eq!(
            agentfs_backstore_btrfs::subvol::is_subvolume(&l).unwrap(),
            snaps,
            "{kind}: layer is a subvolume"
        );
        fs::write(l.join("f"), b"data").unwrap();
        let r = b.reflink(&l.join("f"), &l.join("g"));
        if reflink {
            r.unwrap();
            assert_eq!(fs::read(l.join("g")).unwrap(), b"data");
        } else {
            assert_eq!(r.unwrap_err().code, ErrorCode::UNSUPPORTED, "{kind}");
            assert!(!l.join("g").exists(), "{kind}: failed reflink left a file");
        }
        let s = b.snapshot_layer("l1", "s1", true);
        if snaps {
            assert_eq!(fs::read(s.unwrap().join("f")).unwrap(), b"data");
        } else {
            assert_eq!(s.unwrap_err().code, ErrorCode::UNSUPPORTED, "{kind}");
            assert_eq!(b.list_layers().unwrap(), vec!["l1"], "{kind}");
        }
        // Probes leave nothing behind in the store.
        let stray: Vec<_> = fs::read_dir(b.root())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !["layers", "meta", "trash"].contains(&n.as_str()))
            .collect();
        assert!(stray.is_empty(), "{kind}: probe leftovers {stray:?}");
        assert_eq!(fs::read_dir(b.metadata_dir().unwrap()).unwrap().count(), 0);
    }
}

/// A 1 GiB reflink on `kind` must not change the free space by more than a
/// few MiB of metadata.
fn reflink_of_1gib_costs_no_data_blocks_on(kind: FsKind) {
    let Some(tfs) = mount_or_skip(kind, 2048, "reflink_of_1gib_costs_no_data_blocks") else {
        return;
    };
    let b = backstore_in(tfs.path());
    let l = b.create_layer("big").unwrap();
    let (src, dst) = (l.join("src"), l.join("dst"));
    write_pattern(&src, 1 << 30);
    let before = tfs.free_bytes();
    b.reflink(&src, &dst).unwrap();
    fs::File::open(&dst).unwrap().sync_all().unwrap();
    let after = tfs.free_bytes();
    let used = before.saturating_sub(after);
    eprintln!("{kind}: 1 GiB reflink used {} KiB", used >> 10);
    assert!(
        used < 8 << 20,
        "{kind}: 1 GiB reflink used {} MiB of space",
        used >> 20
    );
    assert_eq!(fs::metadata(&dst).unwrap().len(), 1 << 30);
    // Control: a real 64 MiB copy does show up in the same measurement.
    let before = tfs.free_bytes();
    write_pattern(&l.join("control"), 64 << 20);
    let used = before.saturating_sub(tfs.free_bytes());
    assert!(
        used >= 60 << 20,
        "{kind}: free space does not see a 64 MiB write ({} KiB)",
        used >> 10
    );
    let (a, c) = (fs::File::open(&src).unwrap(), fs::File::open(&dst).unwrap());
    for off in [0u64, (1 << 30) - 4096, 123 << 20] {
        let (mut x, mut y) = ([0u8; 4096], [0u8; 4096]);
        a.read_exact_at(&mut x, off).unwrap();
        c.read_exact_at(&mut y, off).unwrap();
        assert_eq!(x, y, "{kind}: content differs at {off}");
    }
}

#[test]
fn reflink_of_1gib_costs_no_data_blocks_btrfs() {
    reflink_of_1gib_costs_no_data_blocks_on(FsKind::Btrfs);
}

#[test]
fn reflink_of_1gib_costs_no_data_blocks_xfs() {
    reflink_of_1gib_costs_no_data_blocks_on(FsKind::Xfs);
}

#[test]
fn reflink_errors_map_exactly() {
    let Some(btrfs) = mount_or_skip(FsKind::Btrfs, 256, "reflink_errors_map_exactly") else {
        return;
    };
    let Some(other) = mount_or_skip(FsKind::Btrfs, 256, "reflink_errors_map_exactly") else {
        return;
    };
    let b = backstore_in(btrfs.path());
    let l = b.create_layer("l").unwrap();
    fs::write(l.join("f"), b"source").unwrap();

    // Another filesystem: EXDEV -> CrossDevice, nothing left behind.
    let foreign = other.path().join("foreign");
    fs::write(&foreign, b"elsewhere").unwrap();
    let e = b.reflink(&foreign, &l.join("x")).unwrap_err();
    assert_eq!(e.code, ErrorCode::CROSS_DEVICE, "{e}");
    assert_eq!(e.errno, libc::EXDEV);
    assert!(!l.join("x").exists());

    // An existing destination: AlreadyExists, never overwritten.
    fs::write(l.join("g"), b"keep me").unwrap();
    let e = b.reflink(&l.join("f"), &l.join("g")).unwrap_err();
    assert_eq!(e.code, ErrorCode::ALREADY_EXISTS);
    assert_eq!(fs::read(l.join("g")).unwrap(), b"keep me");

    // A missing source, a directory source.
    let e = b.reflink(&l.join("missing"), &l.join("y")).unwrap_err();
    assert_eq!(e.code, ErrorCode::NOT_FOUND);
    let e = b.reflink(&l, &l.join("y")).unwrap_err();
    assert_eq!(e.code, ErrorCode::IS_DIRECTORY);
    assert!(!l.join("y").exists());

    // A read-only snapshot as destination: ReadOnly.
    let s = b.snapshot_layer("l", "s", true).unwrap();
    let e = b.reflink(&l.join("f"), &s.join("z")).unwrap_err();
    assert_eq!(e.code, ErrorCode::READ_ONLY, "{e}");

    // ext4 has no FICLONE: Unsupported, and the destination is not created.
    if let Some(ext4) = mount_or_skip(FsKind::Ext4, 64, "reflink_errors_map_exactly") {
        let e4 = backstore_in(ext4.path());
        let l4 = e4.create_layer("l").unwrap();
        fs::write(l4.join("f"), b"x").unwrap();
        let e = e4.reflink(&l4.join("f"), &l4.join("g")).unwrap_err();
        assert_eq!(e.code, ErrorCode::UNSUPPORTED);
        assert!(!l4.join("g").exists());
        // The clone call itself, not only the probed capability, says so.
        let e = agentfs_plugin_support::reflink_file(&l4.join("f"), &l4.join("g")).unwrap_err();
        assert_eq!(e.code, ErrorCode::UNSUPPORTED, "{e}");
        assert!(!l4.join("g").exists());
    }
}

/// Clone and source stay independent whichever side is modified, with
/// writes of any size at any offset (the first of them splits a shared
/// extent).
fn clone_and_source_are_independent_on(kind: FsKind) {
    let Some(tfs) = mount_or_skip(kind, 512, "clone_and_source_are_independent") else {
        return;
    };
    let b = backstore_in(tfs.path());
    let l = b.create_layer("p").unwrap();
    let mut runner = TestRunner::new(ProptestConfig::with_cases(48));
    let case = std::sync::atomic::AtomicU32::new(0);
    let strategy = (
        proptest::collection::vec(any::<u8>(), 1..256 * 1024),
        proptest::collection::vec(any::<u8>(), 1..20_000),
        any::<proptest::sample::Index>(),
        any::<bool>(),
    );
    runner
        .run(&strategy, |(data, patch, at, modify_clone)| {
            let case = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let (src, dst) = (l.join(format!("s{case}")), l.join(format!("d{case}")));
            let mut f = fs::File::create(&src).unwrap();
            f.write_all(&data).unwrap();
            f.sync_all().unwrap();
            b.reflink(&src, &dst).unwrap();
            prop_assert_eq!(fs::read(&dst).unwrap(), data.clone());
            let off = at.index(data.len()) as u64;
            let (changed, untouched) = if modify_clone {
                (&dst, &src)
            } else {
                (&src, &dst)
            };
            let w = fs::OpenOptions::new().write(true).open(changed).unwrap();
            w.write_all_at(&patch, off).unwrap();
            w.sync_all().unwrap();
            prop_assert_eq!(fs::read(untouched).unwrap(), data.clone());
            let mut want = data.clone();
            let end = off as usize + patch.len();
            if want.len() < end {
                want.resize(end, 0);
            }
            want[off as usize..end].copy_from_slice(&patch);
            prop_assert_eq!(fs::read(changed).unwrap(), want);
            fs::remove_file(&src).unwrap();
            fs::remove_file(&dst).unwrap();
            Ok(())
        })
        .unwrap();
}

#[test]
fn clone_and_source_are_independent_btrfs() {
    clone_and_source_are_independent_on(FsKind::Btrfs);
}

#[test]
fn clone_and_source_are_independent_xfs() {
    clone_and_source_are_independent_on(FsKind::Xfs);
}

#[test]
fn layers_persist_across_instances_and_stay_subvolumes() {
    let Some(tfs) = mount_or_skip(FsKind::Btrfs, 256, "layers_persist_across_instances") else {
        return;
    };
    let b = backstore_in(tfs.path());
    fs::write(b.create_layer("a").unwrap().join("f"), b"1").unwrap();
    b.snapshot_layer("a", "a.snap", true).unwrap();
    drop(b);
    let b = backstore_in(tfs.path());
    assert_eq!(b.list_layers().unwrap(), vec!["a", "a.snap"]);
    let snap = b.layer_path("a.snap").unwrap();
    assert!(agentfs_backstore_btrfs::subvol::is_read_only(&snap).unwrap());
    assert_eq!(fs::read(snap.join("f")).unwrap(), b"1");
}

#[test]
fn a_missing_or_bad_root_is_a_clear_error() {
    let t = tempfile::tempdir().unwrap();
    let file = t.path().join("file");
    fs::write(&file, b"").unwrap();
    let e = agentfs_backstore_btrfs::BtrfsBackstore::new(&common::root_opts(&file.join("x")))
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::NOT_DIRECTORY, "{e}");
    assert!(e.message().contains(&file.display().to_string()), "{e}");
    assert!(!Path::new(&file.join("x")).exists());
}

#[test]
fn probe_subvolumes_of_dead_processes_are_removed_at_start() {
    use agentfs_backstore_btrfs::{subvol, PROBE_PREFIX};
    let Some(tfs) = mount_or_skip(FsKind::Btrfs, 300, "probe_subvolumes_of_dead_processes") else {
        return;
    };
    let root = tfs.path().join("store");
    drop(backstore_in(tfs.path()));
    // What a process killed between create and destroy leaves: the probe
    // subvolume and its read-only snapshot.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let a = root.join(format!("{PROBE_PREFIX}{dead}-0"));
    let b = root.join(format!("{PROBE_PREFIX}{dead}-0-ro"));
    subvol::create_subvolume(&a).unwrap();
    subvol::snapshot(&a, &b, true).unwrap();
    let live = root.join(format!("{PROBE_PREFIX}{}-77", std::process::id()));
    fs::create_dir(&live).unwrap();
    let store = backstore_in(tfs.path());
    assert!(
        !a.exists() && !b.exists(),
        "leftover probe subvolumes remain"
    );
    assert!(live.exists(), "a live process's probe was removed");
    let r = store.reclaimed();
    assert_eq!(r.len(), 2, "{r:?}");
    let left: Vec<_> = fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(PROBE_PREFIX))
        .collect();
    assert_eq!(left.len(), 1, "{left:?}");
}
