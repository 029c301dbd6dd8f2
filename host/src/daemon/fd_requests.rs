//! The daemon's `fd_open` and `FdClose`: real fds for branch files, and the
//! records of files open for writing (their `Modified` event on close).

use std::{os::fd::OwnedFd, sync::atomic::Ordering};

use agentfs_plugin_api::{ErrorCode, PluginError};
use agentfs_proto::{FdOpen, FdOpened, Response, WireError};

use super::{
    convert,
    state::{Daemon, FdRecord, Session},
};

use super::requests::{core, plugin_err, Handled};

/// Most files one connection may have open for writing through `fd_open`
/// (records awaiting their `FdClose`).
pub const MAX_RECORDS_PER_CONNECTION: usize = 4096;

impl Daemon {
    /// `fd_open` as a request's answer: the response and its fds (the
    /// file's, then, with `hand_over`, the writer registration's).
    pub(super) fn fd_open_answer(&self, s: &Session, o: FdOpen, hand_over: bool) -> Handled {
        match self.fd_open(s, o, hand_over) {
            Ok((opened, fd, writer)) => {
                let mut fds = vec![fd];
                fds.extend(writer);
                (Ok(Response::FdOpened(opened)), fds)
            }
            Err(e) => (Err(e), Vec::new()),
        }
    }

    /// Opens a branch file for session `s`. For writing, the daemon keeps
    /// a record (for the `Modified` at close) and the branch's writer
    /// registration: held in the record until `FdClose`, or with
    /// `hand_over` returned as an fd for the client to hold (the client's
    /// own close releases it, in the kernel, with no request).
    pub(super) fn fd_open(
        &self,
        s: &Session,
        o: FdOpen,
        hand_over: bool,
    ) -> Result<(FdOpened, OwnedFd, Option<OwnedFd>), WireError> {
        let branch = self.branch_of(s, o.branch)?;
        let opts = convert::open_options(o.flags, o.mode);
        if opts.modifies() {
            let held = self
                .records
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .filter(|r| r.conn == s.conn)
                .count();
            if held >= MAX_RECORDS_PER_CONNECTION {
                return Err(plugin_err(PluginError::new(
                    ErrorCode::NO_SPACE,
                    format!(
                        "this connection already has {held} files open for writing (the most \
                         one may have): close some (FdClose) first"
                    ),
                )));
            }
        }
        let opened = if opts.modifies() {
            self.mutate(s.pid, |st| {
                st.branch(&branch)
                    .open(o.path.as_os_str(), &opts)
                    .map_err(core)
            })?
        } else {
            self.with_store(|st| {
                st.branch(&branch)
                    .open(o.path.as_os_str(), &opts)
                    .map_err(core)
            })?
        };
        if opened.created {
            // A new name, with the store's locks released: mounts of the
            // branch drop what their kernels cache of its directory before
            // the requester hears back (as after a mutating `Fs` request).
            self.settle_mounts(&branch);
        }
        let mut out = FdOpened {
            copied_up: opened.copied_up,
            reflinked: opened.reflinked,
            created: opened.created,
            record: 0,
            writer: false,
        };
        let mut writer = opened.writer;
        let mut handed = None;
        if hand_over {
            handed = writer.take().map(agentfs_core::WriterLock::into_fd);
            out.writer = handed.is_some();
        }
        if opts.modifies() {
            let md = opened
                .file
                .metadata()
                .map_err(|e| WireError::from_io("fstat", &e))?;
            use std::os::unix::fs::MetadataExt;
            let id = self.next_record.fetch_add(1, Ordering::Relaxed);
            self.records
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(
                    id,
                    FdRecord {
                        conn: s.conn,
                        pid: s.pid,
                        branch,
                        path: opened.path.to_string(),
                        size: md.size(),
                        mtime_ns: md.mtime() * 1_000_000_000 + md.mtime_nsec(),
                        ino: md.ino(),
                        writer: writer.map(std::sync::Arc::new),
                    },
                );
            out.record = id;
        }
        Ok((out, opened.file.into(), handed))
    }

    pub(super) fn fd_close(&self, s: &Session, record: u64) -> Result<(), WireError> {
        let r = {
            let mut recs = self.records.lock().unwrap_or_else(|p| p.into_inner());
            match recs.get(&record) {
                Some(r) if r.conn == s.conn => recs.remove(&record),
                _ => None,
            }
        };
        let r = r.ok_or_else(|| {
            plugin_err(PluginError::new(
                ErrorCode::NOT_FOUND,
                format!("fd record {record}: no such record on this connection"),
            ))
        })?;
        self.close_record(&r)
    }

    /// Publishes `Modified` if the file of record `r` changed since it was
    /// opened.
    pub(super) fn close_record(&self, r: &FdRecord) -> Result<(), WireError> {
        let now = self.with_store(|st| st.branch(&r.branch).stat(r.path.as_str()).map_err(core))?;
        let mtime_ns = convert::time_ns(now.mtime);
        if now.ino == r.ino && now.size == r.size && mtime_ns == r.mtime_ns {
            return Ok(());
        }
        self.mutate(r.pid, |st| {
            st.branch(&r.branch)
                .report_modified(r.path.as_str(), Some(r.size))
                .map_err(core)
        })
    }
}
