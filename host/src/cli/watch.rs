//! `agentfs watch --branch B [PATH] [--json] [--native API]`: prints a
//! branch's events as they happen, through the daemon: a real client of
//! the whole event pipeline short of injection. By default it subscribes
//! to core events under PATH; with `--native` it registers a watch on PATH
//! through the chosen provider and prints the native records a process
//! using that API would get (acknowledging each delivery, as the shim does).

use std::{io::Write, path::Path, process::ExitCode};

use agentfs_plugin_api::watch::WatchApi;
use agentfs_proto::{
    ClientError, DaemonFrame, Request, Response, WatchRegistration, WireCoreEvent, WireEventKind,
    WirePath,
};
use agentfs_vocab::native::{flag_names, fsevents, inotify, kqueue};
use anyhow::{bail, Result};

use super::backend::connect_daemon;

/// A native watch API for `--native`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NativeApi {
    /// kqueue EVFILT_VNODE records (NOTE_*), as on macOS.
    Kqueue,
    /// FSEvents stream events (kFSEventStreamEventFlag*), as on macOS.
    Fsevents,
    /// inotify events (IN_*), as on Linux.
    Inotify,
}

fn kind_name(k: WireEventKind) -> String {
    match k {
        WireEventKind::Created => "created".into(),
        WireEventKind::Removed => "removed".into(),
        WireEventKind::Modified => "modified".into(),
        WireEventKind::Renamed => "renamed".into(),
        WireEventKind::AttributesChanged => "attributes".into(),
        WireEventKind::BranchCreated => "branch-created".into(),
        WireEventKind::SnapshotCreated => "snapshot-created".into(),
        WireEventKind::Other(n) => format!("kind-{n}"),
    }
}

fn size(v: u64) -> serde_json::Value {
    if v == u64::MAX {
        serde_json::Value::Null
    } else {
        v.into()
    }
}

/// One core event as a line of text or JSON.
pub fn event_line(e: &WireCoreEvent, json: bool) -> String {
    if json {
        let mut v = serde_json::json!({
            "seq": e.seq,
            "pid": e.pid,
            "kind": kind_name(e.kind),
            "branch": e.branch,
            "path": e.path.to_string_lossy(),
            "is_dir": e.is_dir,
            "size_before": size(e.size_before),
            "size_after": size(e.size_after),
        });
        // Names that are not UTF-8 keep their exact bytes beside the text.
        if e.path.to_str().is_none() {
            v["path_bytes"] = e.path.as_bytes().into();
        }
        if !e.to.is_empty() {
            v["to"] = e.to.to_string_lossy().into();
            if e.to.to_str().is_none() {
                v["to_bytes"] = e.to.as_bytes().into();
            }
        }
        return v.to_string();
    }
    let dir = if e.is_dir { "/" } else { "" };
    let q = |p: &WirePath| crate::output::quoted(p.as_bytes()).into_owned();
    let what = match e.kind {
        WireEventKind::Renamed => format!("{}{dir} -> {}{dir}", q(&e.path), q(&e.to)),
        WireEventKind::BranchCreated => e.branch.clone(),
        WireEventKind::SnapshotCreated => format!("{} {}", e.branch, q(&e.to)),
        _ => format!("{}{dir}", q(&e.path)),
    };
    format!("{} {} {what} (pid {})", e.seq, kind_name(e.kind), e.pid)
}

fn registration(api: NativeApi, branch: &str, path: &str) -> WatchRegistration {
    let pid = std::process::id();
    let branch = Some(branch.to_string());
    match api {
        NativeApi::Kqueue => WatchRegistration::Kqueue {
            pid,
            kqueue_id: 1,
            fd: 0,
            vnode_flags: kqueue::NOTE_ALL_VNODE,
            path: path.into(),
            branch,
        },
        NativeApi::Fsevents => WatchRegistration::FsEvents {
            pid,
            stream_id: 1,
            path_prefixes: vec![path.to_string()],
            flags: fsevents::CREATE_FLAG_FILE_EVENTS,
            latency: 0.0,
            visible_root: "/".into(),
            branch,
        },
        NativeApi::Inotify => WatchRegistration::Inotify {
            pid,
            instance: 1,
            wd: 1,
            path: path.into(),
            mask: inotify::IN_ALL_EVENTS,
            branch,
        },
    }
}

/// Runs the command until the daemon goes away (or stdout is closed).
pub fn run(
    socket: &Path,
    branch: &str,
    path: &str,
    json: bool,
    native: Option<NativeApi>,
) -> Result<ExitCode> {
    let Some(mut d) = connect_daemon(socket)? else {
        bail!(
            "agentfs watch needs a daemon, and none serves on {}: start one with `agentfs serve`",
            socket.display()
        );
    };
    let what = match native {
        None => match d.client.request(Request::Subscribe {
            branch: Some(branch.to_string()),
            path: path.into(),
        })? {
            Response::Subscribed { .. } => "core events".to_string(),
            other => bail!("unexpected answer from the daemon: {other:?}"),
        },
        Some(api) => match d
            .client
            .request(Request::WatchRegister(registration(api, branch, path)))?
        {
            Response::WatchRegistered { watch_id, .. } => {
                format!("{api:?} records (watch {watch_id})").to_lowercase()
            }
            other => bail!("unexpected answer from the daemon: {other:?}"),
        },
    };
    // The readiness line: events from here on are printed.
    eprintln!(
        "agentfs watch: {what} of branch {branch}, path {:?}, through the daemon on {}",
        path,
        socket.display()
    );
    let mut out = std::io::stdout().lock();
    loop {
        let frame = match d.client.next_push() {
            Ok(f) => f,
            Err(ClientError::Closed) => {
                eprintln!("agentfs watch: the daemon closed the connection");
                return Ok(ExitCode::from(1));
            }
            Err(e) => return Err(e.into()),
        };
        let mut lines = Vec::new();
        match frame {
            DaemonFrame::CoreEvents(b) => {
                if b.dropped > 0 {
                    lines.push(if json {
                        serde_json::json!({ "dropped": b.dropped }).to_string()
                    } else {
                        format!("({} events dropped: this watcher fell behind)", b.dropped)
                    });
                }
                lines.extend(b.events.iter().map(|e| event_line(e, json)));
            }
            DaemonFrame::Events(del) => {
                let api = WatchApi(del.api);
                for r in &del.records {
                    let names = flag_names(api.0, r.flags);
                    lines.push(if json {
                        serde_json::json!({
                            "api": api.name(),
                            "watch_id": r.watch_id,
                            "handle": r.handle,
                            "seq": r.seq,
                            "flags": r.flags,
                            "names": names,
                            "cookie": r.cookie,
                            "name": r.name,
                            "retire_watch": r.retire_watch,
                        })
                        .to_string()
                    } else {
                        let mut l = format!("{} {} {}", r.seq, api.name(), names.join("|"));
                        if !r.name.is_empty() {
                            l.push_str(&format!(" {}", crate::output::quoted(r.name.as_bytes())));
                        }
                        if r.cookie != 0 {
                            l.push_str(&format!(" cookie={}", r.cookie));
                        }
                        if r.retire_watch {
                            l.push_str(" (watch gone)");
                        }
                        l
                    });
                }
                d.client.ack(del.api, del.instance)?;
            }
            _ => continue,
        }
        for l in lines {
            if writeln!(out, "{l}").is_err() {
                return Ok(ExitCode::SUCCESS); // stdout closed: the reader is done
            }
        }
        if out.flush().is_err() {
            return Ok(ExitCode::SUCCESS);
        }
    }
}
