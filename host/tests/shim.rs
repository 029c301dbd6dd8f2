//! Real, unmodified programs under `agentfs run`: each script runs once
//! inside a branch of a sample project (through the shim and the daemon)
//! and once natively in a copy of the project, and the two must print the
//! same and leave the same tree; the base must be byte-for-byte unchanged
//! and `agentfs diff` must show the changes in the branch.
//!
//! A test whose tool is missing says why on stderr and passes, unless
//! `AGENTFS_REQUIRE_COW=1` (CI), where it fails. Linux only: the shim is
//! injected with `LD_PRELOAD`.
#![cfg(target_os = "linux")]

mod common;

use std::{
    fs,
    path::Path,
    process::{Command, Output},
};

use agentfs_testfs::skip;
use common::programs::{fingerprint, has_interpreter, have, Fingerprint, Sample};

/// The shared sample project and native copy, run through the shim.
struct Env(Sample);

impl std::ops::Deref for Env {
    type Target = Sample;
    fn deref(&self) -> &Sample {
        &self.0
    }
}

impl Env {
    /// The sample project (optionally a git checkout), and a native copy.
    fn new(git: bool) -> Self {
        // `agentfs run` finds the shim next to itself (built once if a
        // clean checkout has not built the workspace yet).
        agentfs_testfs::built("libagentfs_shim.so");
        Self(Sample::new(git))
    }

    /// `agentfs run --create --branch b -- args` in the base.
    fn run(&self, args: &[&str]) -> Output {
        self.run_command(args).output().unwrap()
    }

    /// The command [`Env::run`] runs, to start it another way.
    fn run_command(&self, args: &[&str]) -> Command {
        let mut c = self.cli.cmd();
        c.current_dir(&self.base)
            .args(["run", "--create", "--branch", "b", "--"])
            .args(args)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("HOME", &self.cli.dir);
        c
    }

    /// Runs `script` with `shell` both ways; requires both to succeed and
    /// print the same (absolute paths of the project shown as `ROOT`).
    fn same(&self, shell: &[&str], script: &str) -> String {
        let mut args = shell.to_vec();
        args.push(script);
        let b = self.run(&args);
        let n = self.output_in(&self.native, &args);
        self.same_output((&b, &self.base), &n, "in the branch")
    }

    /// The tree as programs in the branch see it, and the native copy's:
    /// names, kinds, modes, link targets and file hashes.
    fn assert_same_tree(&self) {
        let lister = "find . -path ./.git -prune -o -printf '%P %y %m %l\\n' | LC_ALL=C sort; \
                      find . -path ./.git -prune -o -type f -exec sha256sum {} + | LC_ALL=C sort";
        self.same(&["sh", "-c"], lister);
    }

    /// The tree is the native copy's, the diff has `lines`, and the base
    /// is what `before` recorded.
    fn assert_outcome(&self, lines: &[&str], before: &Fingerprint) {
        self.assert_same_tree();
        self.assert_diff_has(lines);
        assert_eq!(&fingerprint(&self.base), before, "the base changed");
    }
}

#[test]
fn done_means_a_git_checkout_prints_what_it_would_natively() {
    if !have("git", "done_means") {
        return;
    }
    let e = Env::new(true);
    let before = fingerprint(&e.base);
    let out = e.same(
        &["sh", "-c"],
        "echo hi > new.txt; git status --short; cat new.txt",
    );
    assert_eq!(out, "?? new.txt\nhi\n");
    e.assert_diff_has(&["A new.txt"]);
    assert_eq!(fingerprint(&e.base), before, "the checkout changed");
}

#[test]
fn sigterm_to_agentfs_run_stops_the_program_and_nothing_is_left_blocked() {
    let e = Env::new(false);
    let pid_file = e.cli.dir.join("program.pid");
    let mask_file = e.cli.dir.join("program.sigblk");
    let script = format!(
        "grep '^SigBlk' /proc/self/status > {}; echo $$ > {p}.tmp && mv {p}.tmp {p}; exec sleep 600",
        mask_file.display(),
        p = pid_file.display()
    );
    let mut run = e.run_command(&["sh", "-c", &script]).spawn().unwrap();
    // The program is running once it has written its pid.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let pid: i32 = loop {
        if let Ok(p) = fs::read_to_string(&pid_file) {
            break p.trim().parse().unwrap();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the program never started"
        );
        std::thread::yield_now();
    };
    // SAFETY: signalling our own child.
    unsafe { libc::kill(run.id() as i32, libc::SIGTERM) };
    let status = run.wait().unwrap();
    // SAFETY: signal 0 only checks that the process exists.
    let alive = unsafe { libc::kill(pid, 0) } == 0;
    if alive {
        // SAFETY: the orphaned program of this test, stopped so that a
        // failure leaves nothing behind.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    // The program got the signal (its status is `agentfs run`'s), and it
    // is gone: `agentfs run` reaped it before exiting.
    assert!(!alive, "the program (pid {pid}) outlived agentfs run");
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{status:?}");
    // It started with no signal blocked.
    assert_eq!(
        fs::read_to_string(&mask_file).unwrap().trim(),
        "SigBlk:\t0000000000000000"
    );
}

#[test]
fn bash_redirections_appends_heredocs_and_globs() {
    if !have("bash", "bash") {
        return;
    }
    let e = Env::new(false);
    let before = fingerprint(&e.base);
    let out = e.same(
        &["bash", "-c"],
        r#"set -e
echo one > out.txt
echo two >> out.txt
echo appended >> README.md
cat > here.txt <<END
line $((1 + 2))
END
exec 3< here.txt; read -r l <&3; exec 3<&-; echo "read: $l"
echo src/*.rs *.md
shopt -s globstar; echo **/*.txt
[ -f out.txt ] && [ -d src ] && [ -L main-link ] && [ -x run.sh ] && [ -w README.md ] && echo tests-ok
cat out.txt README.md
./run.sh
cd src && pwd && cd nested && /bin/pwd && cd ../.. && echo "back: $(pwd)"
"#,
    );
    assert!(
        out.contains("tests-ok") && out.contains("read: line 3"),
        "{out}"
    );
    e.assert_outcome(&["A out.txt", "A here.txt", "M README.md"], &before);
}

#[test]
fn names_that_are_not_utf8_work_under_the_shim() {
    if !have("bash", "names_that_are_not_utf8") {
        return;
    }
    let e = Env::new(false);
    let before = fingerprint(&e.base);
    let out = e.same(
        &["bash", "-c"],
        r#"set -e
export LC_ALL=C
n=$(printf 'caf\351'); d=$(printf 'd\377')
echo hi > "$n"; mkdir "$d"; mv "$n" "$d/"; ln -s "$n" "$d/link"
cat "$d/$n" "$d/link"; readlink "$d/link" | od -An -c; ls -b "$d"
"#,
    );
    assert!(out.starts_with("hi\nhi\n"), "{out}");
    assert!(out.contains("caf\\351\nlink\n"), "{out}");
    e.assert_outcome(&["A \"d\\377/\"", "A \"d\\377/caf\\351\""], &before);
}

#[test]
fn fifos_and_devices_in_the_base_work_as_they_do_natively() {
    let e = Env::new(false);
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    for dir in [&e.base, &e.native] {
        mkfifo(&dir.join("pipe"));
        if root {
            let c =
                std::ffi::CString::new(dir.join("null0").as_os_str().as_encoded_bytes()).unwrap();
            // SAFETY: a valid C string; the device numbers of /dev/null.
            let r = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) };
            assert_eq!(r, 0, "mknod");
        }
    }
    if !root {
        eprintln!("fifos_and_devices: not root, so no device node in the base (the fifo is)");
    }
    let before = fingerprint(&e.base);
    // A fifo and a device take writes as natively: the data goes to a
    // reader or a driver, nothing is copied into the branch.
    let out = e.same(
        &["sh", "-c"],
        r#"set -e
timeout 20 cat pipe > got 2>/dev/null & echo through > pipe; wait; cat got
if [ -c null0 ]; then echo discarded > null0; printf '%s\n' "device: $(wc -c < null0)"; fi
ls -l pipe | cut -c1
"#,
    );
    let device = if root { "device: 0\n" } else { "" };
    assert_eq!(out, format!("through\n{device}p\n"));
    e.assert_outcome(&["A got"], &before);
    let d = e.cli.ok(&["diff", "--branch", "b"]);
    assert!(!d.contains("pipe") && !d.contains("null0"), "{d}");
}

#[test]
fn coreutils_in_a_branch_match_a_native_copy() {
    let e = Env::new(false);
    let before = fingerprint(&e.base);
    e.same(
        &["sh", "-c"],
        r#"set -e
mkdir -p a/b/c
touch a/b/c/new.txt
cp -a src copy
cp README.md copy/readme-copy.md
mv docs/guide.md guide.md
rm -rf docs
ln -s src/lib.rs lib-link
chmod -R go-rx src
find . | LC_ALL=C sort
du -a a | awk '{print $2}' | LC_ALL=C sort
stat -c '%n %s %F %a' README.md guide.md a/b/c/new.txt src/main.rs lib-link copy/readme-copy.md
readlink -f lib-link
realpath main-link src/../guide.md
readlink main-link
ls -la | awk 'NR > 1 {print $1, $NF}' | LC_ALL=C sort
ls -a src copy
cat lib-link copy/main.rs
"#,
    );
    e.assert_outcome(
        &[
            "A a/b/c/new.txt",
            "D docs/",
            "A guide.md",
            "A lib-link",
            "A copy/main.rs",
        ],
        &before,
    );
}

#[test]
fn proc_links_and_the_device_show_the_branch_not_a_layer() {
    if !have("bash", "proc_links") || !have("python3", "proc_links") {
        return;
    }
    let e = Env::new(false);
    let before = fingerprint(&e.base);
    // README.md and fresh/ live in the branch's layer: the kernel's own
    // links name the store; the program must see branch paths.
    let out = e.same(
        &["bash", "-c"],
        r#"set -e
echo changed >> README.md
mkdir -p fresh/deeper
readlink /proc/self/fd/3 3<README.md
readlink /proc/self/fd/3 3<src/lib.rs
exec 4<README.md; readlink /proc/$$/fd/4; exec 4<&-
cd fresh/deeper && readlink /proc/self/cwd && pwd && cd ../..
python3 -c 'import os; f = os.open("README.md", os.O_RDONLY); print(os.readlink(f"/proc/self/fd/{f}")); os.chdir("fresh"); print(os.readlink("/proc/self/cwd"))'
find . -xdev -type f | LC_ALL=C sort
du -x -a . | awk '{print $2}' | LC_ALL=C sort
"#,
    );
    assert!(out.contains("ROOT/README.md\nROOT/src/lib.rs\n"), "{out}");
    assert!(
        out.contains("ROOT/fresh/deeper\nROOT/fresh/deeper\n"),
        "{out}"
    );
    assert!(!out.contains("layers"), "a layer path leaked: {out}");
    e.assert_outcome(&["M README.md", "A fresh/"], &before);
}

/// Checks, in the tree under the working directory (`.git` left out),
/// that every entry shows one device, that `(st_dev, st_ino)` pairs are
/// unique, that `readdir`'s `d_ino` (`os.scandir`) and `fstat` of an fd
/// (opened here, and fd 3, inherited from the shell) agree with `lstat`;
/// prints what a native run prints too.
const IDENTITY_CHECK: &str = r#"
import os
# First, before this process has looked at the branch: the fd the shell
# opened on a file of the branch's layer.
inherited = os.fstat(3)
root = os.lstat(".")
seen, bad = {}, []
for d, dirs, files in os.walk("."):
    dirs[:] = [x for x in dirs if x != ".git"]
    with os.scandir(d) as it:
        for e in it:
            if e.name == ".git":
                continue
            st = os.lstat(e.path)
            if st.st_dev != root.st_dev:
                bad.append(f"device of {e.path}")
            if e.inode() != st.st_ino:
                bad.append(f"d_ino of {e.path}")
            key = (st.st_dev, st.st_ino)
            if key in seen and not os.path.samefile(seen[key], e.path):
                bad.append(f"{e.path} and {seen[key]} share an identity")
            seen[key] = e.path
            if e.is_file(follow_symlinks=False):
                fd = os.open(e.path, os.O_RDONLY)
                f = os.fstat(fd)
                os.close(fd)
                if (f.st_dev, f.st_ino) != key:
                    bad.append(f"fstat of {e.path}")
if (inherited.st_dev, inherited.st_ino) != (root.st_dev, os.stat("new.txt").st_ino):
    bad.append("fstat of the inherited fd 3")
print("identities:", len(seen), "entries", "ok" if not bad else bad)
"#;

/// Whether the tools [`assert_one_device`] runs are installed.
fn have_identity_tools(test: &str) -> bool {
    ["git", "python3", "bash", "cc"]
        .iter()
        .all(|t| have(t, test))
}

/// Points the environment's config at a store of backstore `plugin` at
/// `root`.
fn use_store(e: &Env, plugin: &str, root: &Path) {
    fs::write(
        &e.cli.config,
        format!(
            "[backstore]\nplugin = {plugin:?}\noptions = {{ root = {:?} }}\n",
            root.display().to_string()
        ),
    )
    .unwrap();
}

#[test]
fn a_store_on_another_device_shows_one_device_and_unique_inodes() {
    let test = "a_store_on_another_device_shows_one_device";
    if !have_identity_tools(test) {
        return;
    }
    // The store on a tmpfs, the base on the temp directory's filesystem:
    // every layer entry's real device is the tmpfs's.
    let Some(tfs) = agentfs_testfs::mount_or_skip(agentfs_testfs::FsKind::Tmpfs, 64, test) else {
        return;
    };
    let e = Env::new(true);
    use_store(&e, "hostfs", &tfs.path().join("store"));
    assert_one_device(&e);
    drop(e);
    drop(tfs);
}

#[test]
fn btrfs_layers_that_are_subvolumes_show_the_base_device() {
    let test = "btrfs_layers_that_are_subvolumes_show_the_base_device";
    if !have_identity_tools(test) {
        return;
    }
    // The btrfs plugin's own setup: base and store on one btrfs, every
    // layer a subvolume, which the kernel shows as a device of its own.
    let Some(bfs) = agentfs_testfs::mount_or_skip(agentfs_testfs::FsKind::Btrfs, 256, test) else {
        return;
    };
    let mut e = Env::new(true);
    let base = bfs.path().join("base");
    let o = Command::new("cp")
        .arg("-a")
        .arg(&e.base)
        .arg(&base)
        .output()
        .unwrap();
    assert!(o.status.success(), "cp -a: {o:?}");
    e.0.base = base;
    use_store(&e, "btrfs", &bfs.path().join("store"));
    assert_one_device(&e);
    drop(e);
    drop(bfs);
}

/// Runs, in the branch and natively, changes that put files in the layer
/// beside the base's, then checks that programs see one device and
/// consistent, unique inodes: `stat`, `find -xdev`, `du -x`, `ls -i`,
/// `nftw(FTW_MOUNT)`, python3's `scandir`/`fstat`, and `git status`.
fn assert_one_device(e: &Env) {
    let before = fingerprint(&e.base);
    let check = e.cli.dir.join("identity_check.py");
    fs::write(&check, IDENTITY_CHECK).unwrap();
    // glibc's `nftw` with FTW_PHYS | FTW_MOUNT (3) stays on the start's
    // device: `src` then holds a changed file in the layer and unchanged
    // ones in the base.
    let walk = e.cli.dir.join("walk");
    fs::write(e.cli.dir.join("walk.c"), NFTW_HARNESS).unwrap();
    let cc = Command::new("cc")
        .arg("-o")
        .arg(&walk)
        .arg(e.cli.dir.join("walk.c"))
        .output()
        .unwrap();
    assert!(cc.status.success(), "{cc:?}");
    let out = e.same(
        &["bash", "-c"],
        &format!(
            r#"set -e
echo new > new.txt
echo more >> README.md
mkdir -p fresh/deeper && echo q > fresh/deeper/q.txt
cp -a src copied
echo more >> src/lib.rs
{walk} src 3 | LC_ALL=C sort
dev() {{ stat -c %d "$1"; }}
[ "$(dev README.md)" = "$(dev docs/guide.md)" ] && [ "$(dev new.txt)" = "$(dev run.sh)" ] \
  && [ "$(dev fresh/deeper/q.txt)" = "$(dev src/main.rs)" ] && echo one-device
[ "$(stat -f -c %i new.txt)" = "$(stat -f -c %i docs/guide.md)" ] \
  && python3 -c 'import os, sys; sys.exit(os.statvfs("new.txt").f_fsid != os.statvfs("run.sh").f_fsid)' \
  && echo one-fsid
find . -xdev -type f -not -path './.git/*' | LC_ALL=C sort
[ "$(find . -xdev | LC_ALL=C sort)" = "$(find . | LC_ALL=C sort)" ] && echo find-xdev-sees-all
[ "$(du -x -s . | cut -f1)" = "$(du -s . | cut -f1)" ] && echo du-x-sees-all
du -x -a . | awk '{{print $2}}' | grep -v '^./.git/' | LC_ALL=C sort
for d in . fresh src; do
  ls -i1 "$d" | while read -r i n; do
    [ "$i" = "$(stat -c %i "$d/$n")" ] || echo "ls -i differs for $d/$n"
  done
done
python3 {check} 3<new.txt
[ "$(stat -c '%d %i' - < new.txt)" = "$(stat -c '%d %i' new.txt)" ] && echo stat-of-stdin-agrees
git status --short
"#,
            check = check.display(),
            walk = walk.display()
        ),
    );
    assert!(out.contains("one-device\none-fsid\n"), "{out}");
    assert!(out.contains("find-xdev-sees-all\ndu-x-sees-all\n"), "{out}");
    assert!(out.contains("./fresh/deeper/q.txt\n./new.txt\n"), "{out}");
    assert!(out.contains(" ok\nstat-of-stdin-agrees\n"), "{out}");
    assert!(out.contains("0 1 main.rs src/main.rs  13\n"), "{out}");
    assert!(
        out.ends_with(" M README.md\n M src/lib.rs\n?? copied/\n?? fresh/\n?? new.txt\n"),
        "{out}"
    );
    e.assert_outcome(
        &["M README.md", "M src/lib.rs", "A new.txt", "A fresh/"],
        &before,
    );
}

/// A walker over glibc's `nftw` (flags from `argv[2]`; `-1`: `ftw`),
/// printing each visit: type flag, level, name, path, the working
/// directory under `FTW_CHDIR`, and a file's size.
const NFTW_HARNESS: &str = r#"
#define _GNU_SOURCE
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
static int g_flags;
static int cb(const char *p, const struct stat *sb, int flag, struct FTW *f) {
    char cwd[4096] = "";
    if ((g_flags & FTW_CHDIR) && !getcwd(cwd, sizeof cwd)) strcpy(cwd, "?");
    printf("%d %d %s %s %s %lld\n", flag, f->level, p + f->base, p, cwd,
           flag == FTW_F ? (long long)sb->st_size : -1LL);
    if ((g_flags & FTW_ACTIONRETVAL) && strcmp(p + f->base, "skipme") == 0)
        return FTW_SKIP_SUBTREE;
    return 0;
}
static int cb_ftw(const char *p, const struct stat *sb, int flag) {
    printf("ftw %d %s\n", flag, p);
    return 0;
}
int main(int argc, char **argv) {
    g_flags = atoi(argv[2]);
    int r = g_flags < 0 ? ftw(argv[1], cb_ftw, 4) : nftw(argv[1], cb, 4, g_flags);
    printf("r=%d\n", r);
    return 0;
}
"#;

#[test]
fn nftw_and_ftw_walk_the_branch_as_glibc_walks_a_native_copy() {
    if !have("cc", "nftw") {
        return;
    }
    let e = Env::new(false);
    let before = fingerprint(&e.base);
    let tools = tempfile::tempdir().unwrap();
    let src = tools.path().join("walk.c");
    let bin = tools.path().join("walk");
    std::fs::write(&src, NFTW_HARNESS).unwrap();
    let cc = Command::new("cc")
        .arg("-o")
        .arg(&bin)
        .arg(&src)
        .output()
        .unwrap();
    assert!(cc.status.success(), "{cc:?}");
    // Flags: 0, PHYS, DEPTH, PHYS|DEPTH, ACTIONRETVAL, CHDIR,
    // PHYS|CHDIR, PHYS|CHDIR|DEPTH; entries sorted (glibc walks in the
    // disk's order, the shim in the merged listing's).
    let out = e.same(
        &["sh", "-c"],
        &format!(
            r#"set -e
mkdir -p zz/tree/a/b zz/skipme/x
echo 1 > zz/tree/a/f; echo 22 > zz/skipme/x/y
ln -s nowhere zz/tree/dangling; ln -s ../README.md zz/tree/flink
cp README.md zz/; rm src/lib.rs
for f in 0 1 8 9 16 4 5 13; do echo "== $f"; {w} zz $f | LC_ALL=C sort; done
echo "== ftw"; {w} zz -1 | LC_ALL=C sort
echo "== src"; {w} src 0 | LC_ALL=C sort
rm -r zz
"#,
            w = bin.display()
        ),
    );
    assert!(
        out.contains("\n6 2 dangling zz/tree/dangling  -1\n"),
        "{out}"
    );
    assert!(out.contains("\n4 2 flink zz/tree/flink  -1\n"), "{out}");
    assert!(out.contains("\n5 0 zz zz ROOT/zz -1\n"), "{out}");
    assert!(
        !out.contains("lib.rs"),
        "a removed base file was walked: {out}"
    );
    let retval = &out[out.find("== 16\n").unwrap()..out.find("== 4\n").unwrap()];
    assert!(
        retval.contains(" skipme ") && !retval.contains("skipme/x"),
        "FTW_SKIP_SUBTREE: {retval}"
    );
    e.assert_outcome(&["D src/lib.rs"], &before);
}

/// Loads each argument with `dlopen` and calls its `answer()`.
const DLOPEN_HARNESS: &str = r#"
#include <dlfcn.h>
#include <stdio.h>
int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        void *h = dlopen(argv[i], RTLD_NOW);
        int (*f)(void) = h ? (int (*)(void))dlsym(h, "answer") : 0;
        if (f) printf("%s: %d\n", argv[i], f());
        else printf("%s: fails\n", argv[i]);
    }
    return 0;
}
"#;

#[test]
fn dlopen_loads_libraries_built_in_the_branch_and_keeps_the_callers_runpath() {
    if !have("cc", "dlopen") {
        return;
    }
    let e = Env::new(false);
    let before = fingerprint(&e.base);
    // The harness, outside the tree, finds libbare.so only through its
    // own RUNPATH ($ORIGIN/libdir): a dlopen that lost the caller would
    // search the shim's instead.
    let tools = tempfile::tempdir().unwrap();
    let t = tools.path();
    std::fs::create_dir(t.join("libdir")).unwrap();
    std::fs::write(t.join("dl.c"), DLOPEN_HARNESS).unwrap();
    std::fs::write(t.join("bare.c"), "int answer(void) { return 7; }\n").unwrap();
    let cc = |args: &[&str]| {
        let o = Command::new("cc")
            .current_dir(t)
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "{o:?}");
    };
    cc(&["-shared", "-fPIC", "-o", "libdir/libbare.so", "bare.c"]);
    cc(&[
        "-o",
        "dl",
        "dl.c",
        "-Wl,-rpath,$ORIGIN/libdir",
        "-Wl,--enable-new-dtags",
    ]);
    let out = e.same(
        &["sh", "-c"],
        &format!(
            r#"set -e
printf 'int answer(void) {{ return 42; }}\n' > mine.c
cc -shared -fPIC -o libmine.so mine.c
mkdir sub && cp libmine.so sub/
{dl} ./libmine.so sub/libmine.so "$PWD/libmine.so" libbare.so ./nope.so
"#,
            dl = t.join("dl").display()
        ),
    );
    assert_eq!(
        out,
        "./libmine.so: 42\nsub/libmine.so: 42\nROOT/libmine.so: 42\nlibbare.so: 7\n./nope.so: fails\n"
    );
    assert_eq!(fingerprint(&e.base), before, "the base changed");
}

#[test]
fn python_pathlib_tempfile_replace_and_rmtree() {
    if !have("python3", "python") {
        return;
    }
    let e = Env::new(false);
    let before = fingerprint(&e.base);
    let out = e.same(
        &["python3", "-c"],
        r#"
import os, pathlib, shutil, tempfile
root = pathlib.Path(".")
print(sorted(str(p) for p in root.rglob("*")))
pathlib.Path("gen").mkdir()
(pathlib.Path("gen") / "a.txt").write_text("a\n")
with tempfile.NamedTemporaryFile("w", dir="gen", delete=False) as f:
    f.write("tmp\n")
os.replace(f.name, "gen/b.txt")
print(sorted(os.listdir("gen")), open("gen/b.txt").read().strip())
with tempfile.TemporaryDirectory(dir=".") as d:
    pathlib.Path(d, "x").write_text("x")
    print(len(os.listdir(d)))
shutil.rmtree("src")
print(os.path.exists("src"), os.path.isdir("gen"), os.path.realpath("main-link"))
os.chmod("gen/a.txt", 0o600)
print(oct(os.stat("gen/a.txt").st_mode & 0o777))
for dirpath, dirnames, filenames in sorted(os.walk(".")):
    print(dirpath, sorted(dirnames), sorted(filenames))
"#,
    );
    assert!(out.contains("['a.txt', 'b.txt'] tmp"), "{out}");
    e.assert_outcome(&["D src/", "A gen/b.txt"], &before);
}

#[test]
fn git_add_and_commit_in_a_branch_leave_the_base_git_untouched() {
    if !have("git", "git") {
        return;
    }
    let e = Env::new(true);
    let before = fingerprint(&e.base);
    let out = e.same(
        &["sh", "-c"],
        "set -e; echo change >> README.md; echo new > new.txt; git status --short; \
         git add -A; git -c user.email=t@example.com -c user.name=t commit -qm second; \
         git log --format=%s; git status --short; git show --stat --format= HEAD | sort",
    );
    assert!(out.contains("second\ninit\n"), "{out}");
    assert_eq!(
        fingerprint(&e.base),
        before,
        "the base (or its .git) changed"
    );
    let d = e.cli.ok(&["diff", "--branch", "b"]);
    assert!(d.lines().any(|l| l == "A new.txt"), "{d}");
    assert!(d.lines().any(|l| l.starts_with("M .git/")), "{d}");
}

#[test]
fn make_and_cc_build_a_c_project_in_the_branch() {
    if !have("make", "make_and_cc") || !have("cc", "make_and_cc") {
        return;
    }
    let e = Env::new(false);
    let before = fingerprint(&e.base);
    let out = e.same(
        &["sh", "-c"],
        r#"set -e
mkdir -p csrc
cat > csrc/greet.h <<'END'
const char *greet(void);
END
cat > csrc/greet.c <<'END'
#include "greet.h"
const char *greet(void) { return "hello from the branch"; }
END
cat > csrc/main.c <<'END'
#include <stdio.h>
#include "greet.h"
int main(void) { puts(greet()); return 0; }
END
cat > csrc/Makefile <<'END'
app: main.o greet.o
	$(CC) -o $@ main.o greet.o
%.o: %.c greet.h
	$(CC) -c -o $@ $<
clean:
	rm -f app *.o
END
make -s -C csrc
./csrc/app
make -s -C csrc | wc -l
touch csrc/greet.h
make -C csrc | grep -c '^cc' || true
make -s -C csrc clean
ls csrc | LC_ALL=C sort
"#,
    );
    assert!(out.starts_with("hello from the branch\n0\n3\n"), "{out}");
    e.assert_outcome(&["A csrc/", "A csrc/Makefile", "A csrc/main.c"], &before);
}

#[test]
fn tar_extracts_and_creates_archives_in_the_branch() {
    if !have("tar", "tar") {
        return;
    }
    let e = Env::new(false);
    let before = fingerprint(&e.base);
    // The archive is made outside both trees, from a copy of `src`; the
    // one made inside is removed at the end (it records mtimes, which
    // differ between the two runs).
    let archive = e.cli.dir.join("src.tar");
    let o = Command::new("tar")
        .arg("-cf")
        .arg(&archive)
        .arg("-C")
        .arg(&e.native)
        .arg("src")
        .output()
        .unwrap();
    assert!(o.status.success(), "tar -c: {o:?}");
    let script = format!(
        "set -e; mkdir unpacked; tar -xf {a} -C unpacked; tar -xf {a} --overwrite; \
         tar -cf mine.tar src unpacked; tar -tf mine.tar | LC_ALL=C sort; \
         rm -rf unpacked; tar -xf mine.tar unpacked; ls -R unpacked | LC_ALL=C sort; \
         tar -cf - src | tar -tvf - | wc -l; rm mine.tar",
        a = archive.display()
    );
    let out = e.same(&["sh", "-c"], &script);
    assert!(out.contains("unpacked/src/main.rs"), "{out}");
    e.assert_outcome(&["A unpacked/", "A unpacked/src/nested/deep.txt"], &before);
}

#[test]
fn sqlite3_writes_a_database_in_the_branch() {
    if !have("sqlite3", "sqlite3") {
        return;
    }
    let e = Env::new(false);
    let before = fingerprint(&e.base);
    let out = e.same(
        &["sh", "-c"],
        "set -e; sqlite3 app.db 'create table t(a integer, b text);' \
         'begin;' 'insert into t values (1, \"one\");' 'insert into t values (2, \"two\");' 'commit;'; \
         sqlite3 app.db 'pragma journal_mode=wal;' 'insert into t values (3, \"three\");'; \
         sqlite3 app.db 'pragma integrity_check;' 'select a, b from t order by a;'; \
         ls app.db*",
    );
    assert_eq!(out, "wal\nok\n1|one\n2|two\n3|three\napp.db\n", "{out}");
    e.assert_diff_has(&["A app.db"]);
    assert_eq!(fingerprint(&e.base), before, "the base changed");
}

fn mkfifo(p: &Path) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
}

/// Blocks until process `pid` (not our child) has exited, or `limit`.
fn wait_for_exit(pid: i32, limit: std::time::Duration) -> bool {
    // SAFETY: pidfd_open takes a pid and flags.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    if fd < 0 {
        return true; // already gone
    }
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd; then closing our pidfd.
    let n = unsafe { libc::poll(&mut p, 1, limit.as_millis() as i32) };
    // SAFETY: our fd.
    unsafe { libc::close(fd) };
    n == 1
}

#[test]
fn a_private_daemon_serves_background_processes_then_stops_when_the_last_leaves() {
    if !have("sh", "private_daemon_lifetime") {
        return;
    }
    let e = Env::new(false);
    let before = fingerprint(&e.base);
    let (go, done) = (e.cli.dir.join("go.fifo"), e.cli.dir.join("done.fifo"));
    mkfifo(&go);
    mkfifo(&done);
    // The program leaves a background process that has not touched the
    // branch yet, and exits.
    let script = format!(
        "(read x < {go}; echo late > late.txt; echo ok > {done}) </dev/null >/dev/null 2>&1 &",
        go = go.display(),
        done = done.display()
    );
    let o = e.run(&["sh", "-c", &script]);
    assert!(o.status.success(), "{o:?}");
    // Its daemon still serves (the background process is its client).
    let st: serde_json::Value = serde_json::from_str(&e.cli.ok(&["status", "--json"])).unwrap();
    assert_eq!(st["via"], "daemon", "{st}");
    let pid = st["daemon"]["pid"].as_i64().unwrap() as i32;
    // Let it go on: it writes in the branch, then says so and exits.
    fs::write(&go, "go\n").unwrap();
    assert_eq!(fs::read_to_string(&done).unwrap(), "ok\n");
    assert!(
        wait_for_exit(pid, std::time::Duration::from_secs(60)),
        "the private daemon did not stop after its last client"
    );
    assert!(
        !e.cli.dir.join("no-daemon.sock").exists(),
        "its socket is left"
    );
    assert_eq!(
        e.cli.ok(&["fs", "cat", "--branch", "b", "late.txt"]),
        "late\n"
    );
    assert_eq!(fingerprint(&e.base), before, "the base changed");
}

/// The daemon's connected clients now (this status request's included).
fn daemon_clients(e: &Env) -> u64 {
    let st: serde_json::Value = serde_json::from_str(&e.cli.ok(&["status", "--json"])).unwrap();
    assert_eq!(st["via"], "daemon", "{st}");
    st["daemon"]["clients"].as_u64().unwrap()
}

#[test]
fn processes_that_only_read_never_connect_to_the_daemon_and_writers_still_do() {
    if !have("find", "readers_never_connect") {
        return;
    }
    let e = Env::new(false);
    let before = fingerprint(&e.base);
    let hold = e.cli.dir.join("hold.fifo");
    mkfifo(&hold);
    let out = e.cli.dir.join("read.out");
    // Readers of the branch (`ls`, `find`), then a `cat` that reads a
    // branch file and blocks opening the fifo (outside the branch), then
    // a write.
    let script = format!(
        "ls -R >/dev/null && find . -type f >/dev/null && cat README.md {hold} > {out} && \
         echo changed > README.md",
        hold = hold.display(),
        out = out.display()
    );
    let mut run = e.run_command(&["sh", "-c", &script]).spawn().unwrap();
    // Opening the fifo for writing waits for `cat` to open it: it has read
    // README.md by then.
    let w = fs::OpenOptions::new().write(true).open(&hold).unwrap();
    let clients = daemon_clients(&e);
    drop(w);
    let status = run.wait().unwrap();
    assert!(status.success(), "{status:?}");
    // `agentfs run`'s own connection and this status request: neither the
    // shell, `ls`, `find` nor the blocked `cat` connected.
    assert_eq!(
        clients, 2,
        "a process that only read connected to the daemon"
    );
    assert_eq!(fs::read_to_string(&out).unwrap(), "# project\n");
    // The write went through the daemon, into the branch.
    e.assert_diff_has(&["M README.md"]);
    assert_eq!(
        e.cli.ok(&["fs", "cat", "--branch", "b", "README.md"]),
        "changed\n"
    );
    assert_eq!(fingerprint(&e.base), before, "the base changed");
}

#[test]
fn a_chain_made_stale_by_a_snapshot_during_the_run_is_not_used() {
    if !have("sh", "stale_inherited_chain") {
        return;
    }
    let e = Env::new(false);
    let before = fingerprint(&e.base);
    let go = e.cli.dir.join("go.fifo");
    mkfifo(&go);
    let out = e.cli.dir.join("read.out");
    // A file in the active layer, a snapshot (the test's, while the shell
    // waits: the branch gets a new active layer), then a new version
    // written into the new layer, read back by new processes whose
    // inherited chain is the one from before the snapshot (also with a
    // chain in the environment that is no chain at all).
    let script = format!(
        "echo one > f.txt && read x < {go} && echo two > f.txt && cat f.txt > {out} && \
         AGENTFS_SHIM_CHAIN=nothex cat f.txt >> {out} && sh -c 'cat f.txt' >> {out}",
        go = go.display(),
        out = out.display()
    );
    let mut run = e.run_command(&["sh", "-c", &script]).spawn().unwrap();
    let mut w = fs::OpenOptions::new().write(true).open(&go).unwrap();
    e.cli.ok(&["snapshot", "create", "--branch", "b", "s1"]);
    std::io::Write::write_all(&mut w, b"go\n").unwrap();
    drop(w);
    let status = run.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert_eq!(fs::read_to_string(&out).unwrap(), "two\ntwo\ntwo\n");
    assert_eq!(e.cli.ok(&["fs", "cat", "--branch", "b", "f.txt"]), "two\n");
    assert_eq!(
        e.cli.ok(&["fs", "cat", "--snapshot", "s1", "f.txt"]),
        "one\n"
    );
    assert_eq!(fingerprint(&e.base), before, "the base changed");
}

#[test]
fn a_static_binary_gets_erofs_from_the_safety_net() {
    let Some(busybox) = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
    else {
        skip("static binary", "busybox (busybox-static) is not installed");
        return;
    };
    // The check itself: a dynamic program has an interpreter.
    assert!(has_interpreter(&fs::read("/bin/sh").unwrap()));
    if has_interpreter(&fs::read(busybox).unwrap()) {
        skip(
            "static binary",
            "the installed busybox is dynamic (install busybox-static)",
        );
        return;
    }
    let e = Env::new(false);
    let before = fingerprint(&e.base);
    let o = e.run(&[busybox, "sh", "-c", "echo bypass > README.md"]);
    let err = String::from_utf8_lossy(&o.stderr);
    if err.contains("no read-only safety net") {
        skip("static binary", &format!("no safety net here: {err}"));
        return;
    }
    assert!(!o.status.success(), "the bypassing write succeeded");
    assert!(err.contains("Read-only file system"), "{err}");
    assert_eq!(fingerprint(&e.base), before, "the base changed");
}

#[test]
fn the_exit_status_is_the_programs() {
    let e = Env::new(false);
    assert_eq!(e.run(&["sh", "-c", "exit 7"]).status.code(), Some(7));
    assert_eq!(
        e.run(&["sh", "-c", "kill -TERM $$"]).status.code(),
        Some(128 + 15)
    );
    assert_eq!(e.run(&["true"]).status.code(), Some(0));
}

#[test]
fn the_branch_root_cannot_be_moved_out_or_replaced() {
    let e = Env::new(false);
    let before = fingerprint(&e.base);
    // `mv` falls back to copying on EXDEV: the root must answer EBUSY (as
    // a mountpoint does), or the whole branch would be copied out first.
    let o = e.run(&[
        "sh",
        "-c",
        r#"mv "$PWD" ../moved-out; echo "mv: $?"; [ -e ../moved-out ] && echo copied-out
mkdir ../outside && mv -T ../outside "$PWD"; echo "onto: $?"; ls ../outside >/dev/null && echo kept"#,
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(out, "mv: 1\nonto: 1\nkept\n", "{err}");
    assert!(err.contains("Device or resource busy"), "{err}");
    assert_eq!(fingerprint(&e.base), before, "the base changed");
}

#[test]
fn a_branch_is_never_shown_over_the_store() {
    let e = Env::new(false);
    assert!(e.run(&["true"]).status.success());
    let store = e.cli.dir.join("store");
    for (at, want) in [
        (store.as_path(), "is the store's directory"),
        (e.cli.dir.as_path(), "contains the store's directory"),
        (Path::new("/"), "contains the store's directory"),
    ] {
        let o = e
            .cli
            .cmd()
            .current_dir(&e.base)
            .args(["run", "--branch", "b", "--at"])
            .arg(at)
            .args(["--", "true"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains(want),
            "--at {}: {err}",
            at.display()
        );
    }
}

#[test]
fn forked_children_of_a_threaded_program_write_through_the_shim() {
    if !have("python3", "fork") {
        return;
    }
    let e = Env::new(false);
    let before = fingerprint(&e.base);
    let out = e.same(
        &["python3", "-W", "ignore", "-c"],
        r#"
import os, threading
def busy():
    for i in range(300):
        os.stat("README.md")
        os.listdir("src")
t = threading.Thread(target=busy); t.start()
pids = []
for i in range(4):
    pid = os.fork()
    if pid == 0:
        with open(f"child{i}.txt", "w") as f:
            f.write(str(i))
        os._exit(0)
    pids.append(pid)
for p in pids:
    os.waitpid(p, 0)
t.join()
print(sorted(n for n in os.listdir(".") if n.startswith("child")))
"#,
    );
    assert!(out.contains("child3.txt"), "{out}");
    e.assert_diff_has(&["A child0.txt", "A child3.txt"]);
    assert_eq!(fingerprint(&e.base), before, "the base changed");
}

#[test]
fn without_a_daemon_branch_paths_fail_with_eio_never_the_base() {
    let e = Env::new(false);
    let before = fingerprint(&e.base);
    let shim = agentfs_testfs::built("libagentfs_shim.so");
    let o = Command::new("sh")
        .args([
            "-c",
            "cat README.md; echo x > new.txt; echo x >> README.md; \
             cat /etc/hostname >/dev/null && echo outside-ok",
        ])
        .current_dir(&e.base)
        .env("LD_PRELOAD", &shim)
        .env("AGENTFS_SHIM_SOCKET", e.cli.dir.join("nobody-listens.sock"))
        .env("AGENTFS_SHIM_BRANCH", "b")
        .env("AGENTFS_SHIM_ROOT", &e.base)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.matches("Input/output error").count(), 3, "{err}");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "outside-ok\n");
    assert_eq!(fingerprint(&e.base), before, "the base changed");
}

/// A watcher program started under `agentfs run` in the branch `b` of
/// `e`, its stdout and stderr read line by line on threads.
struct Watcher {
    child: std::process::Child,
    pid: i32,
    out: std::sync::mpsc::Receiver<String>,
    err: std::sync::mpsc::Receiver<String>,
}

impl Watcher {
    /// Runs `sh -c 'echo $$ >&2; exec <script>'` in the branch, with `env`,
    /// and waits for inotifywait's "Watches established".
    fn start(e: &Env, script: &str, env: &[(&str, &str)]) -> Self {
        use std::io::{BufRead, BufReader};
        use std::process::Stdio;
        let mut child = e
            .cli
            .cmd()
            .current_dir(&e.base)
            .envs(env.iter().copied())
            .args(["run", "--create", "--branch", "b", "--", "sh", "-c"])
            .arg(format!("echo $$ >&2; exec {script}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = |r: Box<dyn std::io::Read + Send>| {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                for l in BufReader::new(r).lines() {
                    if tx.send(l.unwrap()).is_err() {
                        break;
                    }
                }
            });
            rx
        };
        let err = lines(Box::new(child.stderr.take().unwrap()));
        let out = lines(Box::new(child.stdout.take().unwrap()));
        let mut w = Self {
            child,
            pid: 0,
            out,
            err,
        };
        w.pid = loop {
            if let Ok(p) = Self::next(&w.err, "its pid").trim().parse() {
                break p;
            }
        };
        w.wait_for("Watches established");
        w
    }

    fn next(rx: &std::sync::mpsc::Receiver<String>, what: &str) -> String {
        rx.recv_timeout(std::time::Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("the watcher said nothing for a minute ({what})"))
    }

    /// The next line on its stdout.
    fn event(&self, what: &str) -> String {
        Self::next(&self.out, what)
    }

    /// Reads its stderr up to a line containing `what`.
    fn wait_for(&self, what: &str) {
        while !Self::next(&self.err, what).contains(what) {}
    }

    /// Stops it (SIGTERM to the program, by the pid it printed).
    fn stop(mut self) {
        // SAFETY: signalling the process we started, by the pid it printed.
        unsafe { libc::kill(self.pid, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// Runs `script` in branch `branch` (created if need be) and requires success.
fn run_in(e: &Env, branch: &str, script: &str) {
    let o = e
        .cli
        .cmd()
        .current_dir(&e.base)
        .args([
            "run", "--create", "--branch", branch, "--", "sh", "-c", script,
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
}

/// The environment with the inotify watch provider configured.
fn env_with_inotify() -> Env {
    let e = Env::new(false);
    let mut cfg = fs::read_to_string(&e.cli.config).unwrap();
    cfg.push_str("\n[[watch]]\nplugin = \"inotify\"\n");
    fs::write(&e.cli.config, cfg).unwrap();
    e
}

#[test]
fn inotifywait_in_a_branch_sees_other_processes_writes_there_only() {
    if !have("inotifywait", "inotify") {
        return;
    }
    let e = env_with_inotify();
    let before = fingerprint(&e.base);
    let w = Watcher::start(
        &e,
        "inotifywait -m -e create,modify,delete --format '%e %f' docs",
        &[],
    );
    // Another branch first: its change must not reach this watcher.
    run_in(&e, "c", "echo x > docs/other.txt");
    run_in(&e, "b", "echo x > docs/mine.txt; rm docs/mine.txt");
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.starts_with("DELETE")) {
        seen.push(w.event("events"));
    }
    w.stop();
    assert_eq!(
        seen,
        ["CREATE mine.txt", "MODIFY mine.txt", "DELETE mine.txt"],
        "events of another branch leaked, or some are missing"
    );
    assert_eq!(fingerprint(&e.base), before, "the base changed");
}

/// `agentfs serve --init` for the environment's socket, ready when this
/// returns; stopped (SIGTERM, waited for) by [`stop_daemon`].
fn start_daemon(e: &Env) -> std::process::Child {
    use std::io::{BufRead, BufReader};
    let mut d = e
        .cli
        .cmd()
        .args(["serve", "--init"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(d.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("ready on"), "{line}");
    d
}

fn stop_daemon(mut d: std::process::Child) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(d.id() as i32, libc::SIGTERM) };
    assert!(d.wait().unwrap().success());
}

#[test]
fn inotifywait_survives_a_daemon_restart() {
    if !have("inotifywait", "inotify restart") {
        return;
    }
    let e = env_with_inotify();
    let before = fingerprint(&e.base);
    let daemon = start_daemon(&e);
    let w = Watcher::start(
        &e,
        "inotifywait -m -e create --format '%e %f' docs",
        &[("AGENTFS_SHIM_LOG", "1")],
    );
    run_in(&e, "b", "echo x > docs/before.txt");
    assert_eq!(w.event("first event"), "CREATE before.txt");
    // The daemon goes away and a new one serves the same socket: the
    // watcher's shim registers its watch again, unprompted.
    stop_daemon(daemon);
    let daemon = start_daemon(&e);
    w.wait_for("watches registered again");
    run_in(&e, "b", "echo x > docs/after.txt");
    assert_eq!(w.event("event after the restart"), "CREATE after.txt");
    w.stop();
    stop_daemon(daemon);
    assert_eq!(fingerprint(&e.base), before, "the base changed");
}

/// Each interposed entry point called directly (through `ctypes`, which
/// looks symbols up in the global scope, so the preloaded shim's come
/// first), one row per function with the result the branch must give.
#[test]
fn libc_entry_points_one_by_one_through_ctypes() {
    if !have("python3", "ctypes table") {
        return;
    }
    let e = Env::new(false);
    let before = fingerprint(&e.base);
    let o = e.run(&["python3", "-c", CTYPES_TABLE]);
    let out = String::from_utf8_lossy(&o.stdout).replace(e.base.to_str().unwrap(), "ROOT");
    assert!(
        o.status.success(),
        "{}\n{out}",
        String::from_utf8_lossy(&o.stderr)
    );
    let want = "\
mkstemp: ok
mkdtemp: dir
fopen: hello
freopen: G
scandir: 10
opendir: 10
renameat2 noreplace: EEXIST
link: EXDEV
mkfifo: EPERM
mknod: EPERM
truncate: 0 1
utimensat: 2000
chown same: 0
chown other: EPERM
access W_OK: 0
statfs: 0
realpath: ROOT/README.md
chdir+getcwd: ROOT/src
readlink: src/main.rs
symlink: x
unlink: 0 False
rmdir: 0 False
creat: 0
open O_EXCL existing: EEXIST
stat missing: ENOENT
glob new: gl/a.txt gl/b.txt
glob absolute: ROOT/gl/a.txt
glob removed: no match (3)
";
    assert_eq!(out, want);
    assert_eq!(fingerprint(&e.base), before, "the base changed");
}

/// A directory only the base holds is read through libc's own stream;
/// changed while it is listed and rewound, it lists the branch's names.
/// The shim's own descriptors (the layer roots' fds) closed behind its
/// back by a raw syscall leave lookups working.
#[test]
fn a_rewound_stream_and_descriptors_closed_behind_the_shims_back() {
    if !have("python3", "rewound stream") {
        return;
    }
    let e = Env::new(false);
    let before = fingerprint(&e.base);
    let out = e.same(&["python3", "-c"], REWIND_AND_RAW_CLOSE);
    assert_eq!(
        out,
        "listed: ['guide.md'] -> ['new.md']\n\
         lstat: 24 14 5\n\
         after raw close_range: 24 14 5 ['lib.rs', 'main.rs', 'nested']\n"
    );
    e.assert_outcome(
        &["A docs/new.md", "D docs/guide.md", "M src/main.rs"],
        &before,
    );
}

/// The shim remembers the directory of a thread's last lookups: a
/// directory fd number reused for another directory, and a working
/// directory that moved, are looked up in the new one (a name a layer
/// holds in the old one is not found there).
#[test]
fn a_reused_directory_fd_and_a_moved_working_directory_look_in_the_new_one() {
    if !have("python3", "reused fd") {
        return;
    }
    let e = Env::new(false);
    let before = fingerprint(&e.base);
    let out = e.same(&["python3", "-c"], REUSED_FD_AND_MOVED_CWD);
    assert_eq!(
        out,
        "fd reused: True 24 ENOENT 6\n\
         cwd moved: 24 ENOENT 6\n"
    );
    e.assert_outcome(&["M src/main.rs"], &before);
}

/// A stream `opendir` makes on a merged directory opens the directory's
/// fd only when the program asks for it (`dirfd`): that fd then works
/// for `*at()` calls, `fdopendir` of a copy and `fchdir`, it stays the
/// stream's, and a stream closed without asking closes nothing.
#[test]
fn dirfd_of_a_merged_directorys_stream_works_as_natively() {
    if !have("python3", "dirfd of a merged stream") {
        return;
    }
    let e = Env::new(false);
    let before = fingerprint(&e.base);
    let out = e.same(&["python3", "-c"], DIRFD_OF_MERGED_STREAM);
    assert_eq!(
        out,
        "dirfd: True 24 ['lib.rs', 'main.rs', 'nested']\n\
         fchdir: src 24\n\
         again: True 0\n\
         closed unasked: 0\n"
    );
    e.assert_outcome(&["M src/main.rs"], &before);
}

const DIRFD_OF_MERGED_STREAM: &str = r#"
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
libc.opendir.restype = ctypes.c_void_p
libc.opendir.argtypes = [ctypes.c_char_p]
libc.dirfd.argtypes = [ctypes.c_void_p]
libc.closedir.argtypes = [ctypes.c_void_p]
with open("src/main.rs", "a") as f:
    f.write("// changed\n")
d = libc.opendir(b"src")
fd = libc.dirfd(d)
print("dirfd:", fd >= 0, os.lstat("main.rs", dir_fd=fd).st_size, sorted(os.listdir(fd)))
os.fchdir(fd)
print("fchdir:", os.path.basename(os.getcwd()), os.path.getsize("main.rs"))
os.chdir("..")
print("again:", libc.dirfd(d) == fd, libc.closedir(d))
print("closed unasked:", libc.closedir(libc.opendir(b"src")))
"#;

const REUSED_FD_AND_MOVED_CWD: &str = r#"
import os
with open("src/main.rs", "a") as f:
    f.write("// changed\n")
def size(name, **kw):
    try:
        return str(os.lstat(name, **kw).st_size)
    except FileNotFoundError:
        return "ENOENT"
a = os.open("src", os.O_RDONLY | os.O_DIRECTORY)
first = size("main.rs", dir_fd=a)
os.close(a)
b = os.open("docs", os.O_RDONLY | os.O_DIRECTORY)
print("fd reused:", a == b, first, size("main.rs", dir_fd=b), size("guide.md", dir_fd=b))
os.close(b)
os.chdir("src")
here = size("main.rs")
os.chdir("../docs")
print("cwd moved:", here, size("main.rs"), size("guide.md"))
"#;

const REWIND_AND_RAW_CLOSE: &str = r#"
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
libc.opendir.restype = ctypes.c_void_p
libc.opendir.argtypes = [ctypes.c_char_p]
libc.readdir.restype = ctypes.c_void_p
libc.readdir.argtypes = [ctypes.c_void_p]
libc.rewinddir.argtypes = [ctypes.c_void_p]
libc.closedir.argtypes = [ctypes.c_void_p]
class Dirent(ctypes.Structure):
    _fields_ = [("ino", ctypes.c_uint64), ("off", ctypes.c_int64),
                ("reclen", ctypes.c_ushort), ("type", ctypes.c_ubyte),
                ("name", ctypes.c_char * 256)]
def names(d):
    out = []
    while True:
        p = libc.readdir(d)
        if not p:
            return sorted(n for n in out if n not in (".", ".."))
        out.append(ctypes.cast(p, ctypes.POINTER(Dirent)).contents.name.decode())
d = libc.opendir(b"docs")
first = names(d)
open("docs/new.md", "w").close()
os.unlink("docs/guide.md")
libc.rewinddir(d)
second = names(d)
libc.closedir(d)
print("listed:", first, "->", second)
# A file in the layer, a base file of a merged directory, a base file.
with open("src/main.rs", "a") as f:
    f.write("// changed\n")
sizes = lambda: " ".join(str(os.lstat(p).st_size) for p in ("src/main.rs", "src/lib.rs", "src/nested/deep.txt"))
print("lstat:", sizes())
SYS_close_range = 436
if libc.syscall(SYS_close_range, 3, 0x7fffffff, 0) != 0:
    for fd in range(3, 65536):
        try:
            os.close(fd)
        except OSError:
            pass
print("after raw close_range:", sizes(), sorted(os.listdir("src")))
"#;

const CTYPES_TABLE: &str = r#"
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
def err(r):
    return errno.errorcode[ctypes.get_errno()] if r == -1 else str(r)
c = lambda s: s.encode()
def row(name, value):
    print(f"{name}: {value}")
for f in ("mkstemp", "mkdtemp", "fopen", "freopen", "realpath", "getcwd"):
    getattr(libc, f).restype = ctypes.c_void_p
libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.freopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p]
for f in ("fputs", "fclose", "fgets"):
    getattr(libc, f).argtypes = [ctypes.c_char_p, ctypes.c_void_p] if f == "fputs" else None
libc.fclose.argtypes = [ctypes.c_void_p]
libc.fgets.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_void_p]
libc.fgets.restype = ctypes.c_char_p
libc.opendir.restype = ctypes.c_void_p
libc.opendir.argtypes = [ctypes.c_char_p]
libc.readdir.restype = ctypes.c_void_p
libc.readdir.argtypes = [ctypes.c_void_p]
libc.closedir.argtypes = [ctypes.c_void_p]
libc.realpath.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.getcwd.argtypes = [ctypes.c_char_p, ctypes.c_size_t]

t = ctypes.create_string_buffer(b"tmpXXXXXX")
fd = libc.mkstemp(t)
row("mkstemp", "ok" if fd >= 0 and os.path.isfile(t.value.decode()) else err(fd))
os.close(fd); os.unlink(t.value.decode())
d = ctypes.create_string_buffer(b"dirXXXXXX")
libc.mkdtemp(d)
row("mkdtemp", "dir" if os.path.isdir(d.value.decode()) else "missing")
os.rmdir(d.value.decode())
fp = libc.fopen(c("f.txt"), c("w")); libc.fputs(c("hello\n"), fp); libc.fclose(fp)
fp = libc.fopen(c("f.txt"), c("r")); buf = ctypes.create_string_buffer(64)
libc.fgets(buf, 64, fp); libc.fclose(fp)
row("fopen", buf.value.decode().strip())
fp = libc.fopen(c("f.txt"), c("r")); fp2 = libc.freopen(c("g.txt"), c("w"), fp)
libc.fputs(c("G"), fp2); libc.fclose(fp2)
row("freopen", open("g.txt").read())
names = ctypes.POINTER(ctypes.c_void_p)()
row("scandir", libc.scandir(c("."), ctypes.byref(names), None, None))
dp = libc.opendir(c(".")); n = 0
while libc.readdir(dp):
    n += 1
libc.closedir(dp)
row("opendir", n)
row("renameat2 noreplace", err(libc.renameat2(-100, c("f.txt"), -100, c("g.txt"), 1)))
row("link", err(libc.link(c("f.txt"), c("h.txt"))))
row("mkfifo", err(libc.mkfifo(c("fifo"), 0o600)))
row("mknod", err(libc.mknod(c("node"), 0o10600, 0)))
row("truncate", f'{err(libc.truncate(c("f.txt"), ctypes.c_long(1)))} {os.stat("f.txt").st_size}')
ts = (ctypes.c_long * 4)(1000, 0, 2000, 0)
libc.utimensat(-100, c("f.txt"), ts, 0)
row("utimensat", int(os.stat("f.txt").st_mtime))
row("chown same", err(libc.chown(c("f.txt"), os.getuid(), os.getgid())))
row("chown other", err(libc.chown(c("f.txt"), 12345, 12345)))
row("access W_OK", err(libc.access(c("README.md"), 2)))
sfs = ctypes.create_string_buffer(512)
row("statfs", err(libc.statfs(c("."), sfs)))
out = ctypes.create_string_buffer(4096)
libc.realpath(c("src/../README.md"), out)
row("realpath", out.value.decode())
libc.chdir(c("src")); libc.getcwd(out, 4096)
row("chdir+getcwd", out.value.decode()); libc.chdir(c(".."))
n = libc.readlink(c("main-link"), out, 4096)
row("readlink", out.raw[:n].decode())
libc.symlink(c("x"), c("sl")); n = libc.readlink(c("sl"), out, 4096)
row("symlink", out.raw[:n].decode())
row("unlink", f'{err(libc.unlink(c("g.txt")))} {os.path.exists("g.txt")}')
os.mkdir("empty")
row("rmdir", f'{err(libc.rmdir(c("empty")))} {os.path.exists("empty")}')
fd = libc.creat(c("made.txt"), 0o644)
row("creat", err(libc.close(fd)))
row("open O_EXCL existing", err(libc.open(c("made.txt"), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)))
st = ctypes.create_string_buffer(256)
row("stat missing", err(libc.stat(c("nope"), st)))
class Glob(ctypes.Structure):
    _fields_ = [("pathc", ctypes.c_size_t), ("pathv", ctypes.POINTER(ctypes.c_char_p)),
                ("offs", ctypes.c_size_t), ("flags", ctypes.c_int)] + [
                (f"alt{i}", ctypes.c_void_p) for i in range(5)]
def glob(pattern):
    g = Glob()
    r = libc.glob(c(pattern), 0, None, ctypes.byref(g))
    got = " ".join(g.pathv[i].decode() for i in range(g.pathc)) if r == 0 else f"no match ({r})"
    libc.globfree(ctypes.byref(g))
    return got
os.mkdir("gl"); open("gl/b.txt", "w").close(); open("gl/a.txt", "w").close()
row("glob new", glob("gl/*.txt"))
row("glob absolute", glob(os.getcwd() + "/g?/a.*"))
os.unlink("src/lib.rs")
row("glob removed", glob("src/l*.rs"))
"#;
