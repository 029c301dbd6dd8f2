//! A branch of an AgentFS store as a real filesystem: a FUSE mount (Linux)
//! served by this process over the core's [`Tree`](agentfs_core::Tree) API.
//! Every program sees it, static binaries and raw-syscall runtimes
//! included. [`Mount::new`] mounts, [`Mount::run`] serves until the mount
//! goes away ([`unmount`], or a signal handler calling the
//! [`Mount::unmounter`]); [`registry`] records active mounts for
//! `agentfs status`; [`clean_stale`] removes a mount whose server died.

#[cfg(target_os = "linux")]
mod fs;
#[cfg(target_os = "linux")]
mod fusermount;
pub mod inodes;
#[cfg(target_os = "linux")]
mod invalidate;
pub mod registry;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

#[cfg(target_os = "linux")]
pub use fs::BranchFs;

/// Why mounting or unmounting failed.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// The core refused (no such branch, store trouble).
    #[error(transparent)]
    Core(#[from] agentfs_core::CoreError),
    /// The mountpoint is unusable.
    #[error("{}: {why}", path.display())]
    Mountpoint {
        /// The mountpoint.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The kernel or fusermount3 refused.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// FUSE mounts are not available on this platform.
    #[error("FUSE mounts are only available on Linux")]
    Unsupported,
}

/// Settings of a mount.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// How long the kernel may cache entries and attributes.
    pub ttl: Duration,
    /// Threads serving requests.
    pub threads: usize,
}

impl Default for MountOptions {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(DEFAULT_TTL_SECS),
            threads: 4,
        }
    }
}

/// How long the kernel may cache names and attributes by default: changes
/// through other paths invalidate them at once (see `invalidate`), so this
/// only bounds a missed invalidation.
pub const DEFAULT_TTL_SECS: u64 = 60;

/// The file system type shown in `/proc/self/mountinfo` (`fuse.agentfs`).
pub const SUBTYPE: &str = "agentfs";

/// How opened files are served without passthrough: `"fuse"` (every read
/// and write through this process).
pub const IO_MODE: &str = "fuse";

/// How opened files are served with FUSE passthrough: `"passthrough"` (the
/// kernel reads and writes the layer files itself).
pub const IO_PASSTHROUGH: &str = "passthrough";

/// A mounted branch, not yet serving.
#[cfg(target_os = "linux")]
pub struct Mount {
    session: fuser::Session<BranchFs>,
    mountpoint: PathBuf,
    io: std::sync::Arc<fs::IoState>,
    /// Invalidates the kernel's caches when the branch changes elsewhere.
    sweeper: invalidate::Sweeper,
    /// Mounted through fusermount3 (the session cannot unmount itself).
    via_fusermount: bool,
}

/// Unmounts a [`Mount`] from another thread (a signal handler's, say).
#[cfg(target_os = "linux")]
pub struct Unmounter {
    session: fuser::SessionUnmounter,
    mountpoint: PathBuf,
    via_fusermount: bool,
}

#[cfg(target_os = "linux")]
impl Unmounter {
    /// Unmounts; the serving [`Mount::run`] then returns.
    pub fn unmount(&mut self) -> Result<(), MountError> {
        if self.via_fusermount {
            return unmount(&self.mountpoint, false);
        }
        self.session.unmount().map_err(|source| MountError::Io {
            what: format!("unmount {}", self.mountpoint.display()),
            source,
        })
    }
}

#[cfg(target_os = "linux")]
impl Mount {
    /// Mounts branch `branch` of `store` at `mountpoint` (an existing
    /// directory). A stale mount left there by a killed server is
    /// removed first.
    pub fn new(
        store: std::sync::Arc<agentfs_core::Store>,
        branch: &str,
        mountpoint: &Path,
        opts: &MountOptions,
    ) -> Result<Self, MountError> {
        let bad = |why: &str| MountError::Mountpoint {
            path: mountpoint.to_path_buf(),
            why: why.to_string(),
        };
        clean_stale(mountpoint)?;
        let mountpoint = std::path::absolute(mountpoint).map_err(|e| bad(&e.to_string()))?;
        match std::fs::metadata(&mountpoint) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(bad("not a directory")),
            Err(e) => return Err(bad(&e.to_string())),
        }
        if is_mounted(&mountpoint) {
            return Err(bad("something is already mounted there"));
        }
        let fs = BranchFs::new(store, branch, opts.ttl)?;
        let io_state = fs.io_state();
        let probe = fs.probe_file();
        let (store, branch_name) = fs.target();
        let inodes = fs.inode_table();
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            fuser::MountOption::FSName(format!("agentfs:{branch}")),
            fuser::MountOption::Subtype(SUBTYPE.into()),
            fuser::MountOption::DefaultPermissions,
            fuser::MountOption::NoDev,
            fuser::MountOption::NoSuid,
        ];
        config.n_threads = Some(opts.threads.max(1));
        let direct = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .is_ok()
            && nix::unistd::geteuid().is_root();
        let io = |source| MountError::Io {
            what: format!("mount {}", mountpoint.display()),
            source,
        };
        let (session, via_fusermount) = if direct {
            let session = fuser::Session::new(fs, &mountpoint, &config).map_err(io)?;
            (session, false)
        } else {
            // An ordinary user: through the setuid helper.
            let opts = format!(
                "fsname=agentfs:{branch},subtype={SUBTYPE},default_permissions,nodev,nosuid"
            );
            let fd = fusermount::mount(&mountpoint, &opts).map_err(io)?;
            let session = fuser::Session::from_fd(fs, fd, fuser::SessionACL::Owner, config)
                .map_err(|e| {
                    let _ = unmount(&mountpoint, true);
                    io(e)
                })?;
            (session, true)
        };
        // The kernel agreed to passthrough at init: check that it lets us
        // register a layer file before promising it.
        if io_state.offered.load(std::sync::atomic::Ordering::Relaxed) {
            match probe.and_then(|f| fs::probe_backing(&session, &f)) {
                Ok(()) => io_state
                    .passthrough
                    .store(true, std::sync::atomic::Ordering::Relaxed),
                Err(e) => io_state.fall_back(&e.to_string(), true),
            }
        }
        let _ = io_state.notifier.set(session.notifier());
        let sweeper = invalidate::Sweeper::start(store, branch_name, inodes, io_state.clone())
            .map_err(|source| MountError::Io {
                what: "start the cache invalidation thread".into(),
                source,
            })?;
        Ok(Self {
            session,
            mountpoint,
            io: io_state,
            sweeper,
            via_fusermount,
        })
    }

    /// How opened files are served: [`IO_PASSTHROUGH`] or [`IO_MODE`].
    pub fn io_mode(&self) -> &'static str {
        self.io.mode()
    }

    /// The absolute mountpoint.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// A handle that unmounts (from a signal-handling thread, say).
    pub fn unmounter(&mut self) -> Unmounter {
        Unmounter {
            session: self.session.unmount_callable(),
            mountpoint: self.mountpoint.clone(),
            via_fusermount: self.via_fusermount,
        }
    }

    /// Serves requests until the file system is unmounted.
    pub fn run(self) -> Result<(), MountError> {
        let what = format!("serve {}", self.mountpoint.display());
        let Self {
            session, sweeper, ..
        } = self;
        let r = session.run();
        drop(sweeper);
        r.map_err(|source| MountError::Io { what, source })
    }
}

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Where it is mounted.
    pub mountpoint: PathBuf,
    /// The file system type (`fuse`, or `fuse.agentfs` through fusermount3).
    pub fs_type: String,
    /// The source (`agentfs:BRANCH` for ours).
    pub source: String,
}

impl MountEntry {
    /// True for an AgentFS FUSE mount.
    pub fn is_agentfs(&self) -> bool {
        self.fs_type == format!("fuse.{SUBTYPE}")
            || (self.fs_type == "fuse" && self.source.starts_with("agentfs:"))
    }
}

/// The mount entries of this mount namespace.
pub fn mounts() -> Vec<MountEntry> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let mp = f.get(4)?;
            let dash = f.iter().position(|x| *x == "-")?;
            Some(MountEntry {
                mountpoint: PathBuf::from(unescape(mp)),
                fs_type: f.get(dash + 1)?.to_string(),
                source: unescape(f.get(dash + 2)?),
            })
        })
        .collect()
}

/// True when an AgentFS mount is at `path`.
pub fn is_agentfs_mount(path: &Path) -> bool {
    let Ok(p) = std::path::absolute(path) else {
        return false;
    };
    mounts().iter().any(|m| m.mountpoint == p && m.is_agentfs())
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// True when something is mounted exactly at `path`.
pub fn is_mounted(path: &Path) -> bool {
    let Ok(p) = std::path::absolute(path) else {
        return false;
    };
    mounts().iter().any(|m| m.mountpoint == p)
}

/// True when `path` is an AgentFS mount whose server is gone (the kernel
/// answers ENOTCONN).
pub fn is_stale(path: &Path) -> bool {
    let Ok(p) = std::path::absolute(path) else {
        return false;
    };
    is_agentfs_mount(&p)
        && matches!(std::fs::metadata(&p), Err(e) if e.raw_os_error() == Some(libc::ENOTCONN))
}

/// Removes a stale AgentFS mount at `path` (see [`is_stale`]); true when
/// there was one.
pub fn clean_stale(path: &Path) -> Result<bool, MountError> {
    if !is_stale(path) {
        return Ok(false);
    }
    tracing::warn!(mountpoint = %path.display(), "removing a stale mount left by a killed server");
    unmount(path, true)?;
    Ok(true)
}

/// Unmounts `path`: with umount2(2) when privileged, else with
/// `fusermount3 -u` (`lazy`: detach even if busy).
pub fn unmount(path: &Path, lazy: bool) -> Result<(), MountError> {
    #[cfg(target_os = "linux")]
    {
        let flags = if lazy {
            nix::mount::MntFlags::MNT_DETACH
        } else {
            nix::mount::MntFlags::empty()
        };
        match nix::mount::umount2(path, flags) {
            Ok(()) => return Ok(()),
            // An ordinary user: through fusermount3 below.
            Err(nix::errno::Errno::EPERM) => {}
            Err(e) => {
                return Err(MountError::Io {
                    what: format!("unmount {}", path.display()),
                    source: e.into(),
                })
            }
        }
    }
    if !cfg!(target_os = "linux") {
        return Err(MountError::Unsupported);
    }
    let mut c = Command::new("fusermount3");
    c.arg("-u");
    if lazy {
        c.arg("-z");
    }
    let out = c.arg(path).output().map_err(|e| MountError::Io {
        what: "run fusermount3 (install the fuse3 package)".into(),
        source: e,
    })?;
    if !out.status.success() {
        return Err(MountError::Mountpoint {
            path: path.to_path_buf(),
            why: format!(
                "fusermount3 -u: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(())
}
