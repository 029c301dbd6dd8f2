//! The one `Request -> Response` function over a store. The daemon answers
//! clients with it and the CLI's direct mode (no daemon) calls it in
//! process, so the two paths give the same answers and the same errors.
//! Requests that need a daemon (watches, subscriptions, `fd_open`,
//! doorbells) are not store requests; [`handle`] refuses them.

use std::{ffi::OsStr, os::unix::fs::FileExt, path::Path};

use agentfs_core::{CoreError, FileKind, Store, Tree};
use agentfs_proto::{FsOp, FsReply, Request, Response, MAX_FRAME_LEN};

use crate::daemon::convert;

/// Largest `Read` answered in one frame.
pub const MAX_READ: u64 = (MAX_FRAME_LEN / 2) as u64;

/// True for requests [`handle`] answers: branches, snapshots and file
/// operations.
pub fn is_store_request(r: &Request) -> bool {
    matches!(
        r,
        Request::Ping
            | Request::BranchCreate { .. }
            | Request::BranchFromSnapshot { .. }
            | Request::BranchList
            | Request::BranchDelete { .. }
            | Request::BranchCompact { .. }
            | Request::SnapshotCreate { .. }
            | Request::SnapshotList
            | Request::SnapshotDelete { .. }
            | Request::Fs { .. }
    )
}

/// True for store requests that may change the store (and so publish
/// events); false for pure reads.
pub fn modifies(r: &Request) -> bool {
    match r {
        Request::Ping | Request::BranchList | Request::SnapshotList => false,
        Request::Fs { op, .. } => !is_read(op),
        _ => true,
    }
}

/// Answers store request `req` over `store`. `default_branch` is the branch
/// of a file operation that names none (the daemon connection's, from its
/// `Hello`).
pub fn handle(
    store: &Store,
    default_branch: Option<&str>,
    req: Request,
) -> Result<Response, CoreError> {
    match req {
        Request::Ping => Ok(Response::Pong),
        Request::BranchCreate { name, base } => {
            if let Some(b) = base.as_deref().filter(|b| !Path::new(b).is_absolute()) {
                // It would resolve against whatever directory the daemon
                // was started in.
                return Err(CoreError::InvalidArgument(format!(
                    "base {b:?}: give an absolute path"
                )));
            }
            store
                .create_branch(&name, None, base.as_deref().map(Path::new))
                .map(|b| Response::Branch(convert::branch_to_wire(b)))
        }
        Request::BranchFromSnapshot { snapshot, name } => store
            .create_branch(&name, Some(&snapshot), None)
            .map(|b| Response::Branch(convert::branch_to_wire(b))),
        Request::BranchList => store
            .list_branches()
            .map(|v| Response::Branches(v.into_iter().map(convert::branch_to_wire).collect())),
        Request::BranchDelete { name } => store.delete_branch(&name).map(|()| Response::Done),
        Request::BranchCompact { name } => store.compact_branch(&name).map(Response::Compacted),
        Request::SnapshotCreate { branch, name } => store
            .create_snapshot(&branch, name.as_deref())
            .map(|x| Response::Snapshot(convert::snapshot_to_wire(x))),
        Request::SnapshotList => store
            .list_snapshots()
            .map(|v| Response::Snapshots(v.into_iter().map(convert::snapshot_to_wire).collect())),
        Request::SnapshotDelete { name } => store.delete_snapshot(&name).map(|()| Response::Done),
        Request::Fs {
            branch,
            snapshot,
            op,
        } => fs(store, default_branch, branch, snapshot, op).map(Response::Fs),
        other => Err(CoreError::Unsupported(format!(
            "{} without a daemon (`agentfs serve`)",
            request_name(&other)
        ))),
    }
}

fn fs(
    store: &Store,
    default_branch: Option<&str>,
    branch: Option<String>,
    snapshot: Option<String>,
    op: FsOp,
) -> Result<FsReply, CoreError> {
    let tree = match (snapshot, branch) {
        (Some(_), Some(_)) => {
            return Err(CoreError::InvalidArgument(
                "a file operation names a branch or a snapshot, not both".into(),
            ))
        }
        (Some(snap), None) => store.snapshot(&snap),
        (None, Some(b)) => store.branch(&b),
        (None, None) => match default_branch {
            Some(b) => store.branch(b),
            None => {
                return Err(CoreError::InvalidArgument(
                    "no branch: name one in the request, or in the connection's Hello".into(),
                ))
            }
        },
    };
    if is_read(&op) {
        read_op(&tree, op)
    } else {
        write_op(&tree, op)
    }
}

/// The request's name, for messages.
pub fn request_name(r: &Request) -> &'static str {
    match r {
        Request::Ping => "ping",
        Request::Status => "status",
        Request::BranchCreate { .. } => "branch create",
        Request::BranchFromSnapshot { .. } => "branch create --from",
        Request::BranchList => "branch list",
        Request::BranchDelete { .. } => "branch delete",
        Request::BranchCompact { .. } => "branch compact",
        Request::SnapshotCreate { .. } => "snapshot create",
        Request::SnapshotList => "snapshot list",
        Request::SnapshotDelete { .. } => "snapshot delete",
        Request::Fs { .. } => "fs",
        Request::WatchRegister(_) => "watch register",
        Request::WatchUnregister { .. } => "watch unregister",
        Request::Subscribe { .. } => "subscribe",
        Request::Unsubscribe { .. } => "unsubscribe",
        Request::FdOpen(_) | Request::FdOpenWithWriter(_) => "fd_open",
        Request::FdClose { .. } => "fd_close",
        Request::Doorbell(_) => "doorbell",
        Request::BranchChain { .. } => "branch chain",
        Request::PublishEvents { .. } => "publish events",
    }
}

/// True for the operations that change nothing (allowed on snapshots).
pub fn is_read(op: &FsOp) -> bool {
    matches!(
        op,
        FsOp::Stat { .. }
            | FsOp::ReadDir { .. }
            | FsOp::Read { .. }
            | FsOp::Readlink { .. }
            | FsOp::Canonical { .. }
            | FsOp::GetXattr { .. }
            | FsOp::ListXattr { .. }
    )
}

fn read_op(t: &Tree<'_>, op: FsOp) -> Result<FsReply, CoreError> {
    Ok(match op {
        FsOp::Stat { path, follow } => FsReply::Stat(convert::stat_to_wire(&if follow {
            t.stat(path.as_os_str())?
        } else {
            t.lstat(path.as_os_str())?
        })),
        FsOp::Canonical { path, follow } => {
            FsReply::Target(t.canonical(path.as_os_str(), follow)?.to_os_string().into())
        }
        FsOp::GetXattr { path, name } => match t.get_xattr(path.as_os_str(), OsStr::new(&name))? {
            Some(v) => FsReply::Data(v),
            None => {
                return Err(CoreError::NotFound(format!(
                    "{path}: extended attribute {name}"
                )))
            }
        },
        FsOp::ListXattr { path } => FsReply::Names(
            t.list_xattr(path.as_os_str())?
                .into_iter()
                .map(|n| n.to_string_lossy().into_owned())
                .collect(),
        ),
        FsOp::ReadDir { path } => FsReply::Entries(
            t.read_dir(path.as_os_str())?
                .into_iter()
                .map(convert::entry_to_wire)
                .collect(),
        ),
        FsOp::Read { path, offset, len } => {
            let f = t.open_read(path.as_os_str())?;
            let want = len.min(MAX_READ) as usize;
            let mut buf = vec![0u8; want];
            let mut got = 0;
            while got < want {
                match f.read_at(&mut buf[got..], offset + got as u64) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(CoreError::io(format!("read {path}"), e)),
                }
            }
            buf.truncate(got);
            FsReply::Data(buf)
        }
        FsOp::Readlink { path } => FsReply::Target(t.read_link(path.as_os_str())?.into()),
        _ => unreachable!("only read operations come here"),
    })
}

fn write_op(t: &Tree<'_>, op: FsOp) -> Result<FsReply, CoreError> {
    Ok(match op {
        FsOp::Write { path, offset, data } => {
            t.write_at(path.as_os_str(), offset, &data)?;
            FsReply::Written(data.len() as u64)
        }
        FsOp::WriteFile { path, data } => {
            t.write_file(path.as_os_str(), &data)?;
            FsReply::Written(data.len() as u64)
        }
        FsOp::Create {
            path,
            mode,
            exclusive,
        } => {
            match t.create(path.as_os_str(), mode) {
                Err(CoreError::AlreadyExists(_)) if !exclusive => {
                    if t.stat(path.as_os_str())?.kind == FileKind::Dir {
                        return Err(CoreError::IsDirectory(path.to_string()));
                    }
                }
                r => r?,
            }
            FsReply::Done
        }
        FsOp::Mkdir { path, mode } => {
            t.mkdir(path.as_os_str(), mode)?;
            FsReply::Done
        }
        FsOp::MkdirAll { path } => {
            t.mkdir_all(path.as_os_str())?;
            FsReply::Done
        }
        FsOp::Rmdir { path } => {
            t.rmdir(path.as_os_str())?;
            FsReply::Done
        }
        FsOp::Unlink { path } => {
            t.unlink(path.as_os_str())?;
            FsReply::Done
        }
        FsOp::RemoveAll { path } => {
            t.remove_all(path.as_os_str())?;
            FsReply::Done
        }
        FsOp::Rename { from, to } => {
            t.rename(from.as_os_str(), to.as_os_str())?;
            FsReply::Done
        }
        FsOp::Truncate { path, size } => {
            t.truncate(path.as_os_str(), size)?;
            FsReply::Done
        }
        FsOp::Symlink { target, path } => {
            t.symlink(&target, path.as_os_str())?;
            FsReply::Done
        }
        FsOp::Chmod { path, mode } => {
            t.chmod(path.as_os_str(), mode)?;
            FsReply::Done
        }
        FsOp::SetTimes {
            path,
            atime_ns,
            mtime_ns,
        } => {
            t.set_times(
                path.as_os_str(),
                atime_ns.map(convert::time_from_ns),
                mtime_ns.map(convert::time_from_ns),
            )?;
            FsReply::Done
        }
        FsOp::SetXattr { path, name, value } => {
            t.set_xattr(path.as_os_str(), OsStr::new(&name), &value)?;
            FsReply::Done
        }
        FsOp::RemoveXattr { path, name } => {
            t.remove_xattr(path.as_os_str(), OsStr::new(&name))?;
            FsReply::Done
        }
        FsOp::Stat { .. }
        | FsOp::ReadDir { .. }
        | FsOp::Read { .. }
        | FsOp::Readlink { .. }
        | FsOp::Canonical { .. }
        | FsOp::GetXattr { .. }
        | FsOp::ListXattr { .. } => return read_op(t, op),
    })
}
