//! The read-only safety net of `agentfs run` for an ordinary user: the
//! program runs in a private user + mount namespace where the base and the
//! store are read-only, so what bypasses the shim (a static binary, a
//! reopen through `/proc/self/fd`) gets `EROFS` even though the user owns
//! the base and could write it outside. Runs as `nobody` (the tests run as
//! root here); says why it skipped where unprivileged user namespaces are
//! off, and `AGENTFS_REQUIRE_COW=1` makes that a failure.
#![cfg(target_os = "linux")]

mod common;

use std::{
    os::unix::{ffi::OsStrExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Output},
};

use common::programs::{fingerprint, has_interpreter, Sample};

const NOBODY: u32 = 65534;

/// The sample project owned by `nobody`, or `None` (skip reported) when
/// this machine cannot run the test.
fn sample_for_nobody(test: &str) -> Option<Sample> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        agentfs_testfs::skip(test, "switching to another user needs root");
        return None;
    }
    let probe = Command::new("unshare")
        .args(["--user", "--map-root-user", "true"])
        .uid(NOBODY)
        .gid(NOBODY)
        .output();
    match probe {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            agentfs_testfs::skip(
                test,
                &format!(
                    "unprivileged user namespaces are off here: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                ),
            );
            return None;
        }
        Err(e) => {
            agentfs_testfs::skip(test, &format!("cannot run unshare: {e}"));
            return None;
        }
    }
    let s = Sample::new(false);
    // The build may live where `nobody` cannot reach (a clone under
    // /root): the executable, the shim and the backstore are linked (or
    // copied) into the test's own directory.
    let bin = s.cli.dir.join("bin");
    std::fs::create_dir(&bin).unwrap();
    for (file, built) in [
        ("agentfs", PathBuf::from(env!("CARGO_BIN_EXE_agentfs"))),
        (
            "libagentfs_shim.so",
            agentfs_testfs::built("libagentfs_shim.so"),
        ),
        (
            "libagentfs_backstore_hostfs.so",
            common::plugin_lib("hostfs"),
        ),
    ] {
        if std::fs::hard_link(&built, bin.join(file)).is_err() {
            std::fs::copy(&built, bin.join(file)).unwrap();
        }
    }
    // Not `bin`: a hard link shares its owner with the build's file.
    chown_tree(&s.cli.dir, &bin);
    Some(s)
}

/// Gives `root` and everything under it but `except` to `nobody`.
fn chown_tree(root: &Path, except: &Path) {
    for entry in walk(root).into_iter().filter(|p| !p.starts_with(except)) {
        let c = std::ffi::CString::new(entry.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid C string; lchown does not follow a symlink.
        let rc = unsafe { libc::lchown(c.as_ptr(), NOBODY, NOBODY) };
        assert_eq!(rc, 0, "lchown {}", entry.display());
    }
}

fn walk(root: &Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![root.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        let p = out[i].clone();
        i += 1;
        if p.symlink_metadata().unwrap().is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                out.push(e.unwrap().path());
            }
        }
    }
    out
}

/// `agentfs run --create --branch b -- args` in the base, as `nobody`.
fn run_as_nobody(s: &Sample, args: &[&str]) -> Output {
    s.cli
        .cmd_of(&s.cli.dir.join("bin/agentfs"))
        .current_dir(&s.base)
        .args(["run", "--create", "--branch", "b", "--"])
        .args(args)
        .env("HOME", &s.cli.dir)
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn an_ordinary_user_writes_into_the_branch_and_the_base_stays() {
    let Some(s) = sample_for_nobody("an_ordinary_user_writes_into_the_branch_and_the_base_stays")
    else {
        return;
    };
    let before = fingerprint(&s.base);
    let o = run_as_nobody(
        &s,
        &[
            "sh",
            "-c",
            "id -u; echo hi > new.txt; echo more >> README.md; cat new.txt; tail -n 1 README.md",
        ],
    );
    let err = text(&o.stderr);
    assert!(o.status.success(), "run failed: {err}");
    assert_eq!(text(&o.stdout), format!("{NOBODY}\nhi\nmore\n"));
    assert!(
        !err.contains("no read-only safety net"),
        "the safety net was not set up for an ordinary user: {err}"
    );
    s.assert_diff_has(&["A new.txt", "M README.md"]);
    assert_eq!(fingerprint(&s.base), before, "the base changed");
}

#[test]
fn what_bypasses_the_shim_gets_erofs_for_an_ordinary_user() {
    let test = "what_bypasses_the_shim_gets_erofs_for_an_ordinary_user";
    let Some(s) = sample_for_nobody(test) else {
        return;
    };
    let before = fingerprint(&s.base);

    // A reopen of a read fd through /proc/self/fd is not a branch path:
    // the kernel reopens the file the fd names, which is the base's.
    let o = run_as_nobody(
        &s,
        &["sh", "-c", "exec 3<README.md; echo bypass >/proc/self/fd/3"],
    );
    let err = text(&o.stderr);
    assert!(!o.status.success(), "the reopen for writing succeeded");
    assert!(err.contains("Read-only file system"), "{err}");
    assert_eq!(fingerprint(&s.base), before, "the base changed");

    // A static binary does not load the shim at all.
    let Some(busybox) = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .filter(|p| !has_interpreter(&std::fs::read(p).unwrap()))
    else {
        agentfs_testfs::skip(test, "no static busybox (install busybox-static)");
        return;
    };
    let o = run_as_nobody(&s, &[busybox, "sh", "-c", "echo bypass > README.md"]);
    let err = text(&o.stderr);
    assert!(!o.status.success(), "the bypassing write succeeded");
    assert!(err.contains("Read-only file system"), "{err}");
    assert_eq!(fingerprint(&s.base), before, "the base changed");
    // Outside `agentfs run` the same user can write the base: the EROFS
    // above is the safety net's, not the permissions'.
    let o = Command::new(busybox)
        .args(["sh", "-c", "echo ok >> README.md"])
        .current_dir(&s.base)
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
}
