//! The macOS shim end to end (run by `.github/workflows/macos.yml`): the
//! demos `kq_demo` (kqueue `EVFILT_VNODE`) and `fse_demo` (FSEvents) run
//! under `agentfs run` on a branch of a sample project stored on an APFS
//! RAM disk; another process changes the branch through the daemon (and,
//! first, another branch, whose change must never arrive), and each demo
//! must print exactly the line the change means. The base must stay
//! unchanged. `agentfs run` must refuse a program System Integrity
//! Protection would strip the shim from.
#![cfg(target_os = "macos")]

mod common;

use std::{
    io::{BufRead, BufReader, Read},
    path::PathBuf,
    process::{Child, Stdio},
    sync::mpsc,
    time::Duration,
};

use common::{image_dir, CliEnv, TreeImage};

/// A CliEnv whose store is an APFS RAM disk, with the kqueue and FSEvents
/// providers loaded.
fn env() -> CliEnv {
    agentfs_testfs::built("libagentfs_shim.dylib");
    let cli = CliEnv::new();
    std::fs::write(
        &cli.config,
        "[backstore]\nplugin = \"apfs\"\noptions = { ramdisk = { size_mb = 64 } }\n\
         \n[[watch]]\nplugin = \"kqueue\"\n\n[[watch]]\nplugin = \"fsevents\"\n",
    )
    .unwrap();
    cli
}

fn demo(name: &str) -> PathBuf {
    agentfs_testfs::built(name)
}

/// Lines of a child's pipe, on a channel.
fn lines(r: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(r).lines() {
            if tx.send(l.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    rx
}

fn next(rx: &mpsc::Receiver<String>, what: &str) -> String {
    rx.recv_timeout(Duration::from_secs(120))
        .unwrap_or_else(|_| panic!("{what}: nothing for two minutes"))
}

/// Starts `demo args` under `agentfs run --create --branch b` in the base
/// and waits for its `ready`.
fn watch(cli: &CliEnv, demo_args: &[&str], name: &str) -> (Child, mpsc::Receiver<String>) {
    let mut c = cli
        .cmd()
        .current_dir(cli.base())
        .args(["run", "--create", "--branch", "b", "--"])
        .arg(demo(name))
        .args(demo_args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = lines(c.stderr.take().unwrap());
    let out = lines(c.stdout.take().unwrap());
    loop {
        let l = next(&err, name);
        if l == "ready" {
            break;
        }
        eprintln!("{name}: {l}");
    }
    (c, out)
}

/// A change in branch `c` (which must not reach a watcher of `b`), then
/// `args` in branch `b`, both through the daemon from other processes.
fn change(cli: &CliEnv, args: &[&str]) {
    let base = cli.base();
    cli.ok(&["branch", "create", "c", "--base", base.to_str().unwrap()]);
    cli.ok(&[
        "fs",
        "write",
        "--branch",
        "c",
        "src/lib.rs",
        "--data",
        "other branch, longer than before\n",
    ]);
    cli.ok(&["fs", "mkdir", "--branch", "c", "src/elsewhere"]);
    cli.ok(args);
}

fn finish(mut c: Child, out: &mpsc::Receiver<String>, name: &str) -> String {
    let line = next(out, name);
    let st = c.wait().unwrap();
    assert!(st.success(), "{name} under agentfs run: {st:?}");
    line
}

fn unchanged(before: &TreeImage, cli: &CliEnv) {
    assert_eq!(&image_dir(&cli.base()), before, "the base changed");
}

#[test]
fn kq_demo_sees_a_change_of_its_file_in_the_branch() {
    let cli = env();
    let before = image_dir(&cli.base());
    let (c, out) = watch(&cli, &["--count", "1", "src/lib.rs"], "kq_demo");
    change(
        &cli,
        &[
            "fs",
            "write",
            "--branch",
            "b",
            "src/lib.rs",
            "--data",
            "pub fn f() {}\npub fn g() {}\n",
        ],
    );
    assert_eq!(finish(c, &out, "kq_demo"), "src/lib.rs write|extend");
    unchanged(&before, &cli);
}

#[test]
fn kq_demo_sees_a_new_entry_in_a_watched_directory() {
    let cli = env();
    let before = image_dir(&cli.base());
    let (c, out) = watch(&cli, &["--count", "1", "src"], "kq_demo");
    change(&cli, &["fs", "mkdir", "--branch", "b", "src/new"]);
    assert_eq!(finish(c, &out, "kq_demo"), "src write|link");
    unchanged(&before, &cli);
}

#[test]
fn fse_demo_on_the_run_loop_sees_a_new_directory() {
    let cli = env();
    let before = image_dir(&cli.base());
    let (c, out) = watch(&cli, &["--count", "1", "src"], "fse_demo");
    change(&cli, &["fs", "mkdir", "--branch", "b", "src/new"]);
    assert_eq!(finish(c, &out, "fse_demo"), "new created|dir");
    unchanged(&before, &cli);
}

#[test]
fn fse_demo_on_a_dispatch_queue_with_cf_types_sees_a_removal() {
    let cli = env();
    let before = image_dir(&cli.base());
    let (c, out) = watch(
        &cli,
        &["--count", "1", "--queue", "--cf", "src"],
        "fse_demo",
    );
    change(&cli, &["fs", "rm", "--branch", "b", "src/lib.rs"]);
    assert_eq!(finish(c, &out, "fse_demo"), "lib.rs removed|file");
    unchanged(&before, &cli);
}

#[test]
fn agentfs_run_refuses_programs_sip_would_strip_the_shim_from() {
    let cli = env();
    let o = cli
        .cmd()
        .current_dir(cli.base())
        .args([
            "run", "--create", "--branch", "b", "--", "/bin/sh", "-c", "true",
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("System Integrity Protection"), "{err}");
    assert!(err.contains("/bin/sh"), "{err}");
}

/// A real program through the file API: python3 (not SIP-protected on the
/// runner: Homebrew's or the toolcache's) creates, renames, lists, reads,
/// resolves and removes in the branch, and sees its own changes; the base
/// stays unchanged.
#[test]
fn python_works_in_the_branch() {
    let cli = env();
    let path = std::env::var_os("PATH");
    let found = path.as_ref().and_then(|p| {
        std::env::split_paths(p)
            .map(|d| d.join("python3"))
            .find(|p| p.is_file())
    });
    let Some(py) = found.map(|p| std::fs::canonicalize(&p).unwrap_or(p)) else {
        agentfs_testfs::skip("python in a branch", "no python3 on PATH");
        return;
    };
    if ["/usr/", "/bin/", "/sbin/", "/System/"]
        .iter()
        .any(|d| py.starts_with(d) && !py.starts_with("/usr/local"))
    {
        agentfs_testfs::skip(
            "python in a branch",
            &format!("{} is SIP-protected", py.display()),
        );
        return;
    }
    let before = image_dir(&cli.base());
    let o = cli
        .cmd()
        .current_dir(cli.base())
        .args(["run", "--create", "--branch", "b", "--"])
        .arg(&py)
        .args(["-c", "import os\n\
             open('src/new.py', 'w').write('x = 1\\n')\n\
             os.mkdir('d')\n\
             os.rename('src/new.py', 'd/moved.py')\n\
             print(sorted(os.listdir('src')))\n\
             print(sorted(os.listdir('d')), open('d/moved.py').read().strip())\n\
             print(os.path.realpath('d') == os.path.join(os.getcwd(), 'd'))\n\
             os.remove('README.md')\n\
             print(os.path.exists('README.md'), 'README.md' in os.listdir('.'), 'd' in os.listdir('.'))\n"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        out,
        "['lib.rs', 'main.rs', 'nested']\n['moved.py'] x = 1\nTrue\nFalse False True\n"
    );
    // The store is a RAM disk that went with the private daemon: the base
    // is what remains to check.
    unchanged(&before, &cli);
}
