//! Running the real daemon (`agentfs serve`) and real CLI clients in tests.
//! The daemon is started as a child process; the test waits for its
//! readiness line on stdout (never sleeps), and stops it with SIGTERM.

use std::{
    fs,
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, ExitStatus, Output, Stdio},
    time::{Duration, Instant},
};

use agentfs_proto::{Client, DaemonStatus, Hello, Request, Response};

/// The `agentfs` binary.
pub fn agentfs_bin() -> &'static str {
    env!("CARGO_BIN_EXE_agentfs")
}

/// An `agentfs` command for `config` and `socket`, with a clean
/// environment (no AGENTFS_* leaking in from the developer's shell).
pub fn agentfs_cmd(config: &Path, socket: &Path) -> Command {
    agentfs_cmd_of(Path::new(agentfs_bin()), config, socket)
}

/// [`agentfs_cmd`] running the binary at `bin` (e.g. a copy).
pub fn agentfs_cmd_of(bin: &Path, config: &Path, socket: &Path) -> Command {
    // The plugins it finds next to itself exist (built once if needed).
    agentfs_testfs::built(&agentfs_host::loader::library_file_name(
        agentfs_plugin_api::PluginKind::BACKSTORE,
        "mock",
    ));
    let mut c = Command::new(bin);
    c.env("AGENTFS_CONFIG", config)
        .env("AGENTFS_SOCKET", socket)
        .env_remove("AGENTFS_BACKSTORE")
        .env_remove("AGENTFS_BACKSTORE_OPTIONS")
        .env_remove("AGENTFS_FAULT")
        .env_remove("AGENTFS_LOG");
    c
}

/// Runs an `agentfs` command and requires success; returns stdout.
pub fn agentfs_ok(config: &Path, socket: &Path, args: &[&str]) -> String {
    let o: Output = agentfs_cmd(config, socket).args(args).output().unwrap();
    assert!(
        o.status.success(),
        "agentfs {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// [`write_config`] for a hostfs store at `store`.
pub fn hostfs_config(dir: &Path, store: &Path) -> PathBuf {
    write_config(
        dir,
        "hostfs",
        &format!("root = {:?}", store.display().to_string()),
    )
}

/// Writes a config for backstore `plugin` with TOML `options` and the
/// three watch providers.
pub fn write_config(dir: &Path, plugin: &str, options: &str) -> PathBuf {
    let p = dir.join("agentfs.toml");
    fs::write(
        &p,
        format!(
            "[backstore]\nplugin = {plugin:?}\noptions = {{ {options} }}\n\n\
             [[watch]]\nplugin = \"kqueue\"\n\n[[watch]]\nplugin = \"fsevents\"\n\n\
             [[watch]]\nplugin = \"inotify\"\n"
        ),
    )
    .unwrap();
    p
}

/// A running daemon.
pub struct DaemonProc {
    /// The process.
    pub child: Child,
    /// Its socket.
    pub socket: PathBuf,
    stdout: BufReader<ChildStdout>,
    stderr: PathBuf,
}

impl DaemonProc {
    /// Starts `agentfs serve` with `config`, on `socket`, with extra
    /// arguments (global flags before `serve`, then `serve_args`), and
    /// waits for its readiness line.
    pub fn start(config: &Path, socket: &Path, global: &[&str], serve_args: &[&str]) -> Self {
        Self::start_bin(Path::new(agentfs_bin()), config, socket, global, serve_args)
    }

    /// [`DaemonProc::start`] running the `agentfs` binary at `bin` (e.g.
    /// another build, with its plugins next to it).
    pub fn start_bin(
        bin: &Path,
        config: &Path,
        socket: &Path,
        global: &[&str],
        serve_args: &[&str],
    ) -> Self {
        let stderr = config.with_file_name(format!(
            "{}.stderr",
            socket.file_name().unwrap().to_string_lossy()
        ));
        let mut child = agentfs_cmd_of(bin, config, socket)
            .env("AGENTFS_LOG", "info")
            .args(global)
            .arg("serve")
            .args(serve_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        if !line.starts_with("agentfs serve: ready on ") {
            let _ = child.wait();
            panic!(
                "the daemon did not start (stdout {line:?}); stderr:\n{}",
                fs::read_to_string(&stderr).unwrap_or_default()
            );
        }
        assert!(line.contains(&socket.display().to_string()), "{line}");
        Self {
            child,
            socket: socket.to_path_buf(),
            stdout,
            stderr,
        }
    }

    /// A connected client.
    pub fn client(&self, name: &str) -> Client {
        Client::connect(&self.socket, Hello::current(name, None)).unwrap()
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Sends SIGTERM and waits; returns the exit status and the rest of
    /// stdout.
    pub fn stop(mut self) -> (ExitStatus, String) {
        self.terminate()
    }

    fn terminate(&mut self) -> (ExitStatus, String) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        let mut rest = String::new();
        let _ = self.stdout.read_to_string(&mut rest);
        (status, rest)
    }
}

impl Drop for DaemonProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.terminate();
        }
    }
}

/// The daemon's status, through `c`.
pub fn status(c: &mut Client) -> DaemonStatus {
    match c.request(Request::Status).unwrap() {
        Response::Status(s) => *s,
        other => panic!("{other:?}"),
    }
}

/// Asks for the status until `done` holds, for at most 20 s (the daemon
/// notices a dead client asynchronously). Panics with the last status.
pub fn status_until(
    c: &mut Client,
    what: &str,
    done: impl Fn(&DaemonStatus) -> bool,
) -> DaemonStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = status(c);
        if done(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what}: still {s:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}
