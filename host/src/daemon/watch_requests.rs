//! The daemon's watch requests: native watch registration and removal,
//! and doorbells (how a registered process is woken).

use std::{ffi::OsStr, os::fd::OwnedFd};

use agentfs_plugin_api::watch::{WatchApi, WatchSpec};
use agentfs_proto::{Response, WatchRegistration, WireError};
use agentfs_vocab::{codes, native::inotify::IN_DONT_FOLLOW};

use super::{
    doorbell,
    state::{Daemon, Session},
};
use agentfs_core::FileKind;

use super::requests::{core, plugin_err};

impl Daemon {
    pub(super) fn watch_register(
        &self,
        s: &Session,
        reg: WatchRegistration,
    ) -> Result<Response, WireError> {
        let api = WatchApi(reg.api());
        let pid_or = |p: u32| if p == 0 { s.pid } else { p };
        let spec = match reg {
            WatchRegistration::FsEvents {
                pid,
                stream_id,
                path_prefixes,
                flags,
                latency: _,
                visible_root,
                branch,
            } => {
                let branch = self.branch_of(s, branch)?;
                // Prefixes that exist are watched at their canonical path
                // (where the core reports events); others as given.
                let prefixes: Vec<String> = self.with_store(|st| {
                    let t = st.branch(&branch);
                    t.lstat("").map_err(core)?;
                    Ok(path_prefixes
                        .iter()
                        .map(|p| {
                            t.canonical(p.as_str(), true)
                                .map_or_else(|_| p.clone(), |c| c.to_string())
                        })
                        .collect())
                })?;
                let template = WatchSpec {
                    watch_id: 0,
                    pid: pid_or(pid),
                    instance: stream_id,
                    handle: stream_id,
                    branch: branch.as_str().into(),
                    path: "".into(),
                    visible_root: visible_root.as_str().into(),
                    is_dir: true,
                    flags: u64::from(flags),
                };
                self.watch
                    .register_stream(s.conn, template, &prefixes)
                    .map_err(plugin_err)?
            }
            WatchRegistration::Kqueue {
                pid,
                kqueue_id,
                fd,
                vnode_flags,
                path,
                branch,
            } => {
                let branch = self.branch_of(s, branch)?;
                let (path, is_dir) = self.resolve_watched(&branch, path.as_os_str(), true)?;
                let spec = WatchSpec {
                    watch_id: 0,
                    pid: pid_or(pid),
                    instance: kqueue_id,
                    handle: u64::from(fd as u32),
                    branch: branch.as_str().into(),
                    path: path.as_str().into(),
                    visible_root: "".into(),
                    is_dir,
                    flags: u64::from(vnode_flags),
                };
                self.watch.register(s.conn, api, spec).map_err(plugin_err)?
            }
            WatchRegistration::Inotify {
                pid,
                instance,
                wd,
                path,
                mask,
                branch,
            } => {
                let branch = self.branch_of(s, branch)?;
                let follow = mask & IN_DONT_FOLLOW == 0;
                let (path, is_dir) = self.resolve_watched(&branch, path.as_os_str(), follow)?;
                let spec = WatchSpec {
                    watch_id: 0,
                    pid: pid_or(pid),
                    instance,
                    handle: u64::from(wd as u32),
                    branch: branch.as_str().into(),
                    path: path.as_str().into(),
                    visible_root: "".into(),
                    is_dir,
                    flags: u64::from(mask),
                };
                self.watch.register(s.conn, api, spec).map_err(plugin_err)?
            }
        };
        Ok(Response::WatchRegistered {
            watch_id: spec.watch_id,
            handle: spec.handle,
        })
    }

    /// The canonical path of an existing entry a watch names, and whether
    /// it is a directory. A path hidden by a whiteout is `not-found`.
    fn resolve_watched(
        &self,
        branch: &str,
        path: &OsStr,
        follow: bool,
    ) -> Result<(String, bool), WireError> {
        self.with_store(|st| {
            let t = st.branch(branch);
            let canon = t.canonical(path, follow).map_err(core)?;
            if canon.to_os_string().to_str().is_none() {
                return Err(WireError::new(
                    codes::UNSUPPORTED,
                    format!("{canon}: a watched path must be UTF-8 (watch providers name paths as text)"),
                ));
            }
            let kind = if follow {
                t.stat(&canon).map_err(core)?.kind
            } else {
                t.lstat(&canon).map_err(core)?.kind
            };
            Ok((canon.to_string(), kind == FileKind::Dir))
        })
    }

    pub(super) fn doorbell(
        &self,
        s: &Session,
        d: agentfs_proto::Doorbell,
        fd: Option<OwnedFd>,
    ) -> Result<Response, WireError> {
        let fd = fd.ok_or_else(|| {
            WireError::new(WireError::PROTOCOL, "a Doorbell request must carry an fd")
        })?;
        let target = doorbell::make(&d.kind, fd).map_err(plugin_err)?;
        self.watch
            .set_doorbell(s.conn, doorbell::api_of(&d.kind), d.instance, target);
        Ok(Response::Done)
    }
}
