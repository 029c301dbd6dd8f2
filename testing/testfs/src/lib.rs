//! Real filesystems for tests: loop-mounted btrfs, XFS (reflink=1) and ext4
//! images, and tmpfs mounts, removed on drop (unmount, detach the loop
//! device, delete the image).
//!
//! When the environment cannot provide one (not root, no mkfs tool, no loop
//! device), [`TestFs::create`] says why; [`mount_or_skip`] then prints
//! `skipped: <test>: <why>` on stderr and returns `None`, unless
//! `AGENTFS_REQUIRE_COW=1`, where it panics so CI never silently skips.

use std::{
    fmt,
    path::{Path, PathBuf},
    process::Command,
};

/// The filesystems this helper can make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsKind {
    /// btrfs on a loop device.
    Btrfs,
    /// XFS with reflink=1 on a loop device.
    Xfs,
    /// ext4 on a loop device.
    Ext4,
    /// A tmpfs mount.
    Tmpfs,
}

impl fmt::Display for FsKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Btrfs => "btrfs",
            Self::Xfs => "xfs",
            Self::Ext4 => "ext4",
            Self::Tmpfs => "tmpfs",
        })
    }
}

/// A mounted test filesystem; dropping it unmounts and cleans up.
#[derive(Debug)]
pub struct TestFs {
    kind: FsKind,
    mount: tempfile::TempDir,
    image: Option<PathBuf>,
    loopdev: Option<String>,
    mounted: bool,
}

/// Whether `AGENTFS_REQUIRE_COW=1` is set (CI): skips become failures.
pub fn require_cow() -> bool {
    std::env::var("AGENTFS_REQUIRE_COW").is_ok_and(|v| v == "1")
}

/// Reports a skip on stderr, or panics when skips are not allowed.
pub fn skip(test: &str, why: &str) {
    if require_cow() {
        panic!("{test}: cannot run ({why}) and AGENTFS_REQUIRE_COW=1 forbids skipping");
    }
    eprintln!("skipped: {test}: {why}");
}

/// Makes a filesystem or reports the skip (see [`skip`]).
pub fn mount_or_skip(kind: FsKind, size_mb: u64, test: &str) -> Option<TestFs> {
    match TestFs::create(kind, size_mb) {
        Ok(fs) => Some(fs),
        Err(why) => {
            skip(test, &why);
            None
        }
    }
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn have(tool: &str) -> bool {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .any(|d| Path::new(d).join(tool).exists())
}

/// Directory for images: `AGENTFS_TESTFS_DIR`, else the temp directory.
fn image_dir() -> PathBuf {
    std::env::var_os("AGENTFS_TESTFS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
}

impl TestFs {
    /// Creates and mounts a filesystem of at least `size_mb` MiB (XFS is
    /// raised to its 300 MiB minimum, btrfs to 128 MiB).
    pub fn create(kind: FsKind, size_mb: u64) -> Result<Self, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(format!("mounting {kind} needs root"));
        }
        let mount = tempfile::Builder::new()
            .prefix(&format!("agentfs-testfs-{kind}-"))
            .tempdir()
            .map_err(|e| format!("tempdir: {e}"))?;
        let mut fs = Self {
            kind,
            mount,
            image: None,
            loopdev: None,
            mounted: false,
        };
        let mnt = fs.mount.path().to_path_buf();
        if kind == FsKind::Tmpfs {
            run(Command::new("mount")
                .args(["-t", "tmpfs", "-o"])
                .arg(format!("size={size_mb}m"))
                .arg("tmpfs")
                .arg(&mnt))?;
            fs.mounted = true;
            return Ok(fs);
        }
        let (mkfs, args, min): (&str, &[&str], u64) = match kind {
            FsKind::Btrfs => ("mkfs.btrfs", &["-q", "-f"], 128),
            FsKind::Xfs => ("mkfs.xfs", &["-q", "-f", "-m", "reflink=1"], 300),
            FsKind::Ext4 => ("mkfs.ext4", &["-q", "-F"], 16),
            FsKind::Tmpfs => unreachable!(),
        };
        if !have(mkfs) {
            let pkg = match kind {
                FsKind::Btrfs => "btrfs-progs",
                FsKind::Xfs => "xfsprogs",
                _ => "e2fsprogs",
            };
            return Err(format!("{mkfs} not found (install {pkg})"));
        }
        let image = tempfile::Builder::new()
            .prefix(&format!("agentfs-testfs-{kind}-"))
            .suffix(".img")
            .tempfile_in(image_dir())
            .map_err(|e| format!("image file: {e}"))?
            .into_temp_path()
            .keep()
            .map_err(|e| format!("image file: {e}"))?;
        fs.image = Some(image.clone());
        std::fs::OpenOptions::new()
            .write(true)
            .open(&image)
            .and_then(|f| f.set_len(size_mb.max(min) << 20))
            .map_err(|e| format!("size image: {e}"))?;
        let dev = run(Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&image))
        .map_err(|e| format!("no loop device: {e}"))?;
        fs.loopdev = Some(dev.clone());
        run(Command::new(mkfs).args(args).arg(&dev))?;
        run(Command::new("mount").arg(&dev).arg(&mnt))?;
        fs.mounted = true;
        Ok(fs)
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        self.mount.path()
    }

    /// The filesystem kind.
    pub fn kind(&self) -> FsKind {
        self.kind
    }

    /// The loop device, for loop-backed kinds.
    pub fn loop_device(&self) -> Option<&str> {
        self.loopdev.as_deref()
    }

    /// Free bytes as statvfs reports them (`f_bavail * f_frsize`), after a sync.
    pub fn free_bytes(&self) -> u64 {
        free_bytes(self.path())
    }
}

/// Writes `len` bytes of a non-repeating pattern (xorshift) to a new file
/// `p`, 1 MiB at a time, and syncs it: data a filesystem cannot
/// deduplicate or compress away, for space and reflink measurements.
pub fn write_pattern(p: &Path, len: u64) {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(p).expect("create"));
    let mut block = vec![0u8; 1 << 20];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut left = len;
    while left > 0 {
        for chunk in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        let n = left.min(block.len() as u64) as usize;
        f.write_all(&block[..n]).expect("write");
        left -= n as u64;
    }
    f.into_inner().expect("flush").sync_all().expect("fsync");
}

/// Free bytes of the filesystem holding `p`, after syncing it.
pub fn free_bytes(p: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).expect("path without NUL");
    // SAFETY: plain syscalls on a valid path; `st` is a valid out-pointer.
    unsafe {
        libc::sync();
        let mut st: libc::statvfs = std::mem::zeroed();
        assert_eq!(
            libc::statvfs(c.as_ptr(), &mut st),
            0,
            "statvfs {}",
            p.display()
        );
        #[allow(clippy::unnecessary_cast)]
        {
            st.f_bavail as u64 * st.f_frsize as u64
        }
    }
}

impl Drop for TestFs {
    fn drop(&mut self) {
        if self.mounted {
            if let Err(e) = run(Command::new("umount").arg(self.mount.path())) {
                // A busy mount (open fds in the test): detach lazily.
                eprintln!("testfs: {e}; unmounting lazily");
                let _ = run(Command::new("umount").arg("-l").arg(self.mount.path()));
            }
        }
        if let Some(dev) = &self.loopdev {
            let _ = run(Command::new("losetup").arg("-d").arg(dev));
        }
        if let Some(img) = &self.image {
            let _ = std::fs::remove_file(img);
        }
    }
}

/// `Command::output`, retrying while exec fails with `ETXTBSY`: a freshly
/// copied executable can still be open for writing in a child that another
/// test thread forked during the copy (it closes on that child's exec).
/// This is the kernel race Go's os/exec also retries; it is bounded.
pub fn output_retrying_etxtbsy(c: &mut Command) -> std::process::Output {
    for _ in 0..100 {
        match c.output() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            r => return r.expect("spawn child"),
        }
    }
    panic!("spawn child: the copied executable stayed busy (ETXTBSY)")
}

/// `target/<profile>`: where the running test binary (in its `deps/`) and
/// the workspace's plugin libraries are built.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().map(Path::to_path_buf).unwrap_or(dir)
    } else {
        dir
    }
}

/// Makes sure the workspace is built (plugin libraries, fixtures, binaries)
/// next to the running test binary, so `cargo test -p <crate>` works on a
/// clean checkout: when `file` (a library file name such as
/// `libagentfs_backstore_mock.so`) is missing from [`target_dir`], runs
/// `cargo build --workspace` once per test process (cargo's own lock
/// serialises concurrent test binaries). Returns the file's path.
pub fn built(file: &str) -> PathBuf {
    static ONCE: std::sync::Once = std::sync::Once::new();
    let dir = target_dir();
    let path = dir.join(file);
    if !path.exists() {
        ONCE.call_once(|| build_workspace(&dir));
    }
    path
}

fn build_workspace(dir: &Path) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut c = Command::new(cargo);
    c.arg("build")
        .arg("--workspace")
        .arg("--manifest-path")
        .arg(root.join("Cargo.toml"));
    if dir.file_name().is_some_and(|n| n == "release") {
        c.arg("--release");
    }
    if let Some(target) = dir.parent() {
        c.arg("--target-dir").arg(target);
    }
    eprintln!("building the workspace for this test: {c:?}");
    let status = c.status().expect("run cargo build");
    assert!(status.success(), "`cargo build --workspace` failed");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_mounts_and_leaves_nothing_behind() {
        for kind in [FsKind::Btrfs, FsKind::Xfs, FsKind::Ext4, FsKind::Tmpfs] {
            let Some(fs) = mount_or_skip(kind, 64, "testfs::each_kind_mounts") else {
                continue;
            };
            let mnt = fs.path().to_path_buf();
            std::fs::write(mnt.join("f"), b"x").unwrap();
            let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
            assert!(mounts.contains(mnt.to_str().unwrap()), "{kind} not mounted");
            let dev = fs.loop_device().map(str::to_string);
            drop(fs);
            let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
            assert!(
                !mounts.contains(mnt.to_str().unwrap()),
                "{kind} still mounted"
            );
            if let Some(dev) = dev {
                let list = run(Command::new("losetup").arg("-a")).unwrap_or_default();
                assert!(
                    !list.contains(&format!("{dev}:")),
                    "{dev} still attached: {list}"
                );
            }
        }
    }
}
