//! The conformance suite against this plugin, loaded from its built library
//! through the host's loader, on loop-mounted btrfs (reflink and native
//! snapshots), XFS (reflink only), ext4 (both `Unsupported`) and a RAM
//! volume. The workspace is built first if the plugin is missing.
#![cfg(target_os = "linux")]

use std::path::{Path, PathBuf};

use agentfs_conformance::{run, Outcome, Report, Target};
use agentfs_testfs::{mount_or_skip, FsKind};

fn plugin() -> PathBuf {
    let p = agentfs_testfs::built("libagentfs_backstore_btrfs.so");
    assert!(p.is_file(), "{} is missing after building", p.display());
    p
}

fn on(root: &Path) -> Target {
    Target::path(plugin()).with_options(&format!("root = {:?}", root.display().to_string()))
}

fn outcome<'a>(r: &'a Report, name: &str) -> &'a Outcome {
    &r.get(name)
        .unwrap_or_else(|| panic!("{name} did not run\n{}", r.to_text()))
        .outcome
}

fn assert_passed(r: &Report, names: &[&str]) {
    for n in names {
        assert!(
            matches!(outcome(r, n), Outcome::Passed),
            "{n}: {:?}\n{}",
            outcome(r, n),
            r.to_text()
        );
    }
}

fn assert_skipped(r: &Report, names: &[&str]) {
    for n in names {
        assert!(
            matches!(outcome(r, n), Outcome::Skipped(_)),
            "{n} should not apply: {:?}",
            outcome(r, n)
        );
    }
}

const REFLINK: &[&str] = &[
    "backstore.reflink.content_identical",
    "backstore.reflink.independence",
    "backstore.reflink.across_layers",
];
const SNAPSHOTS: &[&str] = &[
    "backstore.snapshot.read_only_isolated",
    "backstore.snapshot.writable_isolated",
];

#[test]
fn conformance_on_btrfs_with_reflink_and_native_snapshots() {
    let Some(fs) = mount_or_skip(FsKind::Btrfs, 320, "conformance_on_btrfs") else {
        return;
    };
    let r = run(&on(&fs.path().join("store")));
    eprint!("[btrfs] {}", r.to_text());
    r.assert_all_passed();
    assert_eq!(r.plugin.as_ref().unwrap().name, "btrfs");
    assert_passed(&r, REFLINK);
    assert_passed(&r, SNAPSHOTS);
    assert_skipped(&r, &["backstore.snapshot.unsupported"]);
}

#[test]
fn conformance_on_xfs_with_reflink_only() {
    let Some(fs) = mount_or_skip(FsKind::Xfs, 320, "conformance_on_xfs") else {
        return;
    };
    let r = run(&on(&fs.path().join("store")));
    eprint!("[xfs] {}", r.to_text());
    r.assert_all_passed();
    assert_passed(&r, REFLINK);
    assert_passed(&r, &["backstore.snapshot.unsupported"]);
    assert_skipped(&r, SNAPSHOTS);
}

#[test]
fn conformance_on_ext4_with_both_unsupported() {
    let Some(fs) = mount_or_skip(FsKind::Ext4, 64, "conformance_on_ext4") else {
        return;
    };
    let r = run(&on(&fs.path().join("store")));
    eprint!("[ext4] {}", r.to_text());
    r.assert_all_passed();
    assert_passed(
        &r,
        &[
            "backstore.reflink.capability_agrees",
            "backstore.snapshot.unsupported",
        ],
    );
    assert_skipped(&r, REFLINK);
    assert_skipped(&r, SNAPSHOTS);
}

#[test]
fn conformance_on_a_ram_volume() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        agentfs_testfs::skip("conformance_on_a_ram_volume", "a RAM volume needs root");
        return;
    }
    let r = run(&Target::path(plugin()).with_options("ramdisk = { size_mb = 256 }"));
    eprint!("[ramdisk] {}", r.to_text());
    r.assert_all_passed();
    assert_passed(&r, REFLINK);
    assert_passed(&r, SNAPSHOTS);
}
