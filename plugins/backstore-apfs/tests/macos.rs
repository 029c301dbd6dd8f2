//! macOS integration tests (by area):
//! real APFS, real `clonefile(2)`, real RAM disks made with `hdiutil` and
//! `diskutil`. Run by `.github/workflows/macos.yml` on a macOS runner,
//! with `AGENTFS_REQUIRE_COW=1` so a RAM disk that cannot be made fails
//! the run instead of skipping.
#![cfg(target_os = "macos")]

use std::{
    fs,
    io::{BufRead, BufReader, Write},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, SystemTime},
};

use agentfs_backstore_apfs::{
    names::volume_owner,
    options::RamdiskOptions,
    parse,
    ramdisk::{self, clean_leftovers},
    tools::{Tool, Tools},
    ApfsBackstore, ApfsOptions, FsKind, RamDisk,
};
use agentfs_plugin_api::{
    backstore::{BackstoreImpl, Capabilities},
    ErrorCode,
};
use agentfs_plugin_support::{fs_type_of, reflink_file, status_of};

mod common;
use common::{byte_copy, write_pattern, MIB};

/// Constructing a RAM disk backstore cleans leftovers of dead processes.
/// Those constructions hold this for reading; the leftover test holds it
/// for writing, so no other test cleans its leftover before it looks.
static LEFTOVERS: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn constructing() -> std::sync::RwLockReadGuard<'static, ()> {
    LEFTOVERS.read().unwrap_or_else(|e| e.into_inner())
}

/// A RAM disk for one test, or the skip (a failure under AGENTFS_REQUIRE_COW=1).
fn ramdisk_or_skip(size_mb: u64, test: &str) -> Option<RamDisk> {
    match RamDisk::create(&Tools::default(), RamdiskOptions { size_mb }) {
        Ok(rd) => Some(rd),
        Err(e) => {
            agentfs_testfs::skip(test, &format!("cannot make an APFS RAM disk: {e}"));
            None
        }
    }
}

/// A backstore on a fresh RAM disk, or the skip.
fn ram_backstore_or_skip(extra: &str, test: &str) -> Option<ApfsBackstore> {
    let opts = ApfsOptions::parse(&format!("ramdisk = {{ size_mb = 256 }}\n{extra}")).unwrap();
    let _guard = constructing();
    match ApfsBackstore::from_options(&opts, Path::new("/nonexistent")) {
        Ok(b) => Some(b),
        Err(e) => {
            agentfs_testfs::skip(test, &format!("cannot make an APFS RAM disk: {e}"));
            None
        }
    }
}

/// A scratch directory on the boot volume's data volume (APFS on every
/// supported macOS).
fn apfs_tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn sync() {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
}

fn diskutil_list() -> String {
    let out = Command::new("/usr/sbin/diskutil")
        .arg("list")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// ---- probe ----

#[test]
fn probe_apfs_volume() {
    let t = apfs_tempdir();
    assert_eq!(FsKind::probe(t.path()).unwrap(), FsKind::Apfs);
    let opts = ApfsOptions::parse(&format!("root = {:?}", t.path().display().to_string())).unwrap();
    let b = ApfsBackstore::from_options(&opts, Path::new("/nonexistent")).unwrap();
    assert_eq!(*b.fs_kind(), FsKind::Apfs);
    assert_eq!(
        b.capabilities(),
        Capabilities::NATIVE_REFLINK.with(Capabilities::PERSISTENT)
    );
    assert_eq!(b.status().unwrap().fs_type.as_str(), "apfs");
}

#[test]
fn real_backstore_new_succeeds() {
    let home = apfs_tempdir();
    let def = agentfs_backstore_apfs::options::default_root(home.path());
    let b = ApfsBackstore::from_options(&ApfsOptions::default(), &def).unwrap();
    assert_eq!(b.root(), def);
    assert_eq!(*b.fs_kind(), FsKind::Apfs);
    assert!(def.join("layers").is_dir());
}

/// An HFS+ volume on a RAM disk, detached on drop.
struct HfsVolume {
    device: String,
    mount: PathBuf,
}

impl HfsVolume {
    fn create(test: &str) -> Option<Self> {
        let tools = Tools::default();
        let run = |tool, args: &[&str]| tools.run(tool, args).map(|o| o.stdout);
        let out = match run(Tool::Hdiutil, &["attach", "-nomount", "ram://65536"]) {
            Ok(o) => o,
            Err(e) => {
                agentfs_testfs::skip(test, &format!("cannot attach a RAM disk: {e}"));
                return None;
            }
        };
        let device = parse::attached_device(&out).expect("hdiutil attach printed no device");
        let name = format!("AgentFSHFS{}", std::process::id());
        let made = run(Tool::Diskutil, &["eraseVolume", "HFS+", &name, &device])
            .and_then(|_| run(Tool::Diskutil, &["info", &device]));
        let info = match made {
            Ok(i) => parse::disk_info(&i),
            Err(e) => {
                let _ = ramdisk::detach(&tools, &device);
                panic!("{test}: cannot format an HFS+ RAM disk: {e}");
            }
        };
        let mount = info.mount_point.expect("HFS+ volume is not mounted");
        Some(Self { device, mount })
    }
}

impl Drop for HfsVolume {
    fn drop(&mut self) {
        if let Err(e) = ramdisk::detach(&Tools::default(), &self.device) {
            eprintln!("could not detach {}: {e}", self.device);
        }
    }
}

#[test]
fn probe_hfs_volume_and_reflink_there_is_unsupported() {
    let Some(hfs) = HfsVolume::create("probe_hfs_volume_and_reflink_there_is_unsupported") else {
        return;
    };
    assert_eq!(FsKind::probe(&hfs.mount).unwrap(), FsKind::Hfs);
    let root = hfs.mount.join("agentfs");
    let opts = ApfsOptions::parse(&format!("root = {:?}", root.display().to_string())).unwrap();
    let b = ApfsBackstore::from_options(&opts, Path::new("/nonexistent")).unwrap();
    assert_eq!(b.capabilities().names(), vec!["persistent"]);
    let l = b.create_layer("l").unwrap();
    fs::write(l.join("a"), b"hfs").unwrap();
    let e = b.reflink(&l.join("a"), &l.join("b")).unwrap_err();
    assert_eq!(e.code, ErrorCode::UNSUPPORTED, "{e}");
    assert!(!l.join("b").exists(), "no silent copy");
    // The raw clonefile(2) on HFS+ fails with ENOTSUP, mapped to Unsupported.
    let e = reflink_file(&l.join("a"), &l.join("c")).unwrap_err();
    assert_eq!(e.code, ErrorCode::UNSUPPORTED, "{e}");
    assert_eq!(e.errno, libc::ENOTSUP, "{e}");
    // create_snapshot_fails_on_hfs.
    assert_eq!(
        b.snapshot_layer("l", "s", true).unwrap_err().code,
        ErrorCode::UNSUPPORTED
    );
    drop(b);
}

// ---- clonefile ----

#[test]
fn clonefile_creates_no_new_blocks() {
    let Some(b) = ram_backstore_or_skip("", "clonefile_creates_no_new_blocks") else {
        return;
    };
    let size = std::env::var("AGENTFS_CLONE_TEST_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64u64)
        * MIB;
    let l = b.create_layer("l").unwrap();
    write_pattern(&l.join("src"), size);
    sync();
    let used = || {
        sync();
        status_of(b.root()).unwrap().used_bytes
    };
    let before = used();
    b.reflink(&l.join("src"), &l.join("clone")).unwrap();
    let after_clone = used();
    byte_copy(&l.join("src"), &l.join("copy"));
    let after_copy = used();
    eprintln!(
        "clonefile_creates_no_new_blocks: {} MiB file: clone used {} KiB, copy used {} KiB",
        size / MIB,
        after_clone.saturating_sub(before) / 1024,
        after_copy.saturating_sub(after_clone) / 1024
    );
    assert!(
        after_clone.saturating_sub(before) < 2 * MIB,
        "the clone allocated {} bytes",
        after_clone.saturating_sub(before)
    );
    assert!(
        after_copy.saturating_sub(after_clone) >= size * 9 / 10,
        "the measurement cannot see a real copy ({} bytes): the clone check proves nothing",
        after_copy.saturating_sub(after_clone)
    );
    assert_eq!(
        fs::read(l.join("clone")).unwrap(),
        fs::read(l.join("src")).unwrap()
    );
}

#[test]
fn clonefile_preserves_xattr_user_test() {
    let t = apfs_tempdir();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    fs::write(&a, b"x").unwrap();
    xattr::set(&a, "user.test", b"agentfs").unwrap();
    reflink_file(&a, &b).unwrap();
    assert_eq!(
        xattr::get(&b, "user.test").unwrap().as_deref(),
        Some(&b"agentfs"[..])
    );
}

#[test]
fn clonefile_preserves_mode_and_times_including_birth_time() {
    let t = apfs_tempdir();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    fs::write(&a, b"times").unwrap();
    fs::set_permissions(&a, fs::Permissions::from_mode(0o640)).unwrap();
    let past = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    fs::File::options()
        .write(true)
        .open(&a)
        .unwrap()
        .set_times(fs::FileTimes::new().set_modified(past).set_accessed(past))
        .unwrap();
    reflink_file(&a, &b).unwrap();
    let (ma, mb) = (fs::metadata(&a).unwrap(), fs::metadata(&b).unwrap());
    assert_eq!(mb.permissions().mode() & 0o7777, 0o640);
    assert_eq!(mb.modified().unwrap(), past);
    assert_eq!(mb.accessed().unwrap(), past);
    assert_eq!(mb.created().unwrap(), ma.created().unwrap(), "birth time");
}

#[test]
fn clonefile_preserves_bsd_flags() {
    use std::os::macos::fs::MetadataExt;
    let t = apfs_tempdir();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    fs::write(&a, b"flags").unwrap();
    let st = Command::new("/usr/bin/chflags")
        .arg("hidden")
        .arg(&a)
        .status()
        .unwrap();
    assert!(st.success());
    const UF_HIDDEN: u32 = 0x8000;
    assert_ne!(fs::metadata(&a).unwrap().st_flags() & UF_HIDDEN, 0);
    reflink_file(&a, &b).unwrap();
    assert_ne!(fs::metadata(&b).unwrap().st_flags() & UF_HIDDEN, 0);
}

#[test]
fn clonefile_clears_setuid_and_setgid() {
    let t = apfs_tempdir();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    fs::write(&a, b"#!/bin/sh\n").unwrap();
    fs::set_permissions(&a, fs::Permissions::from_mode(0o4755)).unwrap();
    // setgid too where the file's group allows it (best effort: BSD may
    // refuse it to a caller outside the file's group).
    let _ = fs::set_permissions(&a, fs::Permissions::from_mode(0o6755));
    let src_mode = fs::metadata(&a).unwrap().permissions().mode();
    assert_ne!(src_mode & 0o4000, 0, "setuid did not stick on the source");
    reflink_file(&a, &b).unwrap();
    let mode = fs::metadata(&b).unwrap().permissions().mode();
    assert_eq!(mode & 0o6000, 0, "clone mode {mode:o}");
    assert_eq!(mode & 0o777, 0o755);
}

#[test]
fn clonefile_preserves_acl() {
    let t = apfs_tempdir();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    fs::write(&a, b"acl").unwrap();
    let st = Command::new("/bin/chmod")
        .args(["+a", "everyone deny delete"])
        .arg(&a)
        .status()
        .unwrap();
    assert!(st.success());
    reflink_file(&a, &b).unwrap();
    let ls = |p: &Path| {
        let out = Command::new("/bin/ls").arg("-le").arg(p).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(ls(&a).contains("everyone deny delete"), "{}", ls(&a));
    assert!(ls(&b).contains("everyone deny delete"), "{}", ls(&b));
}

#[test]
fn clonefile_errors_map_exactly() {
    let t = apfs_tempdir();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    fs::write(&a, b"1").unwrap();
    fs::write(&b, b"2").unwrap();
    assert_eq!(
        reflink_file(&a, &b).unwrap_err().code,
        ErrorCode::ALREADY_EXISTS
    );
    assert_eq!(fs::read(&b).unwrap(), b"2", "never overwritten");
    // Across volumes: the RAM disk and the boot volume.
    let Some(rd) = ramdisk_or_skip(32, "clonefile_errors_map_exactly") else {
        return;
    };
    let e = reflink_file(&a, &rd.mount_point().join("x")).unwrap_err();
    assert_eq!(e.code, ErrorCode::CROSS_DEVICE, "{e}");
    rd.destroy().unwrap();
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn proptest_clonefile_then_modify_does_not_affect_src(
            data in proptest::collection::vec(any::<u8>(), 0..65536),
            patch in proptest::collection::vec(any::<u8>(), 1..4096),
            at in 0usize..65536,
        ) {
            let t = apfs_tempdir();
            let (a, b) = (t.path().join("a"), t.path().join("b"));
            fs::write(&a, &data).unwrap();
            reflink_file(&a, &b).unwrap();
            let mut f = fs::OpenOptions::new().write(true).open(&b).unwrap();
            use std::io::{Seek, SeekFrom};
            f.seek(SeekFrom::Start(at.min(data.len()) as u64)).unwrap();
            f.write_all(&patch).unwrap();
            drop(f);
            prop_assert_eq!(fs::read(&a).unwrap(), data.clone());
            // And the reverse: writing the source leaves the clone alone.
            let clone_now = fs::read(&b).unwrap();
            fs::write(&a, &patch).unwrap();
            prop_assert_eq!(fs::read(&b).unwrap(), clone_now);
        }
    }
}

// ---- snapshots ----

#[test]
fn snapshot_creation_not_supported_on_apfs() {
    let t = apfs_tempdir();
    let opts = ApfsOptions::parse(&format!("root = {:?}", t.path().display().to_string())).unwrap();
    let b = ApfsBackstore::from_options(&opts, Path::new("/nonexistent")).unwrap();
    b.create_layer("l").unwrap();
    let e = b.snapshot_layer("l", "s", true).unwrap_err();
    assert_eq!(e.code, ErrorCode::UNSUPPORTED);
    assert!(!b.capabilities().contains(Capabilities::NATIVE_SNAPSHOTS));
    assert_eq!(
        b.volume_snapshots().unwrap_err().code,
        ErrorCode::UNSUPPORTED,
        "the diskutil wrapper is opt-in"
    );
}

/// The opt-in `diskutil apfs createSnapshot` wrapper on a user volume:
/// macOS may refuse (no such verb, not a Time Machine volume, privileges);
/// either way the answer is a UUID that lists and deletes, or one clear line.
#[test]
fn volume_snapshot_wrapper_gives_a_uuid_or_a_clear_error() {
    let Some(b) = ram_backstore_or_skip(
        "volume_snapshots = true",
        "volume_snapshot_wrapper_gives_a_uuid_or_a_clear_error",
    ) else {
        return;
    };
    let vs = b.volume_snapshots().unwrap();
    match vs.create("agentfs test snapshot ü") {
        Ok(s) => {
            eprintln!("diskutil created snapshot {} ({})", s.uuid, s.name);
            assert!(parse::is_uuid(&s.uuid));
            assert_eq!(s.name, "agentfs_test_snapshot_ü");
            assert!(vs.list().unwrap().iter().any(|l| l.uuid == s.uuid));
            vs.delete(&s.uuid).unwrap();
            assert!(!vs.list().unwrap().iter().any(|l| l.uuid == s.uuid));
        }
        Err(e) => {
            eprintln!("diskutil refused the snapshot: {e}");
            assert!(
                [
                    ErrorCode::UNSUPPORTED,
                    ErrorCode::PERMISSION_DENIED,
                    ErrorCode::IO
                ]
                .contains(&e.code),
                "{e}"
            );
            assert!(
                e.message().starts_with(&format!(
                    "APFS volume snapshot: create on {}: ",
                    vs.volume()
                )),
                "{e}"
            );
            assert!(!e.message().contains('\n'), "{e}");
        }
    }
}

// ---- RAM disk ----

#[test]
fn ramdisk_create_destroy_cycle() {
    let Some(rd) = ramdisk_or_skip(64, "ramdisk_create_destroy_cycle") else {
        return;
    };
    let name = rd.volume_name().to_string();
    let mount = rd.mount_point().to_path_buf();
    assert!(mount.is_dir());
    assert_eq!(volume_owner(&name), Some(std::process::id()));
    assert!(diskutil_list().contains(&name), "volume {name} not listed");
    fs::write(mount.join("f"), b"in RAM").unwrap();
    rd.destroy().unwrap();
    assert!(!diskutil_list().contains(&name), "volume {name} leaked");
    assert!(!mount.join("f").exists());
}

/// What docs/backstores.md says of the RAM disk volume's mount options.
#[test]
fn ramdisk_volume_is_mounted_nosuid_and_noowners() {
    let Some(rd) = ramdisk_or_skip(32, "ramdisk_volume_is_mounted_nosuid_and_noowners") else {
        return;
    };
    let out = Command::new("/sbin/mount").output().unwrap();
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    let needle = format!(" on {} (", rd.mount_point().display());
    let line = table
        .lines()
        .find(|l| l.contains(&needle))
        .unwrap_or_else(|| {
            panic!(
                "{} not in the mount table:\n{table}",
                rd.mount_point().display()
            )
        });
    eprintln!("{line}");
    assert!(line.contains("apfs"), "{line}");
    assert!(line.contains("nosuid"), "{line}");
    assert!(line.contains("noowners"), "{line}");
    rd.destroy().unwrap();
}

#[test]
fn ramdisk_is_apfs() {
    let Some(rd) = ramdisk_or_skip(64, "ramdisk_is_apfs") else {
        return;
    };
    assert_eq!(fs_type_of(rd.mount_point()).unwrap(), "apfs");
    let info = Tools::default()
        .run(Tool::Diskutil, &["info", rd.volume()])
        .unwrap();
    assert_eq!(
        parse::disk_info(&info.stdout).personality.as_deref(),
        Some("APFS")
    );
    rd.destroy().unwrap();
}

#[test]
fn create_backstore_ramdisk_mode() {
    let built = {
        let _guard = constructing();
        agentfs_backstore_apfs::create("ramdisk = { size_mb = 128 }")
    };
    let b = match built {
        Ok(b) => b,
        Err(e) => {
            agentfs_testfs::skip("create_backstore_ramdisk_mode", &e.to_string());
            return;
        }
    };
    assert_eq!(
        b.capabilities(),
        Capabilities::NATIVE_REFLINK.with(Capabilities::RAM_BACKED)
    );
    let st = b.status().unwrap();
    assert_eq!(st.fs_type.as_str(), "apfs");
    assert!(
        st.capacity_bytes >= 100 * MIB && st.capacity_bytes <= 128 * MIB,
        "{st:?}"
    );
    let l = b.create_layer("a").unwrap();
    fs::write(l.join("f"), b"data").unwrap();
    b.reflink(&l.join("f"), &l.join("g")).unwrap();
    assert_eq!(fs::read(l.join("g")).unwrap(), b"data");
    let name = b.ramdisk().unwrap().volume_name().to_string();
    drop(b);
    assert!(
        !diskutil_list().contains(&name),
        "dropping the backstore leaked {name}"
    );
}

#[test]
fn ramdisk_survives_1000_layers_and_clones() {
    let Some(b) = ram_backstore_or_skip("", "ramdisk_survives_1000_layers_and_clones") else {
        return;
    };
    let base = b.create_layer("base").unwrap();
    write_pattern(&base.join("f"), MIB);
    for i in 0..1000 {
        let l = b.create_layer(&format!("l{i}")).unwrap();
        b.reflink(&base.join("f"), &l.join("f")).unwrap();
    }
    assert_eq!(b.list_layers().unwrap().len(), 1001);
    let st = b.status().unwrap();
    assert!(
        st.used_bytes < 200 * MIB,
        "1000 clones of 1 MiB used {st:?}"
    );
}

/// Helper run in a child process by the next test: provisions a RAM disk
/// backstore, prints its mount point, and waits to be killed.
#[test]
fn helper_hold_a_ramdisk_until_killed() {
    if std::env::var_os("AGENTFS_APFS_HOLD_RAMDISK").is_none() {
        return;
    }
    let b = agentfs_backstore_apfs::create("ramdisk = { size_mb = 32 }").unwrap();
    let rd = b.ramdisk().unwrap();
    println!("READY {} {}", rd.volume_name(), rd.mount_point().display());
    std::io::stdout().flush().unwrap();
    let mut line = String::new();
    // Blocks until the parent kills us (or closes our stdin).
    let _ = std::io::stdin().read_line(&mut line);
    std::process::abort();
}

#[test]
fn ramdisk_left_by_a_killed_process_is_cleaned_at_next_start() {
    let _only_cleaner = LEFTOVERS.write().unwrap_or_else(|e| e.into_inner());
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "helper_hold_a_ramdisk_until_killed",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("AGENTFS_APFS_HOLD_RAMDISK", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = None;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("READY ") {
            ready = Some(rest.to_string());
            break;
        }
    }
    let Some(ready) = ready else {
        let _ = child.kill();
        let _ = child.wait();
        agentfs_testfs::skip(
            "ramdisk_left_by_a_killed_process_is_cleaned_at_next_start",
            "the child could not make a RAM disk",
        );
        return;
    };
    let (name, mount) = ready.split_once(' ').unwrap();
    child.kill().unwrap(); // SIGKILL: no destructor runs
    child.wait().unwrap();
    assert!(
        Path::new(mount).is_dir(),
        "the killed child's volume must still be there"
    );
    assert!(diskutil_list().contains(name));

    let cleaned = clean_leftovers(&Tools::default());
    assert!(
        cleaned.iter().any(|l| l.volume_name == name),
        "{name} not cleaned: {cleaned:?}"
    );
    assert!(!diskutil_list().contains(name), "{name} still listed");
}

/// The plugin as the host loads it: the built dylib, through the loader.
#[test]
fn plugin_loads_and_constructs_on_macos() {
    use agentfs_host::{
        config::PluginEntry,
        loader::{library_file_name, load_backstore, SearchPath},
    };
    let dir = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(|d| d.parent())
        .unwrap()
        .to_path_buf();
    let lib = dir.join(library_file_name(
        agentfs_plugin_api::PluginKind::BACKSTORE,
        "apfs",
    ));
    assert!(lib.is_file(), "{} is not built", lib.display());
    let t = apfs_tempdir();
    let mut entry = PluginEntry::named("apfs");
    entry
        .options
        .insert("root".into(), t.path().display().to_string().into());
    let b = load_backstore(&entry, &SearchPath(vec![dir])).unwrap();
    assert_eq!(b.details().platforms, "macos");
    assert_eq!(b.status().unwrap().fs_type.as_str(), "apfs");
    assert!(b.capabilities().contains(Capabilities::NATIVE_REFLINK));
    let l = b.create_layer("x").unwrap();
    fs::write(l.join("a"), b"abi").unwrap();
    b.reflink(&l.join("a"), &l.join("b")).unwrap();
    assert_eq!(fs::read(l.join("b")).unwrap(), b"abi");
    assert_eq!(
        b.snapshot_layer("x", "y", true).unwrap_err().code,
        ErrorCode::UNSUPPORTED
    );
}
