//! Unmodified programs in a branch (`agentfs run`, the shim) against the
//! same commands natively, side by side in one run:
//!
//! - `find . -type f -printf '%s %i\n'` (an lstat of every file) and
//!   `git status --short` on a 10,000-file git checkout (200 directories)
//!   whose branch has 100 files changed;
//! - creating and then removing 2,000 small files from a shell loop;
//! - sequential read and write of 1 GiB (`dd`, 1 MiB blocks;
//!   `AGENTFS_BENCH_MIB` changes the size), timed by `dd` itself: the
//!   program's own I/O, without the process starts around it;
//! - `make -j2` of a small C project (20 sources) from clean;
//! - `true`: the fixed cost of `agentfs run` (connect, branch lookup,
//!   spawn with the shim and the sandbox), included in every wall-time
//!   row above.
//!
//! Each row runs `sh -c CMD` natively in a copy of the tree and `agentfs
//! run --branch b -- sh -c CMD` in the base, through a daemon over a hostfs
//! store on the same filesystem. Run:
//! `cargo build --workspace --release && cargo bench -p agentfs-host --bench shim_programs`.

#[path = "../tests/common/daemon.rs"]
#[allow(dead_code)]
mod daemon_proc;

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use daemon_proc::{agentfs_cmd, agentfs_ok, DaemonProc};

struct Setup {
    _t: tempfile::TempDir,
    base: PathBuf,
    native: PathBuf,
    config: PathBuf,
    socket: PathBuf,
    _daemon: DaemonProc,
}

fn sh(dir: &Path, script: &str) {
    let o = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .unwrap();
    assert!(o.status.success(), "{script}: {o:?}");
}

fn setup() -> Setup {
    let t = tempfile::tempdir().unwrap();
    let base = t.path().join("base");
    for d in 0..200 {
        let dir = base.join(format!("d{d:03}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..50 {
            fs::write(dir.join(format!("f{f:02}.txt")), format!("{d} {f}\n")).unwrap();
        }
    }
    let csrc = base.join("csrc");
    fs::create_dir_all(&csrc).unwrap();
    let mut objs = Vec::new();
    let mut main = String::from("#include <stdio.h>\n");
    for i in 0..20 {
        fs::write(
            csrc.join(format!("m{i}.c")),
            format!("int f{i}(int x) {{ return x * {i} + 1; }}\n"),
        )
        .unwrap();
        main.push_str(&format!("int f{i}(int);\n"));
        objs.push(format!("m{i}.o"));
    }
    main.push_str("int main(void) { int s = 0;\n");
    for i in 0..20 {
        main.push_str(&format!("s += f{i}(s);\n"));
    }
    main.push_str("printf(\"%d\\n\", s); return 0; }\n");
    fs::write(csrc.join("main.c"), main).unwrap();
    fs::write(
        csrc.join("Makefile"),
        format!(
            "app: main.o {o}\n\t$(CC) -o $@ main.o {o}\n%.o: %.c\n\t$(CC) -O0 -c -o $@ $<\n\
             clean:\n\trm -f app *.o\n",
            o = objs.join(" ")
        ),
    )
    .unwrap();
    fs::write(base.join("big.bin"), vec![7u8; (mib() as usize) << 20]).unwrap();
    sh(
        &base,
        // No background `gc --auto` racing the copy below.
        "git init -q && git add -A && git -c gc.auto=0 -c user.email=b@example.com -c user.name=b commit -qm base",
    );
    let native = t.path().join("native");
    sh(
        t.path(),
        &format!("cp -a {} {}", base.display(), native.display()),
    );

    let config = daemon_proc::write_config(
        t.path(),
        "hostfs",
        &format!("root = {:?}", t.path().join("store").display().to_string()),
    );
    let socket = t.path().join("agentfs.sock");
    let daemon = DaemonProc::start(
        &config,
        &socket,
        &[],
        &["--init", "--base", base.to_str().unwrap()],
    );
    agentfs_ok(&config, &socket, &["branch", "create", "b"]);
    // 100 files changed in the branch (and the same natively).
    let change = "for d in $(seq -w 0 99); do echo changed >> d0$d/f00.txt; done";
    run_in_branch(&config, &socket, &base, change);
    sh(&native, change);
    Setup {
        _t: t,
        base,
        native,
        config,
        socket,
        _daemon: daemon,
    }
}

/// The size of the sequential I/O rows, in MiB.
fn mib() -> u64 {
    std::env::var("AGENTFS_BENCH_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1024)
}

/// Runs `script` in the branch; returns its stderr.
fn run_in_branch(config: &Path, socket: &Path, base: &Path, script: &str) -> Vec<u8> {
    let o = agentfs_cmd(config, socket)
        .current_dir(base)
        .args(["run", "--branch", "b", "--", "sh", "-c", script])
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("AGENTFS_BENCH_MIB", mib().to_string())
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "in the branch: {script}: {o:?}");
    o.stderr
}

/// Runs `script` natively in `dir`; returns its stderr.
fn run_native(dir: &Path, script: &str) -> Vec<u8> {
    let o = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("AGENTFS_BENCH_MIB", mib().to_string())
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "native: {script}: {o:?}");
    o.stderr
}

/// The time `dd` reports for its copy ("... copied, 0.0453 s, ...").
fn dd_time(stderr: &[u8]) -> Duration {
    let text = String::from_utf8_lossy(stderr);
    text.lines()
        .filter_map(|l| {
            l.split_once(" copied, ")?
                .1
                .split_once(" s")?
                .0
                .parse()
                .ok()
        })
        .next_back()
        .map(Duration::from_secs_f64)
        .unwrap_or_else(|| panic!("no time in dd's report: {text}"))
}

/// How a row is timed.
#[derive(Clone, Copy, PartialEq)]
enum Timed {
    /// The whole command, `agentfs run` included (wall clock).
    Whole,
    /// The copy alone, as `dd` reports it.
    ByDd,
}

const ROWS: &[(&str, &str, Timed)] = &[
    ("true", "true", Timed::Whole),
    (
        "find_lstat_10k",
        "find . -type f -printf '%s %i\\n' > /dev/null",
        Timed::Whole,
    ),
    (
        "git_status_10k",
        "git status --short > /dev/null",
        Timed::Whole,
    ),
    (
        "create_remove_2000",
        "mkdir t && cd t && i=0; while [ $i -lt 2000 ]; do : > f$i; i=$((i+1)); done; \
         cd .. && rm -rf t",
        Timed::Whole,
    ),
    (
        "read_big_bin",
        "dd if=big.bin of=/dev/null bs=1M",
        Timed::ByDd,
    ),
    (
        "write_big_bin",
        "dd if=/dev/zero of=out.bin bs=1M count=$AGENTFS_BENCH_MIB conv=fsync && rm out.bin",
        Timed::ByDd,
    ),
    (
        "make_20_sources",
        "make -s -j2 -C csrc > /dev/null && make -s -C csrc clean",
        Timed::Whole,
    ),
];

fn programs(c: &mut Criterion) {
    let s = setup();
    let mut g = c.benchmark_group("programs");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(8))
        .warm_up_time(Duration::from_secs(1));
    for &(name, script, timed) in ROWS {
        g.throughput(match timed {
            Timed::Whole => Throughput::Elements(1),
            Timed::ByDd => Throughput::Bytes(mib() << 20),
        });
        let mut measure = |id: &str, run: &dyn Fn() -> Vec<u8>| {
            g.bench_function(BenchmarkId::new(name, id), |b| match timed {
                Timed::Whole => b.iter(run),
                Timed::ByDd => b.iter_custom(|iters| (0..iters).map(|_| dd_time(&run())).sum()),
            });
        };
        measure("native", &|| run_native(&s.native, script));
        measure("shim", &|| {
            run_in_branch(&s.config, &s.socket, &s.base, script)
        });
    }
    g.finish();
}

criterion_group!(benches, programs);
criterion_main!(benches);
