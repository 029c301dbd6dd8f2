//! A btrfs volume in RAM: a sparse file in `/dev/shm`, formatted with
//! `mkfs.btrfs`, attached to a loop device and mounted on a private
//! directory. Dropping a [`RamVolume`] unmounts it, detaches the loop device
//! and removes the file and the directory.
//!
//! Every piece is named `agentfs-btrfs-ram-<pid>-<start>-<seq>` after the
//! process that made it (`<start>` is that process's start time, so a
//! recycled pid is not mistaken for the owner). A volume whose owner is gone
//! (killed before it could clean up) is found and removed by
//! [`reap_stale`], which every backstore start runs.

use std::{
    fs, io,
    os::unix::{
        ffi::OsStrExt,
        fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    },
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU64, Ordering},
};

use agentfs_plugin_api::{ErrorCode, PluginError, PluginResult};
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::loopdev::{self, LoopDevice};

/// Name prefix of every file, device backing and mount point we make.
pub const PREFIX: &str = "agentfs-btrfs-ram-";
/// Smallest volume mkfs.btrfs accepts comfortably, in MiB.
pub const MIN_SIZE_MB: u64 = 128;

/// How to make a RAM volume. [`RamConfig::new`] fills in the defaults.
#[derive(Debug, Clone)]
pub struct RamConfig {
    /// Size of the volume in MiB (at least [`MIN_SIZE_MB`]).
    pub size_mb: u64,
    /// The tmpfs directory holding the image file (`/dev/shm`).
    pub shm_dir: PathBuf,
    /// Where the private mount directory is made (the temp directory).
    pub mount_parent: PathBuf,
    /// Directories searched for `mkfs.btrfs` (`$PATH`, then `/usr/sbin`, `/sbin`).
    pub tool_dirs: Vec<PathBuf>,
}

impl RamConfig {
    /// The defaults for a volume of `size_mb` MiB.
    pub fn new(size_mb: u64) -> Self {
        let mut tool_dirs: Vec<PathBuf> = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect())
            .unwrap_or_default();
        for d in ["/usr/local/sbin", "/usr/sbin", "/sbin"] {
            if !tool_dirs.iter().any(|t| t == Path::new(d)) {
                tool_dirs.push(PathBuf::from(d));
            }
        }
        Self {
            size_mb,
            shm_dir: PathBuf::from("/dev/shm"),
            mount_parent: std::env::temp_dir(),
            tool_dirs,
        }
    }
}

/// The process that made a volume, read back from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    /// Its pid.
    pub pid: u32,
    /// Its start time in clock ticks after boot (`/proc/<pid>/stat` field 22).
    pub start: u64,
}

impl Owner {
    /// This process.
    pub fn current() -> Self {
        let pid = std::process::id();
        Self {
            pid,
            start: start_time(pid).unwrap_or(0),
        }
    }

    /// True while the process that made the volume still runs.
    pub fn alive(&self) -> bool {
        start_time(self.pid) == Some(self.start)
    }
}

/// Field 22 (`starttime`) of `/proc/<pid>/stat`.
fn start_time(pid: u32) -> Option<u64> {
    parse_start_time(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Parses `starttime` out of a `/proc/<pid>/stat` line (the command name
/// may hold spaces and parentheses, so fields are counted after the last `)`).
pub fn parse_start_time(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The name for volume `seq` of `owner`.
pub fn volume_name(owner: Owner, seq: u64) -> String {
    format!("{PREFIX}{}-{}-{seq}", owner.pid, owner.start)
}

/// Reads the owner back from a volume name, with or without `.img`.
pub fn parse_volume_name(name: &str) -> Option<Owner> {
    let rest = name.strip_prefix(PREFIX)?;
    let rest = rest.strip_suffix(".img").unwrap_or(rest);
    let mut parts = rest.split('-');
    let pid = parts.next()?.parse().ok()?;
    let start = parts.next()?.parse().ok()?;
    parts.next()?.parse::<u64>().ok()?;
    parts.next().is_none().then_some(Owner { pid, start })
}

/// Decodes the octal escapes (`\040` for a space, ...) of `/proc/*/mountinfo`.
pub fn unescape_mount_path(field: &str) -> PathBuf {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            let oct = &b[i + 1..i + 4];
            if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                out.push((oct[0] - b'0') * 64 + (oct[1] - b'0') * 8 + (oct[2] - b'0'));
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    PathBuf::from(std::ffi::OsStr::from_bytes(&out))
}

/// The mount points listed in a mountinfo text (field 5 of each line).
pub fn mount_points(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mount_path)
        .collect()
}

fn current_mount_points() -> Vec<PathBuf> {
    mount_points(&fs::read_to_string("/proc/self/mountinfo").unwrap_or_default())
}

/// Whether a path's final name is one of ours and its owner is gone.
fn stale(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .and_then(parse_volume_name)
        .is_some_and(|o| !o.alive())
}

/// Finds RAM volumes whose owner process is gone and removes them:
/// unmounts their mounts, detaches their loop devices, deletes their image
/// files in `shm_dir` and their mount directories in `mount_parent`.
/// Returns one line per thing removed; what cannot be removed is logged.
pub fn reap_stale(shm_dir: &Path, mount_parent: &Path) -> Vec<String> {
    let mut done = Vec::new();
    for mp in current_mount_points().into_iter().filter(|p| stale(p)) {
        match unmount(&mp) {
            Ok(()) => done.push(format!("unmounted {}", mp.display())),
            Err(e) => {
                tracing::warn!(mount = %mp.display(), error = %e, "cannot unmount a stale RAM volume")
            }
        }
    }
    for (number, backing) in loopdev::attached() {
        if backing.parent() == Some(shm_dir) && stale(&backing) {
            match loopdev::detach_number(number) {
                Ok(()) => done.push(format!("detached /dev/loop{number}")),
                Err(e) => {
                    tracing::warn!(device = number, error = %e, "cannot detach the loop device of a stale RAM volume")
                }
            }
        }
    }
    let mounted = current_mount_points();
    for (dir, is_image) in [(shm_dir, true), (mount_parent, false)] {
        let Ok(rd) = fs::read_dir(dir) else { continue };
        for ent in rd.flatten() {
            let p = ent.path();
            let name = ent.file_name();
            let image = name.as_bytes().ends_with(b".img");
            if image != is_image || !stale(&p) || mounted.contains(&p) {
                continue;
            }
            let r = if is_image {
                fs::remove_file(&p)
            } else {
                fs::remove_dir(&p)
            };
            match r {
                Ok(()) => done.push(format!("removed {}", p.display())),
                Err(e) => {
                    tracing::warn!(path = %p.display(), error = %e, "cannot remove a stale RAM volume's leftover")
                }
            }
        }
    }
    for line in &done {
        tracing::info!("stale RAM volume cleanup: {line}");
    }
    done
}

/// Unmounts `mp`; when busy, detaches it lazily (the kernel finishes once
/// the last open file on it closes). Removes the directory afterwards.
fn unmount(mp: &Path) -> io::Result<()> {
    match umount2(mp, MntFlags::empty()) {
        Ok(()) => {}
        Err(nix::errno::Errno::EBUSY) => {
            tracing::warn!(mount = %mp.display(), "RAM volume busy: unmounting lazily");
            umount2(mp, MntFlags::MNT_DETACH)?;
        }
        Err(e) => return Err(e.into()),
    }
    let _ = fs::remove_dir(mp);
    Ok(())
}

/// Finds `tool` in `dirs`.
pub fn find_tool(tool: &str, dirs: &[PathBuf]) -> Option<PathBuf> {
    dirs.iter().map(|d| d.join(tool)).find(|p| {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// Checks what a RAM volume needs before touching anything, and says
/// everything that is missing in one error.
pub fn preflight(cfg: &RamConfig) -> PluginResult<PathBuf> {
    if cfg.size_mb < MIN_SIZE_MB {
        return Err(PluginError::invalid(format!(
            "ramdisk.size_mb = {} is too small: a btrfs volume needs at least {MIN_SIZE_MB} MiB",
            cfg.size_mb
        )));
    }
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    let mkfs = find_tool("mkfs.btrfs", &cfg.tool_dirs);
    let mut missing = Vec::new();
    if uid != 0 {
        missing.push(format!(
            "root: attaching a loop device and mounting need root (this process runs as uid {uid}); \
             run as root, or drop `ramdisk` and set `root` to a directory on btrfs"
        ));
    }
    if mkfs.is_none() {
        missing.push(format!(
            "mkfs.btrfs: not found in {}; install btrfs-progs",
            cfg.tool_dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(":")
        ));
    }
    if !missing.is_empty() {
        let code = if uid != 0 {
            ErrorCode::PERMISSION_DENIED
        } else {
            ErrorCode::NOT_FOUND
        };
        return Err(PluginError::new(
            code,
            format!("btrfs ramdisk: missing {}", missing.join("; and ")),
        ));
    }
    let free = nix::sys::statvfs::statvfs(&cfg.shm_dir).map_err(|e| {
        PluginError::from_io(format!("statvfs {}", cfg.shm_dir.display()), &e.into())
    })?;
    #[allow(clippy::unnecessary_cast)]
    let avail = free.blocks_available() as u64 * free.fragment_size() as u64;
    if cfg.size_mb << 20 > avail {
        return Err(PluginError::new(
            ErrorCode::NO_SPACE,
            format!(
                "btrfs ramdisk: {} MiB requested but {} has only {} MiB free",
                cfg.size_mb,
                cfg.shm_dir.display(),
                avail >> 20
            ),
        ));
    }
    Ok(mkfs.expect("checked above"))
}

static SEQ: AtomicU64 = AtomicU64::new(0);

/// A mounted btrfs volume in RAM; dropping it removes every trace.
#[derive(Debug)]
pub struct RamVolume {
    name: String,
    image: PathBuf,
    mount_point: PathBuf,
    size_mb: u64,
    loop_dev: Option<LoopDevice>,
    loop_path: PathBuf,
    dir_made: bool,
    mounted: bool,
}

impl RamVolume {
    /// Makes, formats, attaches and mounts a volume.
    pub fn create(cfg: &RamConfig) -> PluginResult<Self> {
        let mkfs = preflight(cfg)?;
        let name = volume_name(Owner::current(), SEQ.fetch_add(1, Ordering::Relaxed));
        let mut vol = Self {
            image: cfg.shm_dir.join(format!("{name}.img")),
            mount_point: cfg.mount_parent.join(&name),
            name,
            size_mb: cfg.size_mb,
            loop_dev: None,
            loop_path: PathBuf::new(),
            dir_made: false,
            mounted: false,
        };
        let io_err = |what: &str, p: &Path, e: io::Error| {
            PluginError::from_io(format!("btrfs ramdisk: {what} {}", p.display()), &e)
        };
        // From here on, `vol`'s Drop undoes whatever was done if a step fails.
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&vol.image)
            .and_then(|f| f.set_len(cfg.size_mb << 20))
            .map_err(|e| io_err("create image", &vol.image, e))?;
        let out = Command::new(&mkfs)
            .args(["-q", "-f", "-L", "agentfs-ram"])
            .arg(&vol.image)
            .output()
            .map_err(|e| io_err("run", &mkfs, e))?;
        if !out.status.success() {
            return Err(PluginError::new(
                ErrorCode::IO,
                format!(
                    "btrfs ramdisk: {} failed: {}",
                    mkfs.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            ));
        }
        let dev = LoopDevice::attach(&vol.image)
            .map_err(|e| io_err("attach a loop device to", &vol.image, e))?;
        vol.loop_path = dev.path().to_path_buf();
        vol.loop_dev = Some(dev);
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&vol.mount_point)
            .map_err(|e| io_err("create mount directory", &vol.mount_point, e))?;
        vol.dir_made = true;
        mount(
            Some(&vol.loop_path),
            &vol.mount_point,
            Some("btrfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOATIME,
            None::<&str>,
        )
        .map_err(|e| {
            let hint = if e == nix::errno::Errno::ENODEV {
                " (the kernel has no btrfs: modprobe btrfs)"
            } else {
                ""
            };
            PluginError::from_io(
                format!(
                    "btrfs ramdisk: mount {} on {}{hint}",
                    vol.loop_path.display(),
                    vol.mount_point.display()
                ),
                &e.into(),
            )
        })?;
        vol.mounted = true;
        // The fresh filesystem's root is 0755: keep the volume private.
        fs::set_permissions(&vol.mount_point, fs::Permissions::from_mode(0o700))
            .map_err(|e| io_err("make private", &vol.mount_point, e))?;
        tracing::info!(mount = %vol.mount_point.display(), device = %vol.loop_path.display(),
                       size_mb = cfg.size_mb, "btrfs RAM volume mounted");
        Ok(vol)
    }

    /// Where the volume is mounted.
    pub fn mount_point(&self) -> &Path {
        &self.mount_point
    }

    /// The image file in `/dev/shm`.
    pub fn image(&self) -> &Path {
        &self.image
    }

    /// The loop device (`/dev/loopN`).
    pub fn loop_device(&self) -> &Path {
        &self.loop_path
    }

    /// The volume's name (`agentfs-btrfs-ram-<pid>-<start>-<seq>`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its size in MiB.
    pub fn size_mb(&self) -> u64 {
        self.size_mb
    }
}

impl Drop for RamVolume {
    fn drop(&mut self) {
        if self.mounted {
            if let Err(e) = umount2(&self.mount_point, MntFlags::empty()) {
                tracing::warn!(mount = %self.mount_point.display(), error = %e,
                               "RAM volume busy at drop: unmounting lazily");
                if let Err(e) = umount2(&self.mount_point, MntFlags::MNT_DETACH) {
                    tracing::error!(mount = %self.mount_point.display(), error = %e, "cannot unmount RAM volume");
                }
            }
        }
        if let Some(dev) = self.loop_dev.take() {
            if let Err(e) = dev.detach() {
                tracing::warn!(device = %self.loop_path.display(), error = %e, "cannot detach loop device");
            }
        }
        if let Err(e) = fs::remove_file(&self.image) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(image = %self.image.display(), error = %e, "cannot remove RAM volume image");
            }
        }
        if self.dir_made {
            if let Err(e) = fs::remove_dir(&self.mount_point) {
                tracing::warn!(mount = %self.mount_point.display(), error = %e, "cannot remove mount directory");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_reject_strangers() {
        let o = Owner {
            pid: 4242,
            start: 987654,
        };
        let n = volume_name(o, 7);
        assert_eq!(n, "agentfs-btrfs-ram-4242-987654-7");
        assert_eq!(parse_volume_name(&n), Some(o));
        assert_eq!(parse_volume_name(&format!("{n}.img")), Some(o));
        for bad in [
            "agentfs-btrfs-ram-",
            "agentfs-btrfs-ram-1-2",
            "agentfs-btrfs-ram-1-2-3-4",
            "agentfs-btrfs-ram-x-2-3",
            "agentfs-testfs-btrfs-123",
            "other",
        ] {
            assert_eq!(parse_volume_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn start_time_is_read_after_the_command_name() {
        let line = "77 (a) b (c)) S 1 77 77 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 123456 1000 10";
        assert_eq!(parse_start_time(line), Some(123456));
        assert_eq!(parse_start_time("garbage"), None);
    }

    #[test]
    fn this_process_is_alive_and_a_wrong_start_time_is_not() {
        let me = Owner::current();
        assert!(me.alive());
        assert!(!Owner {
            start: me.start + 1,
            ..me
        }
        .alive());
        assert!(!Owner {
            pid: u32::MAX,
            start: 0
        }
        .alive());
    }

    #[test]
    fn mountinfo_paths_are_unescaped() {
        let info = "36 35 98:0 / /mnt/with\\040space rw,noatime master:1 - ext3 /dev/root rw\n\
                    37 35 0:5 / /dev/shm rw - tmpfs tmpfs rw\n";
        assert_eq!(
            mount_points(info),
            vec![PathBuf::from("/mnt/with space"), PathBuf::from("/dev/shm")]
        );
        assert_eq!(unescape_mount_path("a\\134b"), PathBuf::from("a\\b"));
        assert_eq!(unescape_mount_path("end\\04"), PathBuf::from("end\\04"));
    }

    #[test]
    fn preflight_rejects_small_sizes_and_names_a_missing_mkfs() {
        let mut cfg = RamConfig::new(64);
        let e = preflight(&cfg).unwrap_err();
        assert_eq!(e.code, ErrorCode::INVALID_ARGUMENT);
        assert!(e.message().contains("at least 128"), "{e}");
        cfg.size_mb = 256;
        cfg.tool_dirs = vec![PathBuf::from("/nonexistent-agentfs-dir")];
        let e = preflight(&cfg).unwrap_err();
        assert!(e.message().contains("mkfs.btrfs"), "{e}");
        assert!(e.message().contains("btrfs-progs"), "{e}");
        assert!(e.message().contains("/nonexistent-agentfs-dir"), "{e}");
    }
}
