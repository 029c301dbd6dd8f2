//! Helpers shared by this crate's integration tests.
#![allow(dead_code, unused_imports)]

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use agentfs_backstore_btrfs::BtrfsBackstore;

/// TOML options naming `root`.
pub fn root_opts(root: &Path) -> String {
    format!("root = {:?}", root.display().to_string())
}

/// A backstore rooted at `<dir>/store`.
pub fn backstore_in(dir: &Path) -> BtrfsBackstore {
    BtrfsBackstore::new(&root_opts(&dir.join("store"))).expect("open btrfs backstore")
}

/// Env var that tells an ignored helper test it runs as a child.
pub const CHILD_ENV: &str = "AGENTFS_BTRFS_TEST_CHILD";

/// A command that re-runs this test binary for the one (ignored) helper
/// test `name`, with `arg` in [`CHILD_ENV`].
pub fn child(name: &str, arg: &str) -> Command {
    helper_command(
        &std::env::current_exe().expect("test binary path"),
        name,
        arg,
    )
}

fn helper_command(exe: &Path, name: &str, arg: &str) -> Command {
    let mut c = Command::new(exe);
    c.args([name, "--exact", "--ignored", "--nocapture"])
        .arg("--test-threads=1")
        .env(CHILD_ENV, arg);
    c
}

/// The argument a helper test was given, or `None` when it runs as a test
/// of its own (it then has nothing to do).
pub fn child_arg() -> Option<String> {
    std::env::var(CHILD_ENV).ok()
}

/// The value of the line `KEY value` a child printed (libtest may have put
/// `test NAME ... ` before the first one).
pub fn field(out: &str, key: &str) -> Option<String> {
    let key = format!("{key} ");
    out.lines()
        .find_map(|l| {
            let l = l.rsplit_once(" ... ").map_or(l, |(_, rest)| rest);
            l.strip_prefix(&key)
        })
        .map(str::to_string)
}

/// `/proc/mounts` now.
pub fn proc_mounts() -> String {
    std::fs::read_to_string("/proc/mounts").expect("read /proc/mounts")
}

/// Whether `p` is a mount point now (from /proc/self/mountinfo).
pub fn is_mounted(p: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    agentfs_backstore_btrfs::ramdisk::mount_points(&info)
        .iter()
        .any(|m| m == p)
}

/// `losetup -a` output now.
pub fn losetup_a() -> String {
    let out = Command::new("losetup")
        .arg("-a")
        .output()
        .expect("run losetup -a");
    assert!(out.status.success(), "losetup -a failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Writes `len` bytes of a non-repeating pattern to `p` (shared with the
/// other crates' space measurements).
pub use agentfs_testfs::write_pattern;

/// A path in `dir` that does not exist yet.
pub fn fresh(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    assert!(!p.exists());
    p
}

/// The unprivileged user children run as (`nobody`).
pub const NOBODY: u32 = 65534;

/// Like [`child`], but the child runs as `uid`/`gid` from a world-readable
/// copy of this test binary (the build directory may be private to root).
/// Keep the returned directory alive while the child runs.
pub fn child_as(name: &str, arg: &str, uid: u32) -> (Command, tempfile::TempDir) {
    use std::os::unix::{fs::PermissionsExt, process::CommandExt};
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let exe = dir.path().join("test-child");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).expect("copy test binary");
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut c = helper_command(&exe, name, arg);
    c.current_dir("/").uid(uid).gid(uid);
    (c, dir)
}

/// Runs a child to completion and returns its stdout, failing the test
/// with everything it printed when it failed.
pub fn run_ok(mut c: Command) -> String {
    let out = spawn_retrying_etxtbsy(&mut c);
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        out.status.success(),
        "child failed ({}):\n{so}\n{se}",
        out.status
    );
    assert!(
        so.contains("1 passed"),
        "child ran no helper test:\n{so}\n{se}"
    );
    so
}

/// `Command::output`, retrying while exec fails with ETXTBSY (see
/// [`agentfs_testfs::output_retrying_etxtbsy`]).
fn spawn_retrying_etxtbsy(c: &mut Command) -> std::process::Output {
    agentfs_testfs::output_retrying_etxtbsy(c)
}

/// Whether this process runs as root (needed for mounts and other users).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
