//! Where the CLI's branch, snapshot, fs and status commands go: to the
//! daemon when one serves on the socket, else to the store directly. Either
//! way the command is one protocol request answered by the same handler
//! (`agentfs_host::handler`), so the output and the errors are the same;
//! `--json` output names the path used (`"via": "daemon"` or `"store"`),
//! and `AGENTFS_LOG=debug` logs it.

use std::{
    ffi::{OsStr, OsString},
    path::{Path, PathBuf},
};

use agentfs_core::{BranchInfo, DirEntry, FileKind, LockWait, SnapshotInfo, Stat, Store};
use agentfs_host::{daemon::convert, handler, Host};
use agentfs_proto::{Client, FsOp, FsReply, Hello, Request, Response, WirePath};
use anyhow::{anyhow, Result};

/// A daemon connection, and where it is.
pub struct DaemonClient {
    /// The connection.
    pub client: Client,
    /// The socket.
    pub socket: PathBuf,
}

/// The daemon, or the store.
pub enum Backend {
    /// Requests go to the daemon.
    Daemon(Box<DaemonClient>),
    /// Calls go to the store in this process.
    Store(Box<Store>),
}

/// Which tree a read goes to.
#[derive(Debug, Clone, Copy)]
pub enum TreeRef<'a> {
    /// A branch.
    Branch(&'a str),
    /// A snapshot.
    Snapshot(&'a str),
}

/// Connects to the daemon at `socket`; `Ok(None)` when none serves there.
pub fn connect_daemon(socket: &Path) -> Result<Option<DaemonClient>> {
    let hello = Hello::current(&format!("agentfs {}", env!("CARGO_PKG_VERSION")), None);
    match Client::connect(socket, hello) {
        Ok(client) => Ok(Some(DaemonClient {
            client,
            socket: socket.to_path_buf(),
        })),
        Err(e) if e.is_no_daemon() => Ok(None),
        Err(e) => Err(e.into()),
    }
}

impl Backend {
    /// The daemon on `socket` if one serves there (and `direct` is off),
    /// else the store of `host()`.
    pub fn choose(
        socket: &Path,
        direct: bool,
        host: impl FnOnce() -> Result<Host>,
        wait: LockWait,
    ) -> Result<Self> {
        if !direct {
            if let Some(d) = connect_daemon(socket)? {
                tracing::debug!(socket = %socket.display(), "using the daemon");
                return Ok(Self::Daemon(Box::new(d)));
            }
            tracing::debug!(socket = %socket.display(), "no daemon on the socket: using the store directly");
        }
        let h = host()?;
        let b = h.backstore()?;
        Ok(Self::Store(Box::new(Store::open(b, wait)?)))
    }

    /// `"daemon"` or `"store"`.
    pub fn via(&self) -> &'static str {
        match self {
            Self::Daemon(_) => "daemon",
            Self::Store(_) => "store",
        }
    }

    /// One request, answered by the daemon or, in direct mode, by the same
    /// handler the daemon uses, in this process.
    fn ask(&mut self, req: Request) -> Result<Response> {
        match self {
            Self::Daemon(d) => Ok(d.client.request(req)?),
            Self::Store(s) => Ok(handler::handle(s, None, req)?),
        }
    }

    fn fs(&mut self, at: TreeRef<'_>, op: FsOp) -> Result<FsReply> {
        let (branch, snapshot) = match at {
            TreeRef::Branch(b) => (Some(b.to_string()), None),
            TreeRef::Snapshot(s) => (None, Some(s.to_string())),
        };
        match self.ask(Request::Fs {
            branch,
            snapshot,
            op,
        })? {
            Response::Fs(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    /// Creates a branch.
    pub fn create_branch(
        &mut self,
        name: &str,
        from: Option<&str>,
        base: Option<&Path>,
    ) -> Result<BranchInfo> {
        let req = match from {
            Some(snapshot) => Request::BranchFromSnapshot {
                snapshot: snapshot.to_string(),
                name: name.to_string(),
            },
            None => Request::BranchCreate {
                name: name.to_string(),
                base: base.map(absolute).transpose()?,
            },
        };
        match self.ask(req)? {
            Response::Branch(b) => Ok(convert::branch_from_wire(b)),
            other => Err(unexpected(other)),
        }
    }

    /// Every branch.
    pub fn list_branches(&mut self) -> Result<Vec<BranchInfo>> {
        match self.ask(Request::BranchList)? {
            Response::Branches(v) => Ok(v.into_iter().map(convert::branch_from_wire).collect()),
            other => Err(unexpected(other)),
        }
    }

    /// Deletes a branch.
    pub fn delete_branch(&mut self, name: &str) -> Result<()> {
        self.done(Request::BranchDelete {
            name: name.to_string(),
        })
    }

    /// Compacts a branch; true when layers were merged.
    pub fn compact_branch(&mut self, name: &str) -> Result<bool> {
        match self.ask(Request::BranchCompact {
            name: name.to_string(),
        })? {
            Response::Compacted(b) => Ok(b),
            other => Err(unexpected(other)),
        }
    }

    /// Snapshots a branch.
    pub fn create_snapshot(&mut self, branch: &str, name: Option<&str>) -> Result<SnapshotInfo> {
        match self.ask(Request::SnapshotCreate {
            branch: branch.to_string(),
            name: name.map(str::to_string),
        })? {
            Response::Snapshot(x) => Ok(convert::snapshot_from_wire(x)),
            other => Err(unexpected(other)),
        }
    }

    /// Every snapshot.
    pub fn list_snapshots(&mut self) -> Result<Vec<SnapshotInfo>> {
        match self.ask(Request::SnapshotList)? {
            Response::Snapshots(v) => Ok(v.into_iter().map(convert::snapshot_from_wire).collect()),
            other => Err(unexpected(other)),
        }
    }

    /// Deletes a snapshot.
    pub fn delete_snapshot(&mut self, name: &str) -> Result<()> {
        self.done(Request::SnapshotDelete {
            name: name.to_string(),
        })
    }

    fn done(&mut self, req: Request) -> Result<()> {
        match self.ask(req)? {
            Response::Done | Response::Fs(FsReply::Done) | Response::Fs(FsReply::Written(_)) => {
                Ok(())
            }
            other => Err(unexpected(other)),
        }
    }

    fn fs_done(&mut self, branch: &str, op: FsOp) -> Result<()> {
        match self.fs(TreeRef::Branch(branch), op)? {
            FsReply::Done | FsReply::Written(_) => {
                // Mounts of the branch drop what their kernels cache before
                // the command returns (the daemon does so before replying).
                if let Self::Store(s) = self {
                    s.settle_mounts(branch);
                }
                Ok(())
            }
            other => Err(anyhow!("unexpected reply from the daemon: {other:?}")),
        }
    }

    /// A directory listing.
    pub fn read_dir(&mut self, at: TreeRef<'_>, path: &OsStr) -> Result<Vec<DirEntry>> {
        match self.fs(at, FsOp::ReadDir { path: path.into() })? {
            FsReply::Entries(v) => Ok(v.into_iter().map(convert::entry_from_wire).collect()),
            other => Err(anyhow!("unexpected reply from the daemon: {other:?}")),
        }
    }

    /// Metadata of an entry (a final symlink is not followed).
    pub fn lstat(&mut self, at: TreeRef<'_>, path: &OsStr) -> Result<Stat> {
        match self.fs(
            at,
            FsOp::Stat {
                path: path.into(),
                follow: false,
            },
        )? {
            FsReply::Stat(st) => Ok(convert::stat_from_wire(st)),
            other => Err(anyhow!("unexpected reply from the daemon: {other:?}")),
        }
    }

    /// Copies a whole file to `out`, one bounded read at a time (never
    /// the whole file in memory); returns the bytes copied.
    pub fn copy_file_to(
        &mut self,
        at: TreeRef<'_>,
        path: &OsStr,
        out: &mut impl std::io::Write,
    ) -> Result<u64> {
        let mut offset = 0u64;
        loop {
            let chunk = match self.fs(
                at,
                FsOp::Read {
                    path: path.into(),
                    offset,
                    len: handler::MAX_READ,
                },
            )? {
                FsReply::Data(d) => d,
                other => return Err(anyhow!("unexpected reply from the daemon: {other:?}")),
            };
            if chunk.is_empty() {
                return Ok(offset);
            }
            out.write_all(&chunk)?;
            offset += chunk.len() as u64;
        }
    }

    /// A symlink's target.
    pub fn read_link(&mut self, at: TreeRef<'_>, path: &OsStr) -> Result<OsString> {
        match self.fs(at, FsOp::Readlink { path: path.into() })? {
            FsReply::Target(t) => Ok(t.into_os_string()),
            other => Err(anyhow!("unexpected reply from the daemon: {other:?}")),
        }
    }

    /// Replaces (or creates) a file's content.
    pub fn write_file(&mut self, branch: &str, path: &OsStr, data: Vec<u8>) -> Result<()> {
        self.fs_done(
            branch,
            FsOp::WriteFile {
                path: path.into(),
                data,
            },
        )
    }

    /// Removes an entry (`recursive`: a whole tree).
    pub fn remove(&mut self, branch: &str, path: &OsStr, recursive: bool) -> Result<()> {
        let path = WirePath::from(path);
        let op = if recursive {
            FsOp::RemoveAll { path }
        } else if self.lstat(TreeRef::Branch(branch), path.as_os_str())?.kind == FileKind::Dir {
            FsOp::Rmdir { path }
        } else {
            FsOp::Unlink { path }
        };
        self.fs_done(branch, op)
    }

    /// Renames an entry.
    pub fn rename(&mut self, branch: &str, from: &OsStr, to: &OsStr) -> Result<()> {
        self.fs_done(
            branch,
            FsOp::Rename {
                from: from.into(),
                to: to.into(),
            },
        )
    }

    /// Creates a directory (`parents`: and missing parents).
    pub fn mkdir(&mut self, branch: &str, path: &OsStr, parents: bool) -> Result<()> {
        let path = WirePath::from(path);
        let op = if parents {
            FsOp::MkdirAll { path }
        } else {
            FsOp::Mkdir { path, mode: 0o755 }
        };
        self.fs_done(branch, op)
    }

    /// Creates a symlink.
    pub fn symlink(&mut self, branch: &str, target: &OsStr, path: &OsStr) -> Result<()> {
        self.fs_done(
            branch,
            FsOp::Symlink {
                target: target.into(),
                path: path.into(),
            },
        )
    }

    /// Sets permission bits.
    pub fn chmod(&mut self, branch: &str, path: &OsStr, mode: u32) -> Result<()> {
        self.fs_done(
            branch,
            FsOp::Chmod {
                path: path.into(),
                mode,
            },
        )
    }
}

fn absolute(p: &Path) -> Result<String> {
    let abs = std::path::absolute(p).map_err(|e| anyhow!("{}: {e}", p.display()))?;
    Ok(abs.to_string_lossy().into_owned())
}

fn unexpected(r: Response) -> anyhow::Error {
    anyhow!("unexpected answer from the daemon: {r:?}")
}
