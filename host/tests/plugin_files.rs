//! Hostile and broken plugin files, and what the CLI makes of broken
//! plugins: every case is one clear line and a bounded run, never a hang, a
//! signal or a silent success. Plugins come from the target dir.

mod common;

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use common::{plugin_lib, target_dir};

fn agentfs() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_agentfs"));
    c.env_remove("AGENTFS_ALLOW_INSECURE_PLUGINS")
        .env_remove("AGENTFS_CONFIG")
        .env("AGENTFS_SOCKET", "/nonexistent/agentfs-test.sock");
    c
}

/// Runs `agentfs` under coreutils' `timeout`, so a hang fails the test
/// (exit 124) instead of stalling the suite.
fn run_bounded(args: &[&str], dir: Option<&Path>) -> Output {
    let mut c = Command::new("timeout");
    c.arg("60").arg(env!("CARGO_BIN_EXE_agentfs"));
    if let Some(d) = dir {
        c.arg("--plugin-dir").arg(d);
    }
    c.args(args)
        .env_remove("AGENTFS_ALLOW_INSECURE_PLUGINS")
        .env_remove("AGENTFS_CONFIG")
        .env("AGENTFS_SOCKET", "/nonexistent/agentfs-test.sock");
    let out = c.output().unwrap();
    assert_ne!(out.status.code(), Some(124), "agentfs {args:?} hung");
    out
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A private directory (0700) for plugin files.
fn plugin_dir() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    fs::set_permissions(t.path(), fs::Permissions::from_mode(0o700)).unwrap();
    t
}

fn config_with_path(dir: &Path, lib: &Path) -> PathBuf {
    let cfg = dir.join("agentfs.toml");
    fs::write(
        &cfg,
        format!("[backstore]\npath = {:?}\n", lib.display().to_string()),
    )
    .unwrap();
    cfg
}

/// `plugins info FILE` and `status` with FILE as the backstore: exit 1, one
/// line naming the file and containing `needle`.
fn assert_refused(lib: &Path, needle: &str) {
    let out = run_bounded(&["plugins", "info", lib.to_str().unwrap()], None);
    let e = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "plugins info: {e}");
    assert_eq!(e.lines().count(), 1, "plugins info: not one line: {e}");
    assert!(e.contains(needle), "plugins info: {e}");
    let cfgdir = tempfile::tempdir().unwrap();
    let cfg = config_with_path(cfgdir.path(), lib);
    let out = run_bounded(
        &["--direct", "--config", cfg.to_str().unwrap(), "status"],
        None,
    );
    let e = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "status: {e}");
    assert!(
        e.starts_with("agentfs: error: plugin '") && e.contains(needle),
        "status: {e}"
    );
    assert_eq!(e.lines().count(), 1, "status: not one line: {e}");
}

// ELF-specific: the bytes cut or patched are those of an ELF library.
#[cfg(target_os = "linux")]
#[test]
fn a_truncated_plugin_is_one_line_and_the_listing_goes_on() {
    let d = plugin_dir();
    let whole = fs::read(plugin_lib("hostfs")).unwrap();
    let bad = d.path().join("libagentfs_backstore_bad.so");
    fs::write(&bad, &whole[..1000]).unwrap();
    assert_refused(&bad, "is a truncated or corrupt shared library");
    // The listing reports the bad entry on its own line and lists the rest.
    let out = run_bounded(&["plugins", "list"], Some(d.path()));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let bad_lines: Vec<String> = stderr(&out)
        .lines()
        .filter(|l| l.contains("libagentfs_backstore_bad.so"))
        .map(str::to_string)
        .collect();
    assert_eq!(bad_lines.len(), 1, "{}", stderr(&out));
    assert!(bad_lines[0].contains("truncated"), "{bad_lines:?}");
    assert!(
        stdout(&out).contains("hostfs") && stdout(&out).contains("mock"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn a_fifo_named_like_a_plugin_does_not_hang() {
    let d = plugin_dir();
    let fifo = d.path().join("libagentfs_backstore_fifo.so");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path; mkfifo has no other preconditions.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    assert_refused(&fifo, "is not a regular file (it is a FIFO)");
    let out = run_bounded(&["plugins", "list"], Some(d.path()));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("mock"), "{}", stdout(&out));
}

// ELF-specific: the bytes cut or patched are those of an ELF library.
#[cfg(target_os = "linux")]
#[test]
fn a_library_for_another_architecture_says_so() {
    let d = plugin_dir();
    let mut bytes = fs::read(plugin_lib("hostfs")).unwrap();
    // e_machine (offset 18, little-endian on the machines we run on):
    // aarch64 on x86_64, x86_64 anywhere else.
    let other: u16 = if std::env::consts::ARCH == "x86_64" {
        183
    } else {
        62
    };
    bytes[18..20].copy_from_slice(&other.to_le_bytes());
    let lib = d.path().join("libagentfs_backstore_foreign.so");
    fs::write(&lib, bytes).unwrap();
    let name = if other == 183 { "aarch64" } else { "x86_64" };
    assert_refused(
        &lib,
        &format!(
            "is a library for {name} (64-bit, little-endian), but this agentfs runs on {}",
            std::env::consts::ARCH
        ),
    );
}

#[test]
fn a_symlink_loop_is_named() {
    let d = plugin_dir();
    let a = d.path().join("libagentfs_backstore_loop.so");
    let b = d.path().join("other.so");
    std::os::unix::fs::symlink(&b, &a).unwrap();
    std::os::unix::fs::symlink(&a, &b).unwrap();
    assert_refused(&a, "symlink loop");
}

#[test]
fn a_plugin_others_can_replace_is_refused_unless_allowed() {
    // A 0666 file in a private directory.
    let d = plugin_dir();
    let lib = d.path().join("libagentfs_backstore_mock.so");
    fs::copy(plugin_lib("mock"), &lib).unwrap();
    fs::set_permissions(&lib, fs::Permissions::from_mode(0o666)).unwrap();
    assert_refused(&lib, "is writable by other users (mode 0666)");
    // A 0755 file in a 0777 directory (no sticky bit).
    fs::set_permissions(&lib, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o777)).unwrap();
    assert_refused(
        &lib,
        &format!(
            "directory {} is writable by other users (mode 0777)",
            d.path().display()
        ),
    );
    // The documented opt-out loads it, with a warning.
    let out = agentfs()
        .args(["plugins", "info"])
        .arg(&lib)
        .env("AGENTFS_ALLOW_INSECURE_PLUGINS", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("name:         mock"),
        "{}",
        stdout(&out)
    );
    assert!(
        stderr(&out).contains("AGENTFS_ALLOW_INSECURE_PLUGINS=1"),
        "{}",
        stderr(&out)
    );
    // A sticky world-writable directory (like /tmp) is fine.
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o1777)).unwrap();
    let out = agentfs()
        .args(["plugins", "info"])
        .arg(&lib)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_plugin_owned_by_another_user_is_refused() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped a_plugin_owned_by_another_user_is_refused: needs root to chown");
        return;
    }
    let d = plugin_dir();
    let lib = d.path().join("libagentfs_backstore_mock.so");
    fs::copy(plugin_lib("mock"), &lib).unwrap();
    std::os::unix::fs::chown(&lib, Some(65534), None).unwrap();
    assert_refused(&lib, "is owned by uid 65534, neither you (uid 0) nor root");
}

#[test]
fn version_and_plugins_list_print_the_plugin_abi() {
    let abi = format!(
        "plugin ABI {} (agentfs-plugin-api {})",
        agentfs_plugin_api::ABI_VERSION,
        agentfs_plugin_api::API_VERSION
    );
    let out = agentfs().arg("--version").output().unwrap();
    assert!(stdout(&out).contains(&abi), "{}", stdout(&out));
    let out = agentfs()
        .args(["plugins", "list"])
        .env("AGENTFS_PLUGIN_PATH", target_dir())
        .output()
        .unwrap();
    assert!(
        stdout(&out)
            .lines()
            .any(|l| l.starts_with("host: agentfs ") && l.contains(&abi)),
        "{}",
        stdout(&out)
    );
}

#[test]
fn a_method_that_panics_fails_the_command_even_when_it_could_carry_on() {
    // Opening a store after a process died with it open lists layers to
    // clean what the crash left; a panic there used to be a WARN and exit 0.
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("store");
    let cfg = d.path().join("agentfs.toml");
    fs::write(
        &cfg,
        format!(
            "[backstore]\npath = {:?}\noptions = {{ fail = \"list-layers-panic\", root = {:?} }}\n",
            target_dir()
                .join(format!(
                    "{}fixture_faulty{}",
                    std::env::consts::DLL_PREFIX,
                    std::env::consts::DLL_SUFFIX
                ))
                .display()
                .to_string(),
            root.display().to_string()
        ),
    )
    .unwrap();
    let out = run_bounded(
        &["--direct", "--config", cfg.to_str().unwrap(), "init"],
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // What a process killed with the store open leaves: its session file.
    fs::write(
        root.join("meta")
            .join(agentfs_core::SESSION_DIR)
            .join("1-0"),
        b"",
    )
    .unwrap();
    let out = run_bounded(
        &[
            "--direct",
            "--config",
            cfg.to_str().unwrap(),
            "branch",
            "list",
        ],
        None,
    );
    let e = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert!(
        e.lines().any(|l| l.starts_with("agentfs: error: plugin '")
            && l.contains("list_layers")
            && l.contains("deliberate panic in list_layers")),
        "{e}"
    );
}

#[test]
fn plugin_option_errors_point_at_the_config_files_line() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("agentfs.toml");
    fs::write(
        &cfg,
        "# comment\n[backstore]\nplugin = \"mock\"\noptions = { parnet = \"/tmp\" }\n",
    )
    .unwrap();
    let out = agentfs()
        .args(["--direct", "--config"])
        .arg(&cfg)
        .arg("status")
        .env("AGENTFS_PLUGIN_PATH", target_dir())
        .output()
        .unwrap();
    let e = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert!(e.contains(&format!("{}:4", cfg.display())), "{e}");
    assert!(e.contains("unknown field `parnet`"), "{e}");
    assert!(!e.contains("line 1, column"), "{e}");
}

#[test]
fn status_says_what_the_mock_backstore_reclaimed() {
    let d = tempfile::tempdir().unwrap();
    let parent = d.path().join("shm");
    let mut child = Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let leftover = parent.join(format!("agentfs-mock-{dead}-0"));
    fs::create_dir_all(leftover.join("layers")).unwrap();
    let cfg = d.path().join("agentfs.toml");
    fs::write(
        &cfg,
        format!(
            "[backstore]\nplugin = \"mock\"\noptions = {{ parent = {:?} }}\n",
            parent.display().to_string()
        ),
    )
    .unwrap();
    let out = agentfs()
        .args(["--direct", "--config"])
        .arg(&cfg)
        .arg("status")
        .env("AGENTFS_PLUGIN_PATH", target_dir())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let s = stdout(&out);
    assert!(
        s.lines()
            .any(|l| l.starts_with("reclaimed:") && l.contains(&leftover.display().to_string())),
        "{s}"
    );
    assert!(!leftover.exists());
}

#[test]
fn plugins_info_verbose_prints_the_full_layout_report() {
    let lib = target_dir().join(format!(
        "{}fixture_layout_mismatch{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ));
    let out = agentfs()
        .args(["plugins", "info", "--verbose"])
        .arg(&lib)
        .output()
        .unwrap();
    let e = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert!(e.contains("Layout of expected type"), "{e}");
    let last = e.lines().last().unwrap_or("");
    assert!(
        last.contains("mismatched package in type BackstorePlugin"),
        "{e}"
    );
}
