//! What a daemon that does not run as root gets: subvolume layers it can
//! delete (with or without `user_subvol_rm_allowed`), and a clear error for
//! the RAM volume. Children run as `nobody`.
#![cfg(target_os = "linux")]

mod common;

use std::{os::unix::fs::chown, path::Path, process::Command};

use agentfs_backstore_btrfs::{subvol, BtrfsBackstore};
use agentfs_plugin_api::backstore::{BackstoreImpl, Capabilities};
use agentfs_testfs::{mount_or_skip, skip, FsKind};
use common::{child_arg, child_as, field, is_root, root_opts, run_ok, NOBODY};

#[test]
#[ignore = "helper: run as nobody by unprivileged_user_deletes_subvolume_layers"]
fn child_manages_layers() {
    let Some(root) = child_arg() else { return };
    let b = BtrfsBackstore::new(&root_opts(Path::new(&root))).expect("open as nobody");
    assert!(b.capabilities().contains(Capabilities::NATIVE_SNAPSHOTS));
    let l = b.create_layer("l").unwrap();
    std::fs::create_dir_all(l.join("a/b/c")).unwrap();
    std::fs::write(l.join("a/b/c/f"), b"x").unwrap();
    b.snapshot_layer("l", "ro", true).unwrap();
    b.snapshot_layer("l", "rw", false).unwrap();
    for id in ["ro", "rw", "l"] {
        b.delete_layer(id)
            .unwrap_or_else(|e| panic!("delete {id}: {e}"));
    }
    assert!(b.list_layers().unwrap().is_empty());
    // What the kernel says to the ioctl itself, for the parent to check.
    let t = b.create_layer("t").unwrap();
    match subvol::destroy_subvolume(&t) {
        Ok(()) => println!("IOCTL ok"),
        Err(e) => {
            println!("IOCTL errno {}", e.raw_os_error().unwrap_or(0));
            b.delete_layer("t").unwrap();
        }
    }
    assert!(b.list_layers().unwrap().is_empty());
    println!("DONE");
}

#[test]
fn unprivileged_user_deletes_subvolume_layers() {
    if !is_root() {
        skip(
            "unprivileged_user_deletes",
            "switching to nobody needs root",
        );
        return;
    }
    for option in [false, true] {
        let Some(tfs) = mount_or_skip(FsKind::Btrfs, 256, "unprivileged_user_deletes") else {
            return;
        };
        if option {
            let st = Command::new("mount")
                .args(["-o", "remount,user_subvol_rm_allowed"])
                .arg(tfs.path())
                .status()
                .unwrap();
            assert!(st.success(), "remount with user_subvol_rm_allowed");
        }
        let store = tfs.path().join("store");
        std::fs::create_dir(&store).unwrap();
        chown(&store, Some(NOBODY), Some(NOBODY)).unwrap();
        let (c, _bin) = child_as("child_manages_layers", store.to_str().unwrap(), NOBODY);
        let out = run_ok(c);
        assert!(out.contains("DONE"), "{out}");
        let ioctl = field(&out, "IOCTL").expect("IOCTL line");
        if option {
            assert_eq!(ioctl, "ok", "with user_subvol_rm_allowed");
        } else {
            assert_eq!(
                ioctl,
                format!("errno {}", libc::EPERM),
                "without the option"
            );
        }
        // Nothing is left: no layer, no trash, no probe.
        let left: Vec<_> = std::fs::read_dir(store.join("layers"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "left in layers/: {left:?}");
    }
}

#[test]
#[ignore = "helper: run as nobody by ramdisk_without_root_says_so"]
fn child_asks_for_a_ramdisk() {
    let Some(_) = child_arg() else { return };
    let e = BtrfsBackstore::new("ramdisk = { size_mb = 256 }").expect_err("ramdisk as nobody");
    println!("CODE {}", e.code);
    println!("MESSAGE {}", e.message());
}

#[test]
fn ramdisk_without_root_says_so() {
    if !is_root() {
        skip(
            "ramdisk_without_root_says_so",
            "switching to nobody needs root",
        );
        return;
    }
    let (c, _bin) = child_as("child_asks_for_a_ramdisk", "1", NOBODY);
    let out = run_ok(c);
    assert_eq!(
        field(&out, "CODE").as_deref(),
        Some("permission-denied"),
        "{out}"
    );
    let msg = field(&out, "MESSAGE").unwrap();
    assert!(msg.contains("root"), "{msg}");
    assert!(msg.contains(&format!("uid {NOBODY}")), "{msg}");
    assert!(
        !msg.contains("mkfs.btrfs"),
        "mkfs.btrfs is installed: {msg}"
    );
}
