//! The real-program harness shared by the shim's tests (`shim.rs`) and the
//! mount's (`mount.rs`): the sample project (optionally a git checkout) with
//! a native copy beside it, the same script run in the branch and natively,
//! and the base's fingerprint.

use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use agentfs_testfs::skip;

use super::{image_dir, CliEnv, TreeImage};

/// Is `tool` on PATH? If not: skip.
pub fn have(tool: &str, test: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()));
    if !found {
        skip(test, &format!("`{tool}` is not installed"));
    }
    found
}

/// The base's image plus every entry's mtime: "unchanged" means both.
pub type Fingerprint = (TreeImage, BTreeMap<String, (i64, i64)>);

/// The fingerprint of the tree at `root`.
pub fn fingerprint(root: &Path) -> Fingerprint {
    let img = image_dir(root);
    let times = img
        .keys()
        .map(|k| {
            let md = fs::symlink_metadata(root.join(k)).unwrap();
            (k.clone(), (md.mtime(), md.mtime_nsec()))
        })
        .collect();
    (img, times)
}

/// Does this ELF file name a program interpreter (is it dynamic)? A static
/// busybox holds the string `ld-linux` for its own applets, so the program
/// headers are read (`PT_INTERP`).
pub fn has_interpreter(elf: &[u8]) -> bool {
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 {
        return true;
    }
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[32..40].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(54), u16_at(56));
    (0..phnum).any(|i| {
        let o = phoff + i * phentsize;
        o + 4 <= elf.len() && u32::from_le_bytes(elf[o..o + 4].try_into().unwrap()) == 3
    })
}

/// The sample project in a [`CliEnv`] (a git checkout with `git`), and a
/// native copy of it (`cp -a`).
pub struct Sample {
    /// The environment (its base is the project).
    pub cli: CliEnv,
    /// The project: the base of the branch.
    pub base: PathBuf,
    /// The native copy.
    pub native: PathBuf,
}

impl Sample {
    /// A fresh project and its copy.
    pub fn new(git: bool) -> Self {
        let cli = CliEnv::new();
        let base = cli.base();
        if git {
            let g = |args: &[&str]| {
                let o = Command::new("git")
                    .args(["-c", "user.email=t@example.com", "-c", "user.name=t"])
                    .args(args)
                    .current_dir(&base)
                    .env("GIT_CONFIG_NOSYSTEM", "1")
                    .env("HOME", &cli.dir)
                    .output()
                    .unwrap();
                assert!(o.status.success(), "git {args:?}: {o:?}");
            };
            g(&["init", "-q"]);
            g(&["add", "-A"]);
            g(&["commit", "-qm", "init"]);
        }
        let native = cli.dir.join("native");
        let o = Command::new("cp")
            .arg("-a")
            .arg(&base)
            .arg(&native)
            .output()
            .unwrap();
        assert!(o.status.success(), "cp -a: {o:?}");
        Self { cli, base, native }
    }

    /// Runs `args` in `dir` (git's system config off, `HOME` here).
    pub fn output_in(&self, dir: &Path, args: &[&str]) -> Output {
        Command::new(args[0])
            .args(&args[1..])
            .current_dir(dir)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("HOME", &self.cli.dir)
            .output()
            .unwrap()
    }

    /// Requires both runs to succeed and print the same, each root shown
    /// as `ROOT`; returns what they printed.
    pub fn same_output(&self, branch: (&Output, &Path), native: &Output, where_: &str) -> String {
        let text = |o: &Output, root: &Path| {
            String::from_utf8_lossy(&o.stdout).replace(root.to_str().unwrap(), "ROOT")
        };
        assert!(
            native.status.success(),
            "native run failed: {}",
            String::from_utf8_lossy(&native.stderr)
        );
        assert!(
            branch.0.status.success(),
            "run {where_} failed: {}\n(stdout: {})",
            String::from_utf8_lossy(&branch.0.stderr),
            String::from_utf8_lossy(&branch.0.stdout)
        );
        let (tb, tn) = (text(branch.0, branch.1), text(native, &self.native));
        assert_eq!(tb, tn, "{where_} and the native copy printed differently");
        tb
    }

    /// `agentfs diff --branch b` has every line of `lines`.
    pub fn assert_diff_has(&self, lines: &[&str]) {
        let d = self.cli.ok(&["diff", "--branch", "b"]);
        for want in lines {
            assert!(d.lines().any(|l| l == *want), "{want} missing in:\n{d}");
        }
    }
}
