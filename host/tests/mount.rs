//! Real, unmodified programs in a branch mounted with `agentfs mount`
//! (FUSE): each script runs once in the mount and once natively in a copy
//! of the sample project, and the two must print the same and leave the
//! same tree; the base must stay byte-for-byte unchanged, `agentfs diff`
//! must show the changes, and `agentfs unmount` must leave nothing mounted.
//!
//! Needs /dev/fuse (and fusermount3 when not root): without them a test
//! says why on stderr and passes, unless `AGENTFS_REQUIRE_COW=1` (CI),
//! where it fails.
#![cfg(target_os = "linux")]

mod common;

use std::{
    fs,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use common::programs::{fingerprint, has_interpreter, have, Fingerprint, Sample};
use common::{image_dir, CliEnv, TreeImage};

use agentfs_testfs::skip;

/// Can this user mount with FUSE here? If not: skip.
fn fuse_available(test: &str) -> bool {
    if let Err(e) = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
    {
        skip(test, &format!("/dev/fuse: {e}"));
        return false;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 && !have("fusermount3", test) {
        return false;
    }
    true
}

/// The io mode a mount should report here: passthrough as root on Linux
/// 6.9 or later (registering backing files takes CAP_SYS_ADMIN), else
/// every read and write through the server.
fn expected_io_mode() -> &'static str {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut v = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|x| x.parse::<u32>().ok());
    let (major, minor) = (v.next().unwrap_or(0), v.next().unwrap_or(0));
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 && (major, minor) >= (6, 9) {
        "passthrough"
    } else {
        "fuse"
    }
}

/// True when something is mounted at `p`.
fn mounted(p: &Path) -> bool {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(p.to_str().unwrap()))
}

/// The shared harness: a store over the sample project (optionally a git
/// checkout), branch `b` mounted at `m`, and a native copy of the project.
struct Env {
    sample: Sample,
    mp: PathBuf,
    before: Fingerprint,
}

impl std::ops::Deref for Env {
    type Target = Sample;
    fn deref(&self) -> &Sample {
        &self.sample
    }
}

impl Env {
    fn new(test: &str, git: bool) -> Option<Self> {
        Self::with(test, git, |_| {})
    }

    /// As [`Env::new`], with `prepare` run on the project and on its
    /// native copy first.
    fn with(test: &str, git: bool, prepare: impl Fn(&Path)) -> Option<Self> {
        if !fuse_available(test) {
            return None;
        }
        let sample = Sample::new(git);
        prepare(&sample.base);
        prepare(&sample.native);
        let (cli, base) = (&sample.cli, &sample.base);
        cli.ok(&["init", "--base", base.to_str().unwrap()]);
        cli.ok(&["branch", "create", "b"]);
        let mp = cli.dir.join("m");
        fs::create_dir(&mp).unwrap();
        let before = fingerprint(base);
        let e = Self { sample, mp, before };
        e.mount();
        Some(e)
    }

    fn mount(&self) {
        let out = self
            .cli
            .ok(&["mount", "--branch", "b", self.mp.to_str().unwrap()]);
        assert!(out.starts_with("mounted branch b at"), "{out}");
        assert!(mounted(&self.mp), "mounted says the mount table");
    }

    /// The pid serving the mount, from `agentfs status --json`.
    fn server_pid(&self) -> u32 {
        let v: serde_json::Value =
            serde_json::from_str(&self.cli.ok(&["status", "--json"])).unwrap();
        let m = &v["mounts"][0];
        assert_eq!(m["branch"], "b");
        assert_eq!(m["mountpoint"], self.mp.to_str().unwrap());
        assert_eq!(m["io_mode"], expected_io_mode());
        m["pid"].as_u64().unwrap() as u32
    }

    /// Runs `script` with `shell` in the mount and natively; requires
    /// both to succeed and print the same (the roots shown as `ROOT`).
    fn same(&self, shell: &[&str], script: &str) -> String {
        let mut args = shell.to_vec();
        args.push(script);
        let m = self.output_in(&self.mp, &args);
        let n = self.output_in(&self.native, &args);
        self.same_output((&m, &self.mp), &n, "in the mount")
    }

    /// The mount and the native copy hold the same tree (git's own
    /// database aside, whose packing differs run to run).
    fn assert_same_tree(&self) {
        let strip = |img: TreeImage| -> TreeImage {
            img.into_iter()
                .filter(|(k, _)| !k.starts_with(".git/") && k != ".git")
                .collect()
        };
        assert_eq!(strip(image_dir(&self.mp)), strip(image_dir(&self.native)));
    }

    /// Unmounts; nothing is left mounted and the base is unchanged.
    fn finish(self) {
        let out = self.cli.ok(&["unmount", self.mp.to_str().unwrap()]);
        assert!(out.starts_with("unmounted"), "{out}");
        assert!(!mounted(&self.mp), "unmount left the mount behind");
        let v: serde_json::Value =
            serde_json::from_str(&self.cli.ok(&["status", "--json"])).unwrap();
        assert_eq!(v["mounts"], serde_json::json!([]));
        assert!(
            fingerprint(&self.base) == self.before,
            "the base changed under the mount"
        );
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // A failed test must not leave a mount behind.
        if mounted(&self.mp) {
            let _ = Command::new("umount").arg("-l").arg(&self.mp).status();
            let _ = Command::new("fusermount3")
                .args(["-u", "-z"])
                .arg(&self.mp)
                .status();
        }
    }
}

#[test]
fn bash_and_coreutils_in_the_mount_match_a_native_copy() {
    let t = "bash_and_coreutils_in_the_mount_match_a_native_copy";
    let Some(e) = Env::new(t, false) else { return };
    let out = e.same(
        &["bash", "-c"],
        r#"set -e
cat README.md
echo added >> README.md
printf 'x\n' > new.txt
cat <<EOF > here.txt
line $((1 + 2))
EOF
cp -a src copied
mv docs/guide.md docs/moved.md
rm src/lib.rs
rm -r src/nested
mkdir -p a/b/c && touch a/b/c/f
ln -s new.txt link
chmod 600 new.txt
truncate -s 3 here.txt
echo *.txt
ls -la --time-style=+ copied | awk 'NR > 1 {print $1, $NF}'
stat -c '%a %s %F' new.txt here.txt link a/b/c
readlink link
find . -path ./.git -prune -o -print | sort
cat ./run.sh | head -1
./run.sh
"#,
    );
    assert!(out.contains("line 3") || out.contains("new.txt"), "{out}");
    e.assert_same_tree();
    e.assert_diff_has(&[
        "M README.md",
        "A new.txt",
        "D src/lib.rs",
        "D docs/guide.md",
        "A docs/moved.md",
    ]);
    e.finish();
}

#[test]
fn fifos_and_devices_in_the_base_show_as_what_they_are() {
    let t = "fifos_and_devices_in_the_base_show_as_what_they_are";
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let Some(e) = Env::with(t, false, |dir| {
        nix::unistd::mkfifo(&dir.join("pipe"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        if root {
            nix::sys::stat::mknod(
                &dir.join("null0"),
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::from_bits_truncate(0o666),
                nix::sys::stat::makedev(1, 3),
            )
            .unwrap();
        }
    }) else {
        return;
    };
    if !root {
        eprintln!("{t}: not root, so no device node in the base (the fifo is)");
    }
    // The kernel serves a fifo of the mount itself: a writer meets a
    // reader, nothing is copied into the branch; listings and stat show
    // the kinds.
    let out = e.same(
        &["sh", "-c"],
        r#"set -e
timeout 20 cat pipe > got 2>/dev/null & echo through > pipe; wait; cat got
find . -maxdepth 1 \( -type p -o -type c \) | sort
if [ -c null0 ]; then stat -c '%F %t:%T' null0; fi
stat -c '%F' pipe
"#,
    );
    let device = if root {
        "./null0\n./pipe\ncharacter special file 1:3\n"
    } else {
        "./pipe\n"
    };
    assert_eq!(out, format!("through\n{device}fifo\n"));
    if root {
        // A FUSE mount is `nodev`: its device nodes do not open.
        let o = e.output_in(&e.mp, &["sh", "-c", "echo x > null0"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains("Permission denied"),
            "{err}"
        );
    }
    e.assert_same_tree();
    e.assert_diff_has(&["A got"]);
    e.finish();
}

#[test]
fn git_in_the_mount_leaves_the_base_checkout_untouched() {
    let t = "git_in_the_mount_leaves_the_base_checkout_untouched";
    if !have("git", t) {
        return;
    }
    let Some(e) = Env::new(t, true) else { return };
    let out = e.same(
        &["bash", "-c"],
        r#"set -e
git status --short
echo change >> src/main.rs
echo new > added.txt
git status --short
git add -A
git -c user.email=t@example.com -c user.name=t commit -qm work
git log --format=%s
git status --short
git diff HEAD~1 --stat | tail -1
"#,
    );
    assert!(out.contains("work\ninit\n"), "{out}");
    assert!(out.contains(" M src/main.rs"), "{out}");
    e.assert_same_tree();
    e.assert_diff_has(&["M src/main.rs", "A added.txt"]);
    e.finish();
}

#[test]
fn make_and_cc_build_in_the_mount() {
    let t = "make_and_cc_build_in_the_mount";
    if !have("make", t) || !have("cc", t) {
        return;
    }
    let Some(e) = Env::new(t, false) else { return };
    let out = e.same(
        &["bash", "-c"],
        r#"set -e
cat > hello.c <<'EOF'
#include <stdio.h>
int main(void) { printf("built %d\n", 6 * 7); return 0; }
EOF
printf 'hello: hello.c\n\tcc -o hello hello.c\n' > Makefile
make -s
./hello
make -s
echo again
"#,
    );
    assert_eq!(out, "built 42\nagain\n");
    e.assert_diff_has(&["A hello", "A hello.c", "A Makefile"]);
    e.finish();
}

#[test]
fn python_tar_and_sqlite_in_the_mount() {
    let t = "python_tar_and_sqlite_in_the_mount";
    if !have("python3", t) || !have("tar", t) {
        return;
    }
    let Some(e) = Env::new(t, false) else { return };
    let out = e.same(
        &["python3", "-c"],
        r#"
import os, pathlib, shutil, tempfile, subprocess
p = pathlib.Path("py"); p.mkdir()
(p / "x").write_text("one")
os.replace(p / "x", p / "y")
with tempfile.NamedTemporaryFile(dir=p, delete=False) as f:
    f.write(b"tmp")
os.replace(f.name, p / "z")
print(sorted(os.listdir(p)), (p / "z").read_bytes())
os.setxattr(p / "y", "user.k", b"v")
print(os.getxattr(p / "y", "user.k"), "user.k" in os.listxattr(p / "y"))
os.removexattr(p / "y", "user.k")
print(os.listxattr(p / "y"))
shutil.copytree("src", "src2", symlinks=True)
shutil.rmtree("src")
subprocess.run(["tar", "cf", "a.tar", "src2", "docs"], check=True)
os.mkdir("un")
subprocess.run(["tar", "xf", "a.tar", "-C", "un"], check=True)
print(sorted(str(q) for q in pathlib.Path("un").rglob("*")))
st = [os.stat(x) for x in (".", "README.md", "un/docs")]
print(len({s.st_dev for s in st}))
fd = os.open("big", os.O_CREAT | os.O_RDWR, 0o644)
os.pwrite(fd, b"end", 1 << 20)
os.fsync(fd)
os.close(fd)
print(os.path.getsize("big"), open("big", "rb").read()[-3:])
"#,
    );
    assert!(out.contains("['y', 'z'] b'tmp'"), "{out}");
    assert!(out.contains("b'v' True\n[]\n"), "{out}");
    assert!(out.contains("\n1\n1048579 b'end'\n"), "one st_dev: {out}");
    if have("sqlite3", t) {
        let o = e.output_in(
            &e.mp,
            &[
                "sqlite3",
                "db.sqlite",
                "create table t(x); insert into t values (1),(2),(3); select sum(x) from t;",
            ],
        );
        assert!(o.status.success(), "{o:?}");
        assert_eq!(String::from_utf8_lossy(&o.stdout), "6\n");
        e.assert_diff_has(&["A db.sqlite"]);
    }
    e.assert_diff_has(&["A big", "D src/main.rs", "A src2/main.rs"]);
    e.finish();
}

/// A statically linked busybox, or a skip note.
fn static_busybox(t: &str) -> Option<&'static Path> {
    let bb = ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(Path::new)
        .find(|p| fs::read(p).is_ok_and(|b| !has_interpreter(&b)));
    if bb.is_none() {
        skip(t, "no static busybox (Debian package busybox-static)");
    }
    bb
}

#[test]
fn a_static_binary_writes_through_the_mount() {
    let t = "a_static_binary_writes_through_the_mount";
    let Some(bb) = static_busybox(t) else { return };
    let Some(e) = Env::new(t, false) else { return };
    fs::copy(bb, e.mp.join("busybox")).unwrap();
    let o = agentfs_testfs::output_retrying_etxtbsy(
        Command::new("./busybox")
            .args([
                "sh",
                "-c",
                "echo static > st.txt && cat st.txt README.md && rm docs/guide.md",
            ])
            .current_dir(&e.mp),
    );
    assert!(o.status.success(), "{o:?}");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "static\n# project\n");
    e.assert_diff_has(&["A st.txt", "A busybox", "D docs/guide.md"]);
    e.finish();
}

#[test]
fn inotifywait_on_the_mountpoint_sees_writes_through_it() {
    let t = "inotifywait_on_the_mountpoint_sees_writes_through_it";
    if !have("inotifywait", t) {
        return;
    }
    let Some(e) = Env::new(t, false) else { return };
    let mut w = Command::new("inotifywait")
        .args(["-m", "-e", "close_write,create", "--format", "%e %f"])
        .arg(&e.mp)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Watching once it says so on stderr.
    let mut err = BufReader::new(w.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("Watches established") {
        line.clear();
        assert!(err.read_line(&mut line).unwrap() > 0, "inotifywait quit");
    }
    fs::write(e.mp.join("seen.txt"), b"x").unwrap();
    let mut out = BufReader::new(w.stdout.take().unwrap());
    let mut got = Vec::new();
    loop {
        let mut l = String::new();
        assert!(out.read_line(&mut l).unwrap() > 0, "inotifywait quit");
        got.push(l.trim().to_string());
        if l.trim() == "CLOSE_WRITE,CLOSE seen.txt" {
            break;
        }
    }
    assert_eq!(got[0], "CREATE seen.txt", "{got:?}");
    let _ = w.kill();
    let _ = w.wait();
    e.assert_diff_has(&["A seen.txt"]);
    e.finish();
}

#[test]
fn inode_numbers_are_stable_and_renames_honour_their_flags() {
    let t = "inode_numbers_are_stable_and_renames_honour_their_flags";
    if !have("python3", t) {
        return;
    }
    let Some(e) = Env::new(t, false) else { return };
    let out = e.output_in(
        &e.mp,
        &[
            "python3",
            "-c",
            r#"
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
def renameat2(a, b, flags):
    r = libc.renameat2(-100, a.encode(), -100, b.encode(), flags)
    return 0 if r == 0 else ctypes.get_errno()
i = os.stat("README.md").st_ino
os.rename("README.md", "R2")
print(os.stat("R2").st_ino == i)
print(os.stat("R2").st_ino == os.stat("R2").st_ino)
print(errno.errorcode[renameat2("R2", "run.sh", 1)])
print(errno.errorcode[renameat2("R2", "run.sh", 2)])
print(renameat2("R2", "R3", 1))
try:
    os.link("R3", "hard")
except OSError as e:
    print(errno.errorcode[e.errno])
"#,
        ],
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "True\nTrue\nEEXIST\nEINVAL\n0\nENOTSUP\n"
    );
    e.assert_diff_has(&["D README.md", "A R3"]);
    e.finish();
}

#[test]
fn a_snapshot_is_isolated_from_later_writes_through_the_mount() {
    let t = "a_snapshot_is_isolated_from_later_writes_through_the_mount";
    if !have("python3", t) {
        return;
    }
    let Some(e) = Env::new(t, false) else { return };
    fs::write(e.mp.join("f.txt"), b"one\n").unwrap();
    // While a file is open for writing through the mount, a snapshot
    // would capture later writes: it is refused as busy.
    let mut holder = Command::new("python3")
        .args([
            "-c",
            "import sys; f = open('f.txt', 'a'); f.write('two\\n'); f.flush(); print('open', flush=True); sys.stdin.read()",
        ])
        .current_dir(&e.mp)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut l = String::new();
    BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut l)
        .unwrap();
    assert_eq!(l, "open\n");
    let err = e.cli.fails(&["snapshot", "create", "--branch", "b", "s1"]);
    assert!(err.contains("busy"), "{err}");
    holder.stdin.take().unwrap().write_all(b"").unwrap();
    assert!(holder.wait().unwrap().success());
    e.cli.ok(&["snapshot", "create", "--branch", "b", "s1"]);
    fs::write(e.mp.join("f.txt"), b"three\n").unwrap();
    assert_eq!(fs::read(e.mp.join("f.txt")).unwrap(), b"three\n");
    assert_eq!(
        e.cli.ok(&["fs", "cat", "--snapshot", "s1", "f.txt"]),
        "one\ntwo\n"
    );
    e.finish();
}

#[test]
fn a_killed_server_leaves_no_hung_mount_after_the_next_start() {
    let t = "a_killed_server_leaves_no_hung_mount_after_the_next_start";
    let Some(e) = Env::new(t, false) else { return };
    fs::write(e.mp.join("kept.txt"), b"kept").unwrap();
    let pid = e.server_pid();
    // SAFETY: signalling the server this test started.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    // Until the next start the mount answers ENOTCONN.
    let _ = fs::metadata(&e.mp);
    e.mount();
    assert_eq!(fs::read(e.mp.join("kept.txt")).unwrap(), b"kept");
    assert_ne!(e.server_pid(), pid);
    e.finish();
}

#[test]
fn bad_input_gets_clear_errors() {
    let t = "bad_input_gets_clear_errors";
    let Some(e) = Env::new(t, false) else { return };
    let other = e.cli.dir.join("other");
    fs::create_dir(&other).unwrap();
    let err = e
        .cli
        .fails(&["mount", "--branch", "nope", other.to_str().unwrap()]);
    assert!(err.contains("nope"), "{err}");
    assert!(!mounted(&other));
    let err = e
        .cli
        .fails(&["mount", "--branch", "b", e.mp.to_str().unwrap()]);
    assert!(err.contains("already mounted"), "{err}");
    let err = e.cli.fails(&["unmount", other.to_str().unwrap()]);
    assert!(err.contains("not mounted"), "{err}");
    let file = e.cli.dir.join("file");
    fs::write(&file, b"").unwrap();
    let err = e
        .cli
        .fails(&["mount", "--branch", "b", file.to_str().unwrap()]);
    assert!(err.contains("not a directory"), "{err}");
    // Over a base, inside one, or over the store: every other process
    // (the store's own included) would read the mounted branch there.
    let inside = e.base.join("src");
    let store = e.cli.dir.join("store");
    for (dir, want) in [
        (&e.base, "is the base of branch b"),
        (&inside, "is inside the base of branch b"),
        (&e.cli.dir, "contains the store's own directory"),
        (&store, "is the store's own directory"),
    ] {
        let err = e
            .cli
            .fails(&["mount", "--branch", "b", dir.to_str().unwrap()]);
        assert!(err.contains(want), "{}: {err}", dir.display());
        assert!(!mounted(dir), "{}", dir.display());
    }
    e.finish();
}

#[test]
fn run_with_the_fuse_frontend_shows_the_branch_at_the_base_path() {
    let t = "run_with_the_fuse_frontend_shows_the_branch_at_the_base_path";
    if !fuse_available(t) {
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        skip(t, "a private mount namespace needs root");
        return;
    }
    let cli = CliEnv::new();
    let base = cli.base();
    let before = fingerprint(&base);
    let o = cli
        .cmd()
        .current_dir(base.join("src"))
        .args(["run", "--frontend", "fuse", "--create", "--branch", "r"])
        .args(["--base", base.to_str().unwrap(), "--"])
        .args([
            "bash",
            "-c",
            "cat main.rs; echo changed > main.rs; cat main.rs; pwd; awk -v d=\"$(dirname \"$PWD\")\" '$5 == d' /proc/self/mountinfo | grep -c ' agentfs:r '; exit 3",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        format!(
            "fn main() {{}}\nchanged\n{}\n1\n",
            base.join("src").display()
        )
    );
    assert!(fingerprint(&base) == before, "the base changed");
    let d = cli.ok(&["diff", "--branch", "r"]);
    assert!(d.lines().any(|l| l == "M src/main.rs"), "{d}");
    // Nothing is left mounted, here or on the private mountpoint.
    let left = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!left.contains(" agentfs:r "), "{left}");
}

#[test]
fn a_change_through_another_path_shows_in_the_mount() {
    let t = "a_change_through_another_path_shows_in_the_mount";
    let Some(e) = Env::new(t, false) else { return };
    let mp = e.mp.to_str().unwrap();
    e.cli.ok(&["unmount", mp]);
    let out = e
        .cli
        .ok(&["mount", "--branch", "b", "--cache-ttl", "0", mp]);
    assert!(out.starts_with("mounted"), "{out}");
    let readme = e.mp.join("README.md");
    // Two opens of an unchanged file: the second may keep the page cache.
    assert_eq!(fs::read(&readme).unwrap(), b"# project\n");
    assert_eq!(fs::read(&readme).unwrap(), b"# project\n");
    e.cli.ok(&[
        "fs",
        "write",
        "--branch",
        "b",
        "README.md",
        "--data",
        "# changed elsewhere\n",
    ]);
    assert_eq!(fs::read(&readme).unwrap(), b"# changed elsewhere\n");
    e.cli
        .ok(&["fs", "write", "--branch", "b", "new.txt", "--data", "n"]);
    assert_eq!(fs::read(e.mp.join("new.txt")).unwrap(), b"n");
    // And a write through the mount is read back at once.
    fs::write(&readme, b"# through the mount\n").unwrap();
    assert_eq!(fs::read(&readme).unwrap(), b"# through the mount\n");
    e.finish();
}

#[test]
fn sigterm_unmounts_and_ends_the_server() {
    let t = "sigterm_unmounts_and_ends_the_server";
    let Some(e) = Env::new(t, false) else { return };
    fs::write(e.mp.join("kept.txt"), b"kept").unwrap();
    let pid = e.server_pid();
    // SAFETY: signalling the server this test started.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
    // `tail --pid` returns when the process has exited.
    let o = Command::new("tail")
        .args(["--pid", &pid.to_string(), "-f", "/dev/null"])
        .output()
        .unwrap();
    assert!(o.status.success());
    assert!(!mounted(&e.mp), "the server exited but left its mount");
    let v: serde_json::Value = serde_json::from_str(&e.cli.ok(&["status", "--json"])).unwrap();
    assert_eq!(v["mounts"], serde_json::json!([]));
    e.assert_diff_has(&["A kept.txt"]);
    // The base is unchanged; nothing is left to unmount.
    assert!(fingerprint(&e.base) == e.before, "the base changed");
}

#[test]
fn sigterm_ends_a_server_whose_mount_another_namespace_still_holds() {
    let t = "sigterm_ends_a_server_whose_mount_another_namespace_still_holds";
    if !have("unshare", t) || !have("timeout", t) {
        return;
    }
    let Some(e) = Env::new(t, false) else { return };
    let pid = e.server_pid();
    // Another mount namespace copies the mount table, this mount included:
    // detached here, the mount lives on there.
    let me = fs::read_link("/proc/self/ns/mnt").unwrap();
    let holder = Reaped(
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sleep", "600"])
            .spawn()
            .unwrap(),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while fs::read_link(format!("/proc/{}/ns/mnt", holder.0.id())).ok() == Some(me.clone()) {
        assert!(
            std::time::Instant::now() < deadline,
            "unshare never entered a namespace"
        );
        std::thread::yield_now();
    }
    agentfs_mount::unmount(&e.mp, true).unwrap();
    assert!(!mounted(&e.mp));
    // SAFETY: signalling the server this test started.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
    // `tail --pid` returns when the process has exited (bounded, so a
    // server that does not end fails the test instead of hanging it).
    let o = Command::new("timeout")
        .args(["60", "tail", "--pid", &pid.to_string(), "-f", "/dev/null"])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "the server did not end on SIGTERM: {o:?}"
    );
    drop(holder);
    let v: serde_json::Value = serde_json::from_str(&e.cli.ok(&["status", "--json"])).unwrap();
    assert_eq!(v["mounts"], serde_json::json!([]));
    assert!(fingerprint(&e.base) == e.before, "the base changed");
}

/// Counter `field` of /proc/PID/io of process `pid`.
fn proc_io(pid: u32, field: &str) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/io"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(": "))
        .unwrap()
        .parse()
        .unwrap()
}

/// Bytes the process `pid` has read (`rchar`): what the mount server read
/// from /dev/fuse, write payloads included.
fn rchar(pid: u32) -> u64 {
    proc_io(pid, "rchar")
}

#[test]
fn passthrough_writes_bypass_the_server_and_mixed_opens_stay_correct() {
    let t = "passthrough_writes_bypass_the_server_and_mixed_opens_stay_correct";
    if !have("python3", t) {
        return;
    }
    let Some(e) = Env::new(t, false) else { return };
    let pid = e.server_pid();
    let passthrough = expected_io_mode() == "passthrough";
    // 32 MiB written through the mount: with passthrough the kernel writes
    // the layer file itself and the server never reads the data.
    let before = rchar(pid);
    let chunk = vec![0x5au8; 1 << 20];
    let big = e.mp.join("big.bin");
    {
        let mut f = fs::File::create(&big).unwrap();
        for _ in 0..32 {
            f.write_all(&chunk).unwrap();
        }
        f.sync_all().unwrap();
    }
    let read = rchar(pid) - before;
    if passthrough {
        assert!(
            read < 8 << 20,
            "the server read {read} bytes of a 32 MiB write"
        );
    } else {
        assert!(read >= 32 << 20, "the server read only {read} bytes");
    }
    assert_eq!(fs::metadata(&big).unwrap().len(), 32 << 20);
    assert!(fs::read(&big).unwrap().iter().all(|b| *b == 0x5a));
    if passthrough {
        // Small writes do not each ask the server anything either (the
        // kernel's privilege check before a write asked it for
        // `security.capability` every time: 68 bytes or more per write).
        let before = rchar(pid);
        let mut f = fs::File::create(e.mp.join("small-writes.bin")).unwrap();
        for _ in 0..4096 {
            f.write_all(&[7u8; 16]).unwrap();
        }
        drop(f);
        let read = rchar(pid) - before;
        assert!(
            read < 4096 * 68 / 4,
            "the server read {read} bytes for 4096 writes"
        );
        assert_eq!(
            fs::metadata(e.mp.join("small-writes.bin")).unwrap().len(),
            4096 * 16
        );
    }
    // A base file open for reading while another open writes it (a
    // copy-up under an open reader), and opens of the copy while both are
    // open: all work, every later open sees the write, and the base is
    // untouched.
    let o = e.output_in(
        &e.mp,
        &[
            "python3",
            "-c",
            r##"
r = open("README.md")
w = open("README.md", "r+")
w.write("#!")
w.close()
print(repr(open("README.md").read()))
r.close()
w = open("README.md", "r+")
print(repr(open("README.md").read()))
w.close()
with open("README.md", "a") as a:
    a.write("more\n")
print(repr(open("README.md").read()))
"##,
        ],
    );
    assert!(o.status.success(), "{o:?}");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "'#!project\\n'\n'#!project\\n'\n'#!project\\nmore\\n'\n"
    );
    e.assert_diff_has(&["A big.bin", "A small-writes.bin", "M README.md"]);
    e.finish();
}

#[test]
fn base_files_are_read_with_passthrough_and_a_later_writer_gets_its_own_copy() {
    let t = "base_files_are_read_with_passthrough_and_a_later_writer_gets_its_own_copy";
    if !have("python3", t) {
        return;
    }
    let Some(mut e) = Env::new(t, false) else {
        return;
    };
    // A 32 MiB file in the base (written while nothing is mounted).
    e.cli.ok(&["unmount", e.mp.to_str().unwrap()]);
    fs::write(e.base.join("big.base"), vec![b'Z'; 32 << 20]).unwrap();
    e.before = fingerprint(&e.base);
    e.mount();
    let pid = e.server_pid();
    let passthrough = expected_io_mode() == "passthrough";
    // Read through the mount: with passthrough the kernel reads the base
    // file itself, and the server never does.
    let before = rchar(pid);
    assert!(fs::read(e.mp.join("big.base"))
        .unwrap()
        .iter()
        .all(|b| *b == b'Z'));
    let read = rchar(pid) - before;
    if passthrough {
        assert!(
            read < 8 << 20,
            "the server read {read} bytes of a 32 MiB base file"
        );
    } else {
        assert!(read >= 32 << 20, "the server read only {read} bytes");
    }
    // A reader holds the base file open (its backing file, with
    // passthrough) while a writer opens it: the writer's open copies it up
    // and gets the copy (under a new inode number, with passthrough), new
    // opens see the write, the held reader keeps the file it opened (as on
    // an overlayfs before Linux 4.19), and nothing fails.
    let o = e.output_in(
        &e.mp,
        &[
            "python3",
            "-c",
            r##"
import os, sys
passthrough = sys.argv[1] == "passthrough"
r = open("big.base", "rb")
print(r.read(4))
ino = os.stat("big.base").st_ino
w = open("big.base", "r+b")
w.write(b"ABCD")
w.flush()
print(open("big.base", "rb").read(4))
r.seek(0)
old = r.read(4)
if passthrough:
    print(old, os.stat("big.base").st_ino != ino)
w.close()
r.close()
with open("big.base", "rb") as f:
    print(f.read(6), os.fstat(f.fileno()).st_size)
with open("big.base", "ab") as a:
    a.write(b"!")
print(os.stat("big.base").st_size)
"##,
            expected_io_mode(),
        ],
    );
    assert!(o.status.success(), "{o:?}");
    let held = if passthrough { "b'ZZZZ' True\n" } else { "" };
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        format!(
            "b'ZZZZ'\nb'ABCD'\n{held}b'ABCDZZ' {n}\n{m}\n",
            n = 32 << 20,
            m = (32 << 20) + 1
        )
    );
    e.assert_diff_has(&["M big.base"]);
    e.finish();
}

/// Changes names and sizes in branch `b` through the CLI, round after
/// round, and checks each through the mount of `e` (the default mount:
/// names, attributes and missing names cached for a minute) with the very
/// next access after the CLI returns, with nothing but a stat where a stat
/// suffices (the kernel answers it from its caches without asking the
/// server).
/// The names in `dir`, sorted.
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|d| d.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn never_stale(e: &Env) {
    let missing =
        |p: &Path| fs::metadata(p).map(|_| ()).unwrap_err().kind() == std::io::ErrorKind::NotFound;
    // Held through the whole loop: an open file (its attributes are used
    // without a lookup) and a directory listed before (its listing is kept).
    e.cli.ok(&["fs", "mkdir", "--branch", "b", "held"]);
    e.cli
        .ok(&["fs", "write", "--branch", "b", "held/f.txt", "--data", "h"]);
    let held = fs::File::open(e.mp.join("held/f.txt")).unwrap();
    assert_eq!(names_in(&e.mp.join("held")), ["f.txt"]);
    // And a program whose working directory is a directory that was empty
    // when it listed it first: `.` is never looked up again.
    e.cli.ok(&["fs", "mkdir", "--branch", "b", "cwd"]);
    let mut py = Command::new("python3")
        .args([
            "-c",
            "import os, sys\nfor _ in sys.stdin:\n    print(' '.join(sorted(os.listdir('.'))), flush=True)\n",
        ])
        .current_dir(e.mp.join("cwd"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut py_in = py.stdin.take().unwrap();
    let mut py_out = std::io::BufReader::new(py.stdout.take().unwrap());
    let mut cwd_listing = || {
        use std::io::{BufRead, Write};
        writeln!(py_in).unwrap();
        let mut l = String::new();
        py_out.read_line(&mut l).unwrap();
        l
    };
    assert_eq!(cwd_listing().trim(), "");
    for i in 0..40 {
        // Rewritten in place elsewhere: the open file's size, and a name
        // added to the listed directory.
        let data = "h".repeat(i + 2);
        e.cli.ok(&[
            "fs",
            "write",
            "--branch",
            "b",
            "held/f.txt",
            "--data",
            &data,
        ]);
        assert_eq!(
            held.metadata().unwrap().len(),
            data.len() as u64,
            "round {i}: fstat of a file held open, written elsewhere"
        );
        let added = format!("c{i:02}.txt");
        e.cli.ok(&[
            "fs",
            "write",
            "--branch",
            "b",
            &format!("held/{added}"),
            "--data",
            "c",
        ]);
        assert!(
            names_in(&e.mp.join("held")).contains(&added),
            "round {i}: a name added elsewhere to a listed directory"
        );
        e.cli.ok(&[
            "fs",
            "write",
            "--branch",
            "b",
            &format!("cwd/{added}"),
            "--data",
            "c",
        ]);
        assert!(
            cwd_listing().split_whitespace().any(|n| n == added),
            "round {i}: a name added elsewhere, listed from a working directory in it"
        );

        let name = format!("n{i}.txt");
        let moved = format!("m{i}.txt");
        let (p, q) = (e.mp.join(&name), e.mp.join(&moved));
        // Cached as missing (negative entries), both names.
        assert!(missing(&p) && missing(&q));
        let first = "x".repeat(i + 1);
        e.cli
            .ok(&["fs", "write", "--branch", "b", &name, "--data", &first]);
        assert_eq!(
            fs::metadata(&p).map(|m| m.len()).ok(),
            Some(first.len() as u64),
            "round {i}: a name created elsewhere, stat'ed as missing just before"
        );
        let second = "y".repeat(i + 100);
        e.cli
            .ok(&["fs", "write", "--branch", "b", &name, "--data", &second]);
        assert_eq!(
            fs::metadata(&p).unwrap().len(),
            second.len() as u64,
            "round {i}: a size changed elsewhere"
        );
        e.cli.ok(&["fs", "mv", "--branch", "b", &name, &moved]);
        assert!(missing(&p), "round {i}: a name moved away elsewhere");
        assert_eq!(
            fs::read(&q).ok().map(|d| d.len()),
            Some(second.len()),
            "round {i}: a name moved here elsewhere, opened"
        );
        e.cli.ok(&["fs", "rm", "--branch", "b", &moved]);
        assert!(missing(&q), "round {i}: a name removed elsewhere");
        // And a name created elsewhere is found by an open at once.
        let third = format!("n{i}-open.txt");
        let r = e.mp.join(&third);
        assert!(missing(&r));
        e.cli
            .ok(&["fs", "write", "--branch", "b", &third, "--data", "o"]);
        assert_eq!(
            fs::read(&r).ok().as_deref(),
            Some(&b"o"[..]),
            "round {i}: a name created elsewhere, opened"
        );
    }
    drop(py_in);
    assert!(py.wait().unwrap().success());
}

#[test]
fn a_change_elsewhere_is_never_served_stale_once_its_command_returns() {
    let t = "a_change_elsewhere_is_never_served_stale_once_its_command_returns";
    let Some(e) = Env::new(t, false) else { return };
    never_stale(&e);
    e.finish();
}

#[test]
fn a_change_through_the_daemon_is_never_served_stale_once_it_replies() {
    let t = "a_change_through_the_daemon_is_never_served_stale_once_it_replies";
    let Some(e) = Env::new(t, false) else { return };
    let d = common::daemon::DaemonProc::start(
        &e.cli.config,
        &e.cli.dir.join("no-daemon.sock"),
        &[],
        &[],
    );
    let v: serde_json::Value =
        serde_json::from_str(&e.cli.ok(&["branch", "list", "--json"])).unwrap();
    assert_eq!(v["via"], "daemon", "the CLI goes through the daemon");
    never_stale(&e);
    drop(d);
    e.finish();
}

/// True when the kernel opens directories without asking the server
/// (Linux 5.1 and later, when the server answers `opendir` with ENOSYS).
fn kernel_opens_directories_alone() -> bool {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut v = release
        .trim()
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (v.next().unwrap_or(0), v.next().unwrap_or(0)) >= (5, 1)
}

#[test]
fn directories_open_without_the_server_and_list_whole() {
    let t = "directories_open_without_the_server_and_list_whole";
    let Some(e) = Env::new(t, false) else { return };
    let pid = e.server_pid();
    // More names than one reply holds: a listing takes several reads,
    // each continuing where the last stopped.
    let dir = e.mp.join("many");
    fs::create_dir(&dir).unwrap();
    let mut want: Vec<String> = (0..1500).map(|i| format!("name-{i:04}.txt")).collect();
    for n in &want {
        fs::write(dir.join(n), b"x").unwrap();
    }
    want.sort();
    assert_eq!(names_in(&dir), want);
    // Opened and listed again and again by four threads at once: every
    // listing is whole, and (the kernel keeping the listing and opening
    // the directory itself) the server is not asked for any of it.
    let before = rchar(pid);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..200 {
                    drop(fs::File::open(&dir).unwrap());
                }
                for _ in 0..20 {
                    assert_eq!(names_in(&dir), want);
                }
            });
        }
    });
    let read = rchar(pid) - before;
    if kernel_opens_directories_alone() {
        // An `opendir` request alone is 48 bytes: 800 opens and 80
        // listings would be more than 38,000.
        assert!(
            read < 4_000,
            "the server read {read} bytes for 800 opens and 80 listings"
        );
    }
    // Changed through the mount, and elsewhere: the next listing shows it.
    fs::remove_file(dir.join(&want[7])).unwrap();
    let gone = want.remove(7);
    assert_eq!(names_in(&dir), want, "{gone} removed through the mount");
    e.cli
        .ok(&["fs", "rm", "--branch", "b", &format!("many/{}", want[0])]);
    want.remove(0);
    e.cli.ok(&[
        "fs",
        "write",
        "--branch",
        "b",
        "many/zz-new.txt",
        "--data",
        "n",
    ]);
    want.push("zz-new.txt".into());
    assert_eq!(names_in(&dir), want, "changed through the CLI");
    // Files a program under the shim creates (an `fd_open` through the
    // daemon): the same program lists the mount right after each (the
    // mount knows 1,500 names: its sweep takes a while).
    if have("python3", t) {
        let d = common::daemon::DaemonProc::start(
            &e.cli.config,
            &e.cli.dir.join("no-daemon.sock"),
            &[],
            &[],
        );
        let out = e.cli.ok(&[
            "run",
            "--no-sandbox",
            "--branch",
            "b",
            "--",
            "python3",
            "-c",
            "import os, sys\n\
             base, many = sys.argv[1], os.path.join(sys.argv[2], 'many')\n\
             os.listdir(many)\n\
             for i in range(40):\n\
             \x20   open(os.path.join(base, 'many', f'shim-{i}'), 'w').close()\n\
             \x20   print(sum(n.startswith('shim-') for n in os.listdir(many)))\n",
            e.base.to_str().unwrap(),
            e.mp.to_str().unwrap(),
        ]);
        let want: String = (1..=40).map(|i| format!("{i}\n")).collect();
        assert_eq!(
            out, want,
            "names created under the shim, listed in the mount"
        );
        drop(d);
    }
    e.finish();
}

#[test]
fn a_killed_mount_does_not_hold_up_writers() {
    let t = "a_killed_mount_does_not_hold_up_writers";
    let Some(e) = Env::new(t, false) else { return };
    let pid = e.server_pid();
    // SAFETY: signalling the server this test started.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    // Until it is gone (or a zombie), it may still be waited for.
    let gone = || {
        fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| r.starts_with(" Z") || r.starts_with(" X"))
        })
    };
    while !gone() {
        std::thread::yield_now();
    }
    // Its record in the store's mount registry stays behind, never
    // swept again: writers see its pid is dead and do not wait for it
    // (waiting out the bound would log a warning).
    for i in 0..3 {
        let o = e.cli.run(&[
            "fs",
            "write",
            "--branch",
            "b",
            &format!("w{i}"),
            "--data",
            "w",
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{err}");
        assert!(!err.contains("did not invalidate"), "{err}");
    }
    let _ = fs::metadata(&e.mp);
    e.mount();
    assert_eq!(fs::read(e.mp.join("w2")).unwrap(), b"w");
    e.finish();
}

#[test]
fn changes_through_another_path_show_at_once_under_long_kernel_caches() {
    let t = "changes_through_another_path_show_at_once_under_long_kernel_caches";
    // The default mount: names and attributes cached for a minute.
    let Some(e) = Env::new(t, false) else { return };
    let readme = e.mp.join("README.md");
    let guide = e.mp.join("docs/guide.md");
    // Everything below is in the kernel's caches now.
    assert_eq!(fs::read(&readme).unwrap(), b"# project\n");
    assert_eq!(fs::metadata(&readme).unwrap().len(), 10);
    assert!(fs::metadata(&guide).is_ok());
    let lib = e.mp.join("src/lib.rs");
    let mode = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    };
    assert_eq!(mode(&lib), 0o644);
    let ls = |d: &Path| -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(d)
            .unwrap()
            .map(|x| x.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    let docs_before = ls(&e.mp.join("docs"));
    assert!(docs_before.contains(&"guide.md".to_string()));
    // Each change through the CLI (another process) is seen by the very
    // next access through the mount: no waiting.
    let data = "# changed elsewhere, and longer\n";
    e.cli
        .ok(&["fs", "write", "--branch", "b", "README.md", "--data", data]);
    assert_eq!(fs::read_to_string(&readme).unwrap(), data);
    assert_eq!(fs::metadata(&readme).unwrap().len(), data.len() as u64);
    e.cli
        .ok(&["fs", "write", "--branch", "b", "new.txt", "--data", "n"]);
    assert_eq!(fs::read(e.mp.join("new.txt")).unwrap(), b"n");
    assert!(ls(&e.mp).contains(&"new.txt".to_string()));
    e.cli.ok(&["fs", "rm", "--branch", "b", "docs/guide.md"]);
    assert_eq!(
        fs::read(&guide).unwrap_err().kind(),
        std::io::ErrorKind::NotFound
    );
    assert!(!ls(&e.mp.join("docs")).contains(&"guide.md".to_string()));
    // An attribute changed elsewhere, asked with nothing but a stat (which
    // the kernel answers from its cache without asking the server): the
    // mount's invalidation thread drops the cached attributes as soon as
    // it sees the change counter move. With the caches kept for a minute,
    // this fails without that invalidation.
    e.cli
        .ok(&["fs", "chmod", "--branch", "b", "600", "src/lib.rs"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while mode(&lib) != 0o600 {
        assert!(
            std::time::Instant::now() < deadline,
            "a chmod made elsewhere never reached the kernel's attribute cache"
        );
        std::thread::yield_now();
    }
    // A file rewritten elsewhere while the mount has it open with
    // passthrough: a new open reads the new content once it is closed.
    fs::write(e.mp.join("own.txt"), b"mine").unwrap();
    e.cli.ok(&[
        "fs", "write", "--branch", "b", "own.txt", "--data", "theirs!",
    ]);
    assert_eq!(fs::read(e.mp.join("own.txt")).unwrap(), b"theirs!");
    // A base file replaced elsewhere while the mount holds it open (with
    // passthrough the kernel holds the base file as the inode's backing):
    // a new open gets the branch's new file (under a new inode number), and
    // the held one keeps reading what it opened.
    let main = e.mp.join("src/main.rs");
    let mut held = fs::File::open(&main).unwrap();
    e.cli.ok(&[
        "fs",
        "write",
        "--branch",
        "b",
        "src/main.rs",
        "--data",
        "a third",
    ]);
    assert_eq!(fs::read(&main).unwrap(), b"a third");
    let mut old = Vec::new();
    std::io::Read::read_to_end(&mut held, &mut old).unwrap();
    if expected_io_mode() == "passthrough" {
        assert_eq!(old, b"fn main() {}\n");
    }
    drop(held);
    assert_eq!(fs::read(&main).unwrap(), b"a third");
    e.finish();
}

/// A child killed (and reaped) when dropped, so a failing test leaves no
/// watcher behind.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        // SAFETY: signalling our own child (`agentfs run` passes it on).
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

/// Lines of a child's pipe, read on a thread.
fn pipe_lines(r: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(r).lines() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    rx
}

/// Reads lines from `rx` until one satisfies `want`; fails (with what
/// came) if the writer ends first, or prints nothing more for a minute
/// (a hang, not a timing threshold).
fn until(rx: &std::sync::mpsc::Receiver<String>, what: &str, want: impl Fn(&str) -> bool) {
    let mut got = Vec::new();
    loop {
        match rx.recv_timeout(std::time::Duration::from_secs(60)) {
            Ok(l) if want(&l) => return,
            Ok(l) => got.push(l),
            Err(e) => panic!("{what}: {e}; it printed {got:?}"),
        }
    }
}

#[test]
fn events_of_the_mount_reach_the_daemons_watchers() {
    let t = "events_of_the_mount_reach_the_daemons_watchers";
    let Some(e) = Env::new(t, false) else { return };
    // A daemon serving the same store (with the inotify provider, for the
    // shim's inotify), started after the mount: the mount finds it when it
    // has events to forward.
    let mut cfg = fs::read_to_string(&e.cli.config).unwrap();
    cfg.push_str("\n[[watch]]\nplugin = \"inotify\"\n");
    fs::write(&e.cli.config, cfg).unwrap();
    let _d = common::daemon::DaemonProc::start(
        &e.cli.config,
        &e.cli.dir.join("no-daemon.sock"),
        &[],
        &[],
    );
    let mut watch = Reaped(
        e.cli
            .cmd()
            .args(["watch", "--branch", "b"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let watch_out = pipe_lines(watch.0.stdout.take().unwrap());
    let watch_err = pipe_lines(watch.0.stderr.take().unwrap());
    until(&watch_err, "agentfs watch", |l| {
        l.starts_with("agentfs watch:")
    });
    // inotifywait under `agentfs run` (the shim) in the same branch.
    let mut inw = None;
    if have("inotifywait", t) {
        let mut c = Reaped(
            e.cli
                .cmd()
                .current_dir(&e.base)
                .args(["run", "--branch", "b", "--", "inotifywait", "-m"])
                .args(["-e", "create,close_write", "--format", "%e %f", "."])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let out = pipe_lines(c.0.stdout.take().unwrap());
        let err = pipe_lines(c.0.stderr.take().unwrap());
        until(&err, "inotifywait", |l| l.contains("Watches established"));
        inw = Some((c, out));
    }
    fs::write(e.mp.join("seen.txt"), b"through the mount").unwrap();
    until(&watch_out, "agentfs watch", |l| {
        l.contains(" created seen.txt ")
    });
    until(&watch_out, "agentfs watch", |l| {
        l.contains(" modified seen.txt ")
    });
    drop(watch);
    // And the other way: a change through the daemon (the CLI uses it
    // now) is seen through the mount right after the command returns.
    let v: serde_json::Value =
        serde_json::from_str(&e.cli.ok(&["branch", "list", "--json"])).unwrap();
    assert_eq!(v["via"], "daemon", "the CLI goes through the daemon");
    e.cli.ok(&[
        "fs",
        "write",
        "--branch",
        "b",
        "seen.txt",
        "--data",
        "through the daemon",
    ]);
    assert_eq!(
        fs::read(e.mp.join("seen.txt")).unwrap(),
        b"through the daemon"
    );
    if let Some((c, out)) = inw {
        until(&out, "inotifywait under agentfs run", |l| {
            l == "CREATE seen.txt"
        });
        drop(c);
    }
    e.assert_diff_has(&["A seen.txt"]);
    e.finish();
}

/// Bytes the process `pid` has written (`wchar`).
fn wchar(pid: u32) -> u64 {
    proc_io(pid, "wchar")
}

#[test]
fn copy_file_range_copies_between_layer_files_in_the_server() {
    let t = "copy_file_range_copies_between_layer_files_in_the_server";
    if !have("python3", t) {
        return;
    }
    let Some(e) = Env::new(t, false) else { return };
    let pid = e.server_pid();
    let chunk = vec![0x3cu8; 1 << 20];
    {
        let mut f = fs::File::create(e.mp.join("src.bin")).unwrap();
        for _ in 0..16 {
            f.write_all(&chunk).unwrap();
        }
    }
    let before = wchar(pid);
    let o = e.output_in(
        &e.mp,
        &[
            "python3",
            "-c",
            r#"
import os
s = os.open("src.bin", os.O_RDONLY)
d = os.open("dst.bin", os.O_WRONLY | os.O_CREAT, 0o644)
n = 0
while True:
    k = os.copy_file_range(s, d, 1 << 24)
    if k == 0:
        break
    n += k
print(n)
b = os.open("README.md", os.O_RDONLY)
c = os.open("readme.copy", os.O_WRONLY | os.O_CREAT, 0o644)
print(os.copy_file_range(b, c, 100))
"#,
        ],
    );
    assert!(o.status.success(), "{o:?}");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "16777216\n10\n");
    if expected_io_mode() == "passthrough" {
        // The copy ran in the server, between the layer files (the
        // kernel's fallback would have copied through the client).
        let wrote = wchar(pid) - before;
        assert!(wrote >= 16 << 20, "the server copied {wrote} bytes");
    }
    assert_eq!(
        fs::read(e.mp.join("dst.bin")).unwrap(),
        vec![0x3cu8; 16 << 20]
    );
    assert_eq!(fs::read(e.mp.join("readme.copy")).unwrap(), b"# project\n");
    e.assert_diff_has(&["A dst.bin", "A readme.copy"]);
    e.finish();
}

/// A store of `nobody`'s own for the ordinary-user tests (run as root):
/// its directory (`base` with `a.txt`, an empty `m`, `agentfs.toml`), and
/// a 0666 device node of the user's (`fuse`) to bind over /dev/fuse in a
/// private mount namespace (fusermount3 opens /dev/fuse with the user's
/// rights, and the machine's may be 0600). None (after saying why) where
/// the test cannot run.
struct Nobody {
    dir: tempfile::TempDir,
    uid: u32,
    gid: u32,
}

impl Nobody {
    fn new(t: &str) -> Option<Self> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            // The other tests already run as this ordinary user.
            skip(
                t,
                "run as root: it sets up the user `nobody`'s view of /dev/fuse",
            );
            return None;
        }
        if !fuse_available(t)
            || !have("fusermount3", t)
            || !have("unshare", t)
            || !have("setpriv", t)
        {
            return None;
        }
        // SAFETY: getpwnam with a NUL-terminated name; the entry is read at once.
        let pw = unsafe { libc::getpwnam(c"nobody".as_ptr()) };
        if pw.is_null() {
            skip(t, "no user `nobody`");
            return None;
        }
        // SAFETY: a non-null entry from getpwnam, read before any other call.
        let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
        let d = tempfile::Builder::new()
            .prefix("agentfs-nobody")
            .tempdir_in("/tmp")
            .unwrap();
        let dir = d.path();
        for sub in ["base", "m"] {
            fs::create_dir(dir.join(sub)).unwrap();
        }
        fs::write(dir.join("base/a.txt"), b"from the base\n").unwrap();
        fs::write(
            dir.join("agentfs.toml"),
            format!(
                "[backstore]\nplugin = \"hostfs\"\noptions = {{ root = {:?} }}\n",
                dir.join("store").display().to_string()
            ),
        )
        .unwrap();
        let dev = dir.join("fuse");
        let c = std::ffi::CString::new(dev.to_str().unwrap()).unwrap();
        // SAFETY: mknod with a NUL-terminated path; 10:229 is /dev/fuse.
        let r = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(10, 229)) };
        assert_eq!(r, 0, "mknod: {}", std::io::Error::last_os_error());
        // SAFETY: chmod with a NUL-terminated path (the umask cut the mode).
        assert_eq!(unsafe { libc::chmod(c.as_ptr(), 0o666) }, 0);
        let o = Command::new("chown")
            .arg("-R")
            .arg(format!("{uid}:{gid}"))
            .arg(dir)
            .status()
            .unwrap();
        assert!(o.success());
        let mut perm = fs::metadata(dir).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
        fs::set_permissions(dir, perm).unwrap();
        Some(Self { dir: d, uid, gid })
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `body` (shell lines; `as CMD...` runs CMD as the user with its
    /// store) with the user's /dev/fuse, in a private mount namespace.
    fn script(&self, body: &str) -> std::process::Output {
        let dir = self.dir().display();
        let script = format!(
            r#"set -e
mount --bind {dir}/fuse /dev/fuse
as() {{ setpriv --reuid={uid} --regid={gid} --clear-groups env HOME={dir} AGENTFS_CONFIG={dir}/agentfs.toml AGENTFS_SOCKET={dir}/sock "$@"; }}
agentfs={agentfs}
{body}
"#,
            uid = self.uid,
            gid = self.gid,
            agentfs = env!("CARGO_BIN_EXE_agentfs"),
        );
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .output()
            .unwrap()
    }
}

#[test]
fn an_ordinary_user_mounts_through_fusermount3() {
    let t = "an_ordinary_user_mounts_through_fusermount3";
    let Some(n) = Nobody::new(t) else { return };
    let uid = n.uid;
    let dir = n.dir().display().to_string();
    let o = n.script(&format!(
        r#"as $agentfs init --base {dir}/base >/dev/null
as $agentfs branch create b >/dev/null
as $agentfs mount --branch b {dir}/m
as sh -c 'cat {dir}/m/a.txt; echo mine > {dir}/m/n.txt; id -u; stat -c %u {dir}/m/n.txt'
as $agentfs status --json | grep -o '"io_mode": *"[a-z]*"'
as $agentfs diff --branch b
as $agentfs unmount {dir}/m
grep -c " {dir}/m " /proc/self/mountinfo || true
"#
    ));
    assert!(o.status.success(), "{o:?}");
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            format!("mounted branch b at {dir}/m (io: fuse)").as_str(),
            "from the base",
            &uid.to_string(),
            &uid.to_string(),
            "\"io_mode\": \"fuse\"",
            "A n.txt",
            &format!("unmounted {dir}/m"),
            "0",
        ],
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        fs::read(n.dir().join("base/a.txt")).unwrap(),
        b"from the base\n"
    );
    assert!(!n.dir().join("base/n.txt").exists(), "the base changed");
}

#[test]
fn an_ordinary_user_copies_builds_and_runs_git_and_a_static_binary_in_the_mount() {
    let t = "an_ordinary_user_copies_builds_and_runs_git_and_a_static_binary_in_the_mount";
    if !have("git", t) || !have("make", t) || !have("cc", t) {
        return;
    }
    let Some(bb) = static_busybox(t) else { return };
    let Some(n) = Nobody::new(t) else { return };
    let dir = n.dir().display().to_string();
    fs::copy(bb, n.dir().join("busybox")).unwrap();
    // The base: a git checkout of a small C project, the user's.
    let base = n.dir().join("base");
    fs::create_dir(base.join("src")).unwrap();
    fs::write(
        base.join("src/hello.c"),
        "#include <stdio.h>\nint main(void) { return puts(\"hello\") < 0; }\n",
    )
    .unwrap();
    fs::write(
        base.join("Makefile"),
        "hello: src/hello.c\n\tcc -o hello src/hello.c\n",
    )
    .unwrap();
    let chown = Command::new("chown")
        .arg("-R")
        .arg(format!("{}:{}", n.uid, n.gid))
        .arg(&base)
        .status()
        .unwrap();
    assert!(chown.success());
    let o = n.script(&format!(
        r#"as sh -c 'cd {dir}/base && git init -q && git add -A && git -c user.email=n@example.com -c user.name=n commit -qm base'
as $agentfs init --base {dir}/base >/dev/null
as $agentfs branch create b >/dev/null
as $agentfs mount --branch b {dir}/m >/dev/null
as sh -c 'cd {dir}/m && cp -a src copy && make -s && ./hello && cp {dir}/busybox . && ./busybox sh -c "echo static > st.txt" && cat st.txt && git status --short'
as $agentfs diff --branch b
as $agentfs unmount {dir}/m
grep -c " {dir}/m " /proc/self/mountinfo || true
as sh -c 'cd {dir}/base && git status --short && ls'
"#
    ));
    assert!(o.status.success(), "{o:?}");
    let out = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<&str> = out.lines().collect();
    let at = |what: &str| {
        lines
            .iter()
            .position(|l| *l == what)
            .unwrap_or_else(|| panic!("no line {what:?} in:\n{out}"))
    };
    // In the mount: the copy, the build and the static binary worked, and
    // git sees what they made.
    assert!(at("hello") < at("static"), "{out}");
    assert!(at("static") < at("?? busybox"), "{out}");
    for l in ["?? copy/", "?? hello", "?? st.txt"] {
        at(l);
    }
    // The branch has it all.
    for l in ["A busybox", "A copy/hello.c", "A hello", "A st.txt"] {
        at(l);
    }
    // Nothing is left mounted, and the base is as the user made it.
    let unmounted = at(&format!("unmounted {dir}/m"));
    assert_eq!(lines[unmounted + 1], "0", "{out}");
    assert_eq!(
        &lines[unmounted + 2..],
        ["Makefile", "a.txt", "src"],
        "the base's git status and listing\n{out}"
    );
}

#[test]
fn an_ordinary_user_runs_with_the_fuse_frontend_in_a_user_namespace() {
    let t = "an_ordinary_user_runs_with_the_fuse_frontend_in_a_user_namespace";
    let Some(n) = Nobody::new(t) else { return };
    let uid = n.uid;
    let dir = n.dir().display().to_string();
    // Can the user make a user namespace here at all?
    let probe = n.script("as unshare --user --mount true");
    if !probe.status.success() {
        // Not a missing tool but a system that forbids it: the frontend
        // cannot work here, so this is no failure even under
        // AGENTFS_REQUIRE_COW=1.
        eprintln!(
            "skipped: {t}: this system does not let an ordinary user create a user namespace: {}",
            String::from_utf8_lossy(&probe.stderr).trim()
        );
        return;
    }
    let o = n.script(&format!(
        r#"as $agentfs init --base {dir}/base >/dev/null
cd {dir}/base
set +e
as $agentfs run --frontend fuse --create --branch r -- sh -c 'cat a.txt; echo changed > a.txt; cat a.txt; id -u; stat -c %u a.txt; pwd; exit 3'
echo "exit $?"
set -e
as $agentfs diff --branch r
grep -c " agentfs:r " /proc/self/mountinfo || true
"#
    ));
    assert!(o.status.success(), "{o:?}");
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "from the base",
            "changed",
            &uid.to_string(),
            &uid.to_string(),
            &format!("{dir}/base"),
            "exit 3",
            "M a.txt",
            "0",
        ],
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        fs::read(n.dir().join("base/a.txt")).unwrap(),
        b"from the base\n",
        "the base changed"
    );
}
