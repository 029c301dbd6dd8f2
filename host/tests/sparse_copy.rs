//! Huge and sparse files: a copy-up by copy keeps holes (a multi-GiB
//! sparse base file costs its data blocks, not its length), a full disk
//! fails the copy-up cleanly (ENOSPC, nothing half-written left), and
//! `agentfs fs cat` streams a multi-GiB file instead of reading it whole.

mod common;

use std::{
    fs,
    io::Read,
    os::unix::fs::{FileExt, MetadataExt},
    path::{Path, PathBuf},
    process::Stdio,
};

use agentfs_testfs::{mount_or_skip, FsKind};
use common::{
    daemon::{agentfs_cmd, hostfs_config},
    hostile::LIMIT,
};

const GIB: u64 = 1 << 30;
/// The sparse file's data: (offset, length).
const EXTENTS: &[(u64, u64)] = &[(0, 1 << 20), (2 * GIB, 64 << 10), (3 * GIB - 4096, 4096)];
const SPARSE_LEN: u64 = 3 * GIB;

fn byte_at(off: u64) -> u8 {
    (off % 251) as u8 + 1
}

/// Writes the 3 GiB sparse file; false if this filesystem cannot hold
/// holes (then the test has nothing to check there).
fn make_sparse(p: &Path) -> bool {
    let f = fs::File::create(p).unwrap();
    f.set_len(SPARSE_LEN).unwrap();
    for &(off, len) in EXTENTS {
        let data: Vec<u8> = (off..off + len).map(byte_at).collect();
        f.write_all_at(&data, off).unwrap();
    }
    f.sync_all().unwrap();
    fs::metadata(p).unwrap().blocks() * 512 < 64 << 20
}

/// A store on a small ext4 (no reflink: copy-up copies) over a base on
/// the temp directory's filesystem.
struct Small {
    _fs: agentfs_testfs::TestFs,
    _t: tempfile::TempDir,
    dir: PathBuf,
    config: PathBuf,
    store: PathBuf,
}

impl Small {
    fn new(test: &str, size_mb: u64, base: impl FnOnce(&Path) -> bool) -> Option<Self> {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().to_path_buf();
        fs::create_dir(dir.join("base")).unwrap();
        if !base(&dir.join("base")) {
            agentfs_testfs::skip(test, "the temp directory's filesystem keeps no holes");
            return None;
        }
        let tfs = mount_or_skip(FsKind::Ext4, size_mb, test)?;
        let store = tfs.path().join("store");
        let config = hostfs_config(&dir, &store);
        let s = Self {
            _fs: tfs,
            _t: t,
            dir,
            config,
            store,
        };
        let base = s.dir.join("base");
        s.ok(&["init", "--base", base.to_str().unwrap()]);
        s.ok(&["branch", "create", "b"]);
        Some(s)
    }

    fn cmd(&self, args: &[&str]) -> std::process::Command {
        let mut c = agentfs_cmd(&self.config, &self.dir.join("no-daemon.sock"));
        c.args(args);
        c
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        common::hostile::output_within(self.cmd(args), LIMIT, &format!("{args:?}"))
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "agentfs {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    /// The active layer's copy of `name`, if there is one.
    fn copied(&self, name: &str) -> Option<PathBuf> {
        fn find(dir: &Path, name: &str) -> Option<PathBuf> {
            for e in fs::read_dir(dir).ok()? {
                let e = e.ok()?;
                let p = e.path();
                if e.file_name() == name && e.file_type().ok()?.is_file() {
                    return Some(p);
                }
                if e.file_type().ok()?.is_dir() {
                    if let Some(f) = find(&p, name) {
                        return Some(f);
                    }
                }
            }
            None
        }
        find(&self.store, name)
    }

    /// Names in the work directories (temporary entries of copy-ups).
    fn leftovers(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            for e in fs::read_dir(dir).into_iter().flatten().flatten() {
                let p = e.path();
                if e.file_name() == agentfs_core::WORK_DIR {
                    out.extend(fs::read_dir(&p).unwrap().flatten().map(|e| e.path()));
                } else if e.file_type().unwrap().is_dir() {
                    walk(&p, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.store, &mut out);
        out
    }
}

#[test]
fn copy_up_of_a_sparse_file_keeps_its_holes() {
    let test = "copy_up_of_a_sparse_file_keeps_its_holes";
    // 64 MiB of ext4 could not hold a dense 3 GiB copy.
    let Some(s) = Small::new(test, 64, |b| make_sparse(&b.join("big"))) else {
        return;
    };
    s.ok(&["fs", "chmod", "--branch", "b", "600", "big"]);
    let copy = s.copied("big").expect("copied up");
    let md = fs::metadata(&copy).unwrap();
    assert_eq!(md.len(), SPARSE_LEN);
    assert_eq!(md.mode() & 0o7777, 0o600);
    let data: u64 = EXTENTS.iter().map(|e| e.1).sum();
    assert!(
        md.blocks() * 512 < data + (8 << 20),
        "the copy of a 3 GiB file with {data} bytes of data uses {} bytes",
        md.blocks() * 512
    );
    let f = fs::File::open(&copy).unwrap();
    for &(off, len) in EXTENTS {
        let mut buf = vec![0u8; len as usize];
        f.read_exact_at(&mut buf, off).unwrap();
        assert!(
            buf.iter().zip(off..).all(|(b, o)| *b == byte_at(o)),
            "data at {off}"
        );
        let mut before = [0xffu8; 1];
        if off > 0 {
            f.read_exact_at(&mut before, off - 1).unwrap();
            assert_eq!(before[0], 0, "the hole before {off} reads as zeros");
        }
    }
}

#[test]
fn copy_up_on_a_full_disk_fails_cleanly_with_no_space() {
    let test = "copy_up_on_a_full_disk_fails_cleanly_with_no_space";
    let Some(s) = Small::new(test, 32, |b| {
        agentfs_testfs::write_pattern(&b.join("dense"), 48 << 20);
        true
    }) else {
        return;
    };
    let o = s.run(&["fs", "chmod", "--branch", "b", "600", "dense"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "a 48 MiB copy fitted in 32 MiB?");
    assert!(err.contains("No space left on device"), "{err}");
    assert_eq!(err.matches("os error 28").count(), 1, "{err}");
    assert!(s.copied("dense").is_none(), "no half copy in place");
    assert_eq!(s.leftovers(), Vec::<PathBuf>::new(), "no temporary left");
    assert_eq!(s.ok(&["diff", "--branch", "b"]), "", "nothing changed");
    // Space is back: a small change still works.
    s.ok(&["fs", "write", "--branch", "b", "small", "--data", "ok"]);
}

#[test]
fn fs_cat_streams_a_multi_gib_file() {
    let t = tempfile::tempdir().unwrap();
    let base = t.path().join("base");
    fs::create_dir(&base).unwrap();
    if !make_sparse(&base.join("big")) {
        agentfs_testfs::skip(
            "fs_cat_streams_a_multi_gib_file",
            "no holes in the temp dir",
        );
        return;
    }
    let config = hostfs_config(t.path(), &t.path().join("store"));
    let sock = t.path().join("no-daemon.sock");
    let run = |args: &[&str]| {
        let o = agentfs_cmd(&config, &sock).args(args).output().unwrap();
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    run(&["init", "--base", base.to_str().unwrap()]);
    run(&["branch", "create", "b"]);
    // At most 1 GiB of address space: reading 3 GiB whole cannot fit.
    let mut cmd = agentfs_cmd(&config, &sock);
    cmd.args(["fs", "cat", "--branch", "b", "big"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: setrlimit is async-signal-safe; nothing else runs in the
    // child between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            let lim = libc::rlimit {
                rlim_cur: GIB,
                rlim_max: GIB,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    let mut child = cmd.spawn().unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let (mut total, mut sum) = (0u64, 0u64);
    loop {
        let n = out.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        sum = buf[..n]
            .iter()
            .fold(sum, |s, b| s.wrapping_add(u64::from(*b)));
        total += n as u64;
    }
    let o = child.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "fs cat: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(total, SPARSE_LEN);
    let want = EXTENTS
        .iter()
        .flat_map(|&(off, len)| off..off + len)
        .fold(0u64, |s, o| s.wrapping_add(u64::from(byte_at(o))));
    assert_eq!(sum, want, "content");
}
