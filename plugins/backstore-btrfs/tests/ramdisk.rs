//! The RAM-backed btrfs volume: lifecycle, leaks, scale.
#![cfg(target_os = "linux")]

mod common;

use std::fs;

use agentfs_backstore_btrfs::{subvol, BtrfsBackstore};
use agentfs_plugin_api::backstore::{BackstoreImpl, Capabilities};
use agentfs_testfs::skip;
use common::{is_mounted, losetup_a, proc_mounts};

/// Makes a RAM-backed backstore, or reports why this machine cannot.
fn ram_backstore(size_mb: u64, test: &str) -> Option<BtrfsBackstore> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        skip(test, "a RAM volume needs root");
        return None;
    }
    match BtrfsBackstore::new(&format!("ramdisk = {{ size_mb = {size_mb} }}")) {
        Ok(b) => Some(b),
        Err(e) => {
            skip(test, &e.to_string());
            None
        }
    }
}

#[test]
fn ram_volume_create_mount_unmount_leaves_nothing_behind() {
    let Some(b) = ram_backstore(256, "ram_volume_leaves_nothing_behind") else {
        return;
    };
    let vol = b.ram_volume().expect("RAM volume");
    let (mnt, image, dev) = (
        vol.mount_point().to_path_buf(),
        vol.image().to_path_buf(),
        vol.loop_device().to_path_buf(),
    );
    assert_eq!(b.root(), mnt);
    assert!(image.starts_with("/dev/shm"), "{}", image.display());

    // It is there: a btrfs mount on our loop device backed by our file.
    assert!(is_mounted(&mnt), "{} not mounted", mnt.display());
    let mounts = proc_mounts();
    let line = mounts
        .lines()
        .find(|l| l.split(' ').nth(1) == Some(mnt.to_str().unwrap()))
        .expect("mount line");
    assert!(line.starts_with(&format!("{} ", dev.display())), "{line}");
    assert!(line.contains(" btrfs "), "{line}");
    assert!(
        losetup_a().contains(image.to_str().unwrap()),
        "{}",
        losetup_a()
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(&mnt).unwrap().permissions().mode() & 0o077,
        0,
        "the mounted volume is not private"
    );

    // It is a working copy-on-write backstore in RAM.
    assert_eq!(b.fs_type(), "btrfs");
    let caps = b.capabilities();
    for c in [
        Capabilities::RAM_BACKED,
        Capabilities::NATIVE_REFLINK,
        Capabilities::NATIVE_SNAPSHOTS,
    ] {
        assert!(caps.contains(c), "{:?}", caps.names());
    }
    assert!(!caps.contains(Capabilities::PERSISTENT));
    let st = b.status().unwrap();
    assert!(
        st.capacity_bytes > 200 << 20 && st.capacity_bytes <= 256 << 20,
        "{st:?}"
    );
    let l = b.create_layer("l").unwrap();
    fs::write(l.join("f"), b"in ram").unwrap();
    b.reflink(&l.join("f"), &l.join("g")).unwrap();
    let s = b.snapshot_layer("l", "s", true).unwrap();
    assert_eq!(fs::read(s.join("g")).unwrap(), b"in ram");

    drop(b);
    assert!(!is_mounted(&mnt), "still mounted");
    assert!(
        !proc_mounts().contains(mnt.to_str().unwrap()),
        "still in /proc/mounts"
    );
    let loops = losetup_a();
    assert!(
        !loops.contains(image.to_str().unwrap()),
        "loop device left: {loops}"
    );
    assert!(
        !loops.contains(&format!("{}:", dev.display())),
        "{} still attached: {loops}",
        dev.display()
    );
    assert!(!image.exists(), "image file left");
    assert!(!mnt.exists(), "mount directory left");
}

#[test]
fn thousand_snapshots_on_a_ram_volume() {
    let Some(b) = ram_backstore(512, "thousand_snapshots_on_a_ram_volume") else {
        return;
    };
    let l = b.create_layer("base").unwrap();
    for i in 0..20 {
        fs::write(l.join(format!("f{i}")), vec![i as u8; 4096]).unwrap();
    }
    let used_before = b.status().unwrap().used_bytes;
    let mut ids = std::collections::HashSet::new();
    for i in 0..1000 {
        let p = b
            .snapshot_layer("base", &format!("snap-{i:04}"), true)
            .unwrap_or_else(|e| panic!("snapshot {i}: {e}"));
        ids.insert(subvol::subvolume_id(&p).unwrap());
    }
    assert_eq!(ids.len(), 1000);
    let layers = b.list_layers().unwrap();
    assert_eq!(layers.len(), 1001);
    for i in [0, 499, 999] {
        let p = b.layer_path(&format!("snap-{i:04}")).unwrap();
        assert!(subvol::is_read_only(&p).unwrap());
        assert_eq!(fs::read(p.join("f19")).unwrap(), vec![19u8; 4096]);
    }
    // Snapshots share data: 1000 of them cost metadata only.
    let st = b.status().unwrap();
    let grew = st.used_bytes.saturating_sub(used_before);
    eprintln!("1000 snapshots used {} MiB", grew >> 20);
    assert!(
        grew < 128 << 20,
        "1000 snapshots used {} MiB of {} MiB",
        grew >> 20,
        st.capacity_bytes >> 20
    );
}

#[test]
fn ramdisk_size_below_the_minimum_is_refused_before_anything_is_made() {
    // Other tests in this process make RAM volumes concurrently, so look
    // only for what this attempt would have made: a 16 MiB image file.
    let sixteen_mib_images = || -> Vec<std::path::PathBuf> {
        fs::read_dir("/dev/shm")
            .map(|d| {
                d.flatten()
                    .filter(|e| {
                        e.file_name()
                            .to_string_lossy()
                            .starts_with("agentfs-btrfs-ram-")
                    })
                    .filter(|e| e.metadata().map(|m| m.len() == 16 << 20).unwrap_or(false))
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default()
    };
    let before = sixteen_mib_images();
    let e = BtrfsBackstore::new("ramdisk = { size_mb = 16 }").unwrap_err();
    assert_eq!(e.code, agentfs_plugin_api::ErrorCode::INVALID_ARGUMENT);
    assert!(e.message().contains("at least 128"), "{e}");
    let after = sixteen_mib_images();
    assert!(
        after.iter().all(|p| before.contains(p)),
        "a 16 MiB image was left in /dev/shm: {after:?}"
    );
}
