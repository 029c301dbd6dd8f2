//! Helpers for the hostile-input tests: commands that must finish within a
//! bound (a hang is a failure, not a stuck test run), and a hostfs store
//! with a base, a branch `b` and a socket path for a daemon.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output},
    sync::mpsc,
    time::Duration,
};

use super::daemon::{agentfs_cmd, write_config, DaemonProc};

/// How long a command that must not hang may take.
pub const LIMIT: Duration = Duration::from_secs(60);

/// Runs `cmd` to completion, or kills it and panics after `limit`.
pub fn output_within(mut cmd: Command, limit: Duration, what: &str) -> Output {
    cmd.stdin(std::process::Stdio::null());
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(o) => o.unwrap(),
        Err(_) => {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("{what}: still running after {limit:?} (it hangs)");
        }
    }
}

/// Waits for `child` to exit, for at most `limit`; `None` if it did not.
pub fn wait_within(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let pid = child.id() as libc::pid_t;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut status = 0;
        // SAFETY: waitpid on our own child with a valid status pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        let _ = tx.send((r, status));
    });
    match rx.recv_timeout(limit) {
        Ok((r, status)) if r == pid => {
            use std::os::unix::process::ExitStatusExt;
            // Reaped here: the Child must not wait again.
            Some(ExitStatus::from_raw(status))
        }
        _ => None,
    }
}

/// A hostfs store over `<dir>/base` with branch `b`, a config and a socket
/// path (no daemon until [`Served::serve`]).
pub struct Served {
    _t: tempfile::TempDir,
    /// The directory.
    pub dir: PathBuf,
    /// The config file.
    pub config: PathBuf,
    /// The daemon's socket.
    pub socket: PathBuf,
}

impl Served {
    /// A fresh store; `make_base` fills the base before `init`.
    pub fn new(make_base: impl FnOnce(&Path)) -> Self {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().to_path_buf();
        let base = dir.join("base");
        fs::create_dir_all(&base).unwrap();
        make_base(&base);
        let config = write_config(
            &dir,
            "hostfs",
            &format!("root = {:?}", dir.join("store").display().to_string()),
        );
        let s = Self {
            socket: dir.join("run/agentfs.sock"),
            _t: t,
            dir,
            config,
        };
        s.ok(&["--direct", "init", "--base", base.to_str().unwrap()]);
        s.ok(&["--direct", "branch", "create", "b"]);
        s
    }

    /// The base directory.
    pub fn base(&self) -> PathBuf {
        self.dir.join("base")
    }

    /// An `agentfs` command (through the daemon when one serves).
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = agentfs_cmd(&self.config, &self.socket);
        c.args(args).current_dir(&self.dir);
        c
    }

    /// Runs `agentfs args` within [`LIMIT`].
    pub fn run(&self, args: &[&str]) -> Output {
        output_within(self.cmd(args), LIMIT, &format!("agentfs {args:?}"))
    }

    /// Runs and requires success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "agentfs {args:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    /// Runs and requires failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(!o.status.success(), "agentfs {args:?} should have failed");
        String::from_utf8(o.stderr).unwrap()
    }

    /// Starts the daemon.
    pub fn serve(&self) -> DaemonProc {
        DaemonProc::start(&self.config, &self.socket, &[], &[])
    }
}
