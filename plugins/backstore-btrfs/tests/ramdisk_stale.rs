//! A RAM volume whose owner was killed is found and cleaned at the next
//! start, and a live owner's volume is left alone. (Its own test binary:
//! no other test here starts backstores, which would clean it first.)
#![cfg(target_os = "linux")]

mod common;

use std::{
    io::{BufRead, BufReader, Write},
    path::PathBuf,
    process::Stdio,
};

use agentfs_backstore_btrfs::BtrfsBackstore;
use agentfs_testfs::skip;
use common::{child, child_arg, is_mounted, is_root, losetup_a};

#[test]
#[ignore = "helper: run in a child process by killed_owner_volume_is_cleaned_at_next_start"]
fn child_holds_a_ram_volume() {
    let Some(_) = child_arg() else { return };
    let b = BtrfsBackstore::new("ramdisk = { size_mb = 128 }").expect("RAM backstore in child");
    let v = b.ram_volume().expect("RAM volume");
    let mut out = std::io::stdout().lock();
    // libtest has printed `test NAME ... ` without a newline: end that line.
    writeln!(out).unwrap();
    writeln!(out, "MOUNT {}", v.mount_point().display()).unwrap();
    writeln!(out, "IMAGE {}", v.image().display()).unwrap();
    writeln!(out, "READY").unwrap();
    out.flush().unwrap();
    drop(out);
    // Hold the volume until told to go (or killed).
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
}

#[test]
fn killed_owner_volume_is_cleaned_at_next_start() {
    if !is_root() {
        skip("killed_owner_volume_is_cleaned", "a RAM volume needs root");
        return;
    }
    let mut c = child("child_holds_a_ram_volume", "1");
    let mut proc = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn child");
    let mut lines = BufReader::new(proc.stdout.take().unwrap()).lines();
    let (mut mnt, mut image) = (None, None);
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(p) = line.strip_prefix("MOUNT ") {
            mnt = Some(PathBuf::from(p));
        } else if let Some(p) = line.strip_prefix("IMAGE ") {
            image = Some(PathBuf::from(p));
        } else if line == "READY" {
            break;
        }
    }
    let (mnt, image) = (
        mnt.expect("child reported no mount (see its stderr)"),
        image.expect("child reported no image"),
    );
    assert!(is_mounted(&mnt));

    // A start while the owner lives leaves its volume alone.
    let b = BtrfsBackstore::new("ramdisk = { size_mb = 128 }").unwrap();
    assert!(is_mounted(&mnt), "a live owner's volume was removed");
    assert!(image.exists());
    drop(b);

    // Kill the owner: nothing of it runs its cleanup, the volume stays.
    proc.kill().unwrap();
    proc.wait().unwrap();
    drop(proc.stdin.take());
    assert!(is_mounted(&mnt), "volume vanished with its owner");
    assert!(image.exists());
    assert!(losetup_a().contains(image.to_str().unwrap()));

    // The next start finds and removes it.
    let b = BtrfsBackstore::new("ramdisk = { size_mb = 128 }").unwrap();
    assert!(!is_mounted(&mnt), "stale volume still mounted");
    assert!(!mnt.exists(), "stale mount directory left");
    assert!(!image.exists(), "stale image left");
    let loops = losetup_a();
    assert!(
        !loops.contains(image.to_str().unwrap()),
        "stale loop device left: {loops}"
    );
    // ... and its own volume works.
    assert!(is_mounted(b.root()));
    drop(b);
}
