//! Overlay checks: the host's core run over the plugin, so a
//! backstore is certified for what AgentFS does with it, not only for its
//! primitives: copy-up then snapshot, branch-from-snapshot isolation, the
//! exact event sequence of the basic mutations, and, for a RAM-backed
//! plugin, that nothing the core stores lands outside its RAM-backed root.
//!
//! The checks use their own instance of the plugin and the store in its
//! metadata directory: an existing store is used as is (the checks add and
//! remove `cf-<pid>-<n>` branches and snapshots over temporary bases);
//! otherwise a store is created for the run and removed after it.

use std::{
    fs,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use agentfs_core::{InitOptions, LockWait, Store};
use agentfs_host::{
    config::PluginEntry,
    loader::{load_backstore, SearchPath},
};
use agentfs_plugin_api::backstore::Capabilities;

use crate::{run_checks, skip_checks, Check, Outcome, Report};

struct Ctx {
    store: Store,
    caps: Capabilities,
    scratch: tempfile::TempDir,
    seq: AtomicU64,
}

impl Ctx {
    fn name(&self) -> String {
        format!(
            "cf-{}-{}",
            std::process::id(),
            self.seq.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// A fresh base directory with a few files.
    fn base(&self) -> Result<PathBuf, String> {
        let b = self.scratch.path().join(self.name());
        let w = |p: &str, d: &[u8]| {
            let f = b.join(p);
            fs::create_dir_all(f.parent().expect("has a parent"))
                .and_then(|()| fs::write(&f, d))
                .map_err(|e| format!("write base {}: {e}", f.display()))
        };
        w("a.txt", b"base a\n")?;
        w("dir/b.txt", b"base b\n")?;
        w("dir/sub/c.txt", &vec![b'c'; 256 << 10])?;
        Ok(b)
    }

    /// Runs `f` with a new branch over a new base; removes the branch and
    /// every snapshot of it afterwards, and checks the base is untouched.
    fn with_branch(&self, f: impl FnOnce(&str, &Path) -> Result<(), String>) -> Result<(), String> {
        let base = self.base()?;
        let before = image(&base)?;
        let name = self.name();
        self.store
            .create_branch(&name, None, Some(&base))
            .map_err(|e| format!("create branch: {e}"))?;
        let r = f(&name, &base);
        let cleanup = self.cleanup(&name);
        let after = image(&base)?;
        r.and(cleanup).and(if before == after {
            Ok(())
        } else {
            Err("the base directory changed".into())
        })
    }

    fn cleanup(&self, branch: &str) -> Result<(), String> {
        let s = &self.store;
        let mut errs = Vec::new();
        let snaps: Vec<_> = s.list_snapshots().map_err(|e| e.to_string())?;
        let forks: Vec<String> = s
            .list_branches()
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|b| {
                b.name == branch
                    || b.from_snapshot
                        .as_ref()
                        .is_some_and(|f| snaps.iter().any(|x| &x.name == f && x.branch == branch))
            })
            .map(|b| b.name)
            .collect();
        for b in forks {
            if let Err(e) = s.delete_branch(&b) {
                errs.push(format!("delete branch {b}: {e}"));
            }
        }
        for sn in snaps.iter().filter(|x| x.branch == branch) {
            if let Err(e) = s.delete_snapshot(&sn.name) {
                errs.push(format!("delete snapshot {}: {e}", sn.name));
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs.join("; "))
        }
    }
}

/// Every file's path and content under `root`.
fn image(root: &Path) -> Result<Vec<(PathBuf, Vec<u8>)>, String> {
    fn walk(root: &Path, rel: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) -> std::io::Result<()> {
        let mut names: Vec<_> = fs::read_dir(root.join(rel))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()?;
        names.sort();
        for n in names {
            let r = rel.join(n);
            let md = fs::symlink_metadata(root.join(&r))?;
            if md.is_dir() {
                out.push((r.clone(), b"/".to_vec()));
                walk(root, &r, out)?;
            } else {
                out.push((r.clone(), fs::read(root.join(&r))?));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(root, Path::new(""), &mut out).map_err(|e| format!("read {}: {e}", root.display()))?;
    Ok(out)
}

fn always(_: &Ctx) -> Option<String> {
    None
}

fn needs_ram(c: &Ctx) -> Option<String> {
    (!c.caps.contains(Capabilities::RAM_BACKED))
        .then(|| "the instance does not declare ram_backed".to_string())
}

fn e<T>(r: Result<T, agentfs_core::CoreError>, what: &str) -> Result<T, String> {
    r.map_err(|err| format!("{what}: {err}"))
}

fn expect_eq<T: PartialEq + std::fmt::Debug>(got: T, want: T, what: &str) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: got {got:?}, expected {want:?}"))
    }
}

const CHECKS: &[Check<Ctx>] = &[
    Check {
        name: "overlay.copy_up_then_snapshot",
        skip_unless: always,
        run: copy_up_then_snapshot,
    },
    Check {
        name: "overlay.branch_from_snapshot_isolation",
        skip_unless: always,
        run: branch_from_snapshot_isolation,
    },
    Check {
        name: "overlay.events.create_write_rename_unlink",
        skip_unless: always,
        run: event_sequence,
    },
    Check {
        name: "overlay.ram_backed.nothing_outside_root",
        skip_unless: needs_ram,
        run: ram_backed_stays_inside,
    },
];

/// Builds a second instance of the plugin, opens (or creates) its store,
/// and runs the overlay checks.
pub(crate) fn run_all(report: &mut Report, entry: &PluginEntry, search: &SearchPath) {
    // `overlay.store.cleanup` is reported on every path, so the list of
    // checks a report shows does not depend on how the run went.
    let skip_all = |report: &mut Report, why: String| {
        skip_checks(report, CHECKS, &why);
        report.push(CLEANUP, Outcome::Skipped(why), Default::default());
    };
    let platforms = report
        .plugin
        .as_ref()
        .map(|p| p.platforms.clone())
        .unwrap_or_default();
    if platforms != "any" && platforms != std::env::consts::OS {
        return skip_all(
            report,
            format!(
                "plugin is for {platforms}, this is {}",
                std::env::consts::OS
            ),
        );
    }
    let b = match load_backstore(entry, search) {
        Ok(b) => b,
        Err(err) => {
            return skip_all(
                report,
                format!("the backstore could not be constructed: {err}"),
            )
        }
    };
    let caps = b.capabilities();
    let created = match Store::exists(&b) {
        Ok(exists) => !exists,
        Err(err) => {
            report.push(
                "overlay.store",
                Outcome::Failed(format!("looking for a store: {err}")),
                Default::default(),
            );
            return skip_all(report, "no store".into());
        }
    };
    let opened = if created {
        Store::init(b, InitOptions::default(), LockWait::Block)
    } else {
        Store::open(b, LockWait::Block)
    };
    let store = match opened {
        Ok(s) => {
            report.push("overlay.store", Outcome::Passed, Default::default());
            s
        }
        Err(err) => {
            report.push(
                "overlay.store",
                Outcome::Failed(format!("opening the store: {err}")),
                Default::default(),
            );
            return skip_all(report, "the store could not be opened".into());
        }
    };
    let scratch = match tempfile::Builder::new()
        .prefix("agentfs-cf-base-")
        .tempdir()
    {
        Ok(t) => t,
        Err(err) => {
            report.push(
                "overlay.store",
                Outcome::Failed(format!("temporary base directory: {err}")),
                Default::default(),
            );
            return skip_all(report, "no scratch directory".into());
        }
    };
    let ctx = Ctx {
        store,
        caps,
        scratch,
        seq: AtomicU64::new(0),
    };
    run_checks(report, CHECKS, &ctx);
    let t = std::time::Instant::now();
    let cleanup = if !created {
        Outcome::Skipped("the store existed before the checks and is left as it was".into())
    } else {
        match ctx.store.destroy() {
            Ok(_backstore) => Outcome::Passed,
            Err(err) => Outcome::Failed(format!("removing the store made for the checks: {err}")),
        }
    };
    report.push(CLEANUP, cleanup, t.elapsed());
}

/// The check that the store made for the checks is removed afterwards.
const CLEANUP: &str = "overlay.store.cleanup";

fn copy_up_then_snapshot(c: &Ctx) -> Result<(), String> {
    c.with_branch(|b, _| {
        let s = &c.store;
        let t = s.branch(b);
        // Copy-up of a lower file (in place, keeping the untouched bytes).
        e(
            t.write_at("dir/sub/c.txt", 0, b"XY"),
            "write into a base file",
        )?;
        e(t.write_file("a.txt", b"branch a\n"), "replace a base file")?;
        e(t.unlink("dir/b.txt"), "delete a base file")?;
        let mut want_c = vec![b'c'; 256 << 10];
        want_c[..2].copy_from_slice(b"XY");
        expect_eq(
            e(t.read_file("dir/sub/c.txt"), "read")? == want_c,
            true,
            "copied-up content",
        )?;
        let snap = c.name();
        e(s.create_snapshot(b, Some(&snap)), "snapshot")?;
        // Later changes, including a second copy-up of the same file.
        e(t.write_at("dir/sub/c.txt", 2, b"Z"), "write after snapshot")?;
        e(t.write_file("a.txt", b"later\n"), "write after snapshot")?;
        e(
            t.write_file("dir/b.txt", b"back\n"),
            "re-create after snapshot",
        )?;
        let v = s.snapshot(&snap);
        expect_eq(
            e(v.read_file("dir/sub/c.txt"), "read snapshot")? == want_c,
            true,
            "snapshot content of the copied-up file after later writes",
        )?;
        expect_eq(
            e(v.read_file("a.txt"), "read snapshot")?,
            b"branch a\n".to_vec(),
            "snapshot a.txt",
        )?;
        expect_eq(
            e(v.exists("dir/b.txt"), "stat snapshot")?,
            false,
            "snapshot keeps the deletion",
        )?;
        want_c[2] = b'Z';
        expect_eq(
            e(t.read_file("dir/sub/c.txt"), "read")? == want_c,
            true,
            "branch content",
        )?;
        expect_eq(
            e(t.read_file("dir/b.txt"), "read")?,
            b"back\n".to_vec(),
            "branch dir/b.txt",
        )
    })
}

fn branch_from_snapshot_isolation(c: &Ctx) -> Result<(), String> {
    c.with_branch(|b, _| {
        let s = &c.store;
        let t = s.branch(b);
        e(t.write_file("a.txt", b"v1\n"), "write")?;
        let snap = c.name();
        e(s.create_snapshot(b, Some(&snap)), "snapshot")?;
        let fork = c.name();
        e(
            s.create_branch(&fork, Some(&snap), None),
            "branch from snapshot",
        )?;
        let f = s.branch(&fork);
        expect_eq(
            e(f.read_file("a.txt"), "read fork")?,
            b"v1\n".to_vec(),
            "fork starts at the snapshot",
        )?;
        e(f.write_file("a.txt", b"fork\n"), "write fork")?;
        e(f.remove_all("dir"), "delete in fork")?;
        e(t.write_file("a.txt", b"origin\n"), "write origin")?;
        e(t.write_file("only-origin", b"o"), "create in origin")?;
        expect_eq(
            e(t.read_file("a.txt"), "read")?,
            b"origin\n".to_vec(),
            "origin a.txt",
        )?;
        expect_eq(e(t.exists("dir/b.txt"), "stat")?, true, "origin keeps dir/")?;
        expect_eq(
            e(f.read_file("a.txt"), "read")?,
            b"fork\n".to_vec(),
            "fork a.txt",
        )?;
        expect_eq(
            e(f.exists("only-origin"), "stat")?,
            false,
            "origin's file in the fork",
        )?;
        let v = s.snapshot(&snap);
        expect_eq(
            e(v.read_file("a.txt"), "read")?,
            b"v1\n".to_vec(),
            "snapshot a.txt",
        )?;
        expect_eq(
            e(v.exists("dir/b.txt"), "stat")?,
            true,
            "snapshot keeps dir/",
        )?;
        expect_eq(
            e(v.exists("only-origin"), "stat")?,
            false,
            "origin's file in the snapshot",
        )
    })
}

fn event_sequence(c: &Ctx) -> Result<(), String> {
    c.with_branch(|b, _| {
        let s = &c.store;
        let t = s.branch(b);
        let sub = s.subscribe();
        let r = (|| {
            e(t.create("new.txt", 0o644), "create")?;
            e(t.write_file("new.txt", b"hello"), "write")?;
            e(t.write_at("a.txt", 0, b"A"), "write into a base file")?;
            e(t.rename("new.txt", "dir/moved.txt"), "rename")?;
            e(t.rename("dir", "renamed"), "rename a base directory")?;
            e(t.unlink("renamed/moved.txt"), "unlink")?;
            e(t.unlink("a.txt"), "unlink a base file")
        })();
        let got: Vec<String> = sub
            .events
            .try_iter()
            .map(|ev| {
                if ev.branch == b {
                    ev.summary()
                } else {
                    format!("(other branch {}) {}", ev.branch, ev.summary())
                }
            })
            .collect();
        s.unsubscribe(sub.id);
        r?;
        expect_eq(
            got,
            [
                "created new.txt",
                "modified new.txt",
                "modified a.txt",
                "renamed new.txt -> dir/moved.txt",
                "renamed dir/ -> renamed/",
                "removed renamed/moved.txt",
                "removed a.txt",
            ]
            .map(String::from)
            .to_vec(),
            "events",
        )
    })
}

/// One line of `/proc/self/mountinfo`: where, what type, from what.
#[cfg(target_os = "linux")]
#[derive(Debug, Clone)]
struct Mount {
    point: PathBuf,
    fstype: String,
    source: String,
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
#[cfg(target_os = "linux")]
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(target_os = "linux")]
fn mounts() -> Result<Vec<Mount>, String> {
    let info = fs::read_to_string("/proc/self/mountinfo").map_err(|e| format!("mountinfo: {e}"))?;
    Ok(info
        .lines()
        .filter_map(|line| {
            let parts: Vec<&str> = line.split(' ').collect();
            let sep = parts.iter().position(|x| *x == "-")?;
            Some(Mount {
                point: PathBuf::from(unescape(parts.get(4)?)),
                fstype: parts.get(sep + 1)?.to_string(),
                source: unescape(parts.get(sep + 2)?),
            })
        })
        .collect())
}

/// The mount holding canonical path `p` (the last, longest match wins, as
/// later mounts cover earlier ones).
#[cfg(target_os = "linux")]
fn mount_of(all: &[Mount], p: &Path) -> Result<Mount, String> {
    let mut best: Option<&Mount> = None;
    for m in all {
        if p.starts_with(&m.point)
            && best.is_none_or(|b| m.point.as_os_str().len() >= b.point.as_os_str().len())
        {
            best = Some(m);
        }
    }
    best.cloned()
        .ok_or_else(|| format!("no mount holds {}", p.display()))
}

/// Checks that the filesystem holding `root` lives in RAM: tmpfs or ramfs,
/// or a loop device whose backing file is on tmpfs or ramfs.
#[cfg(target_os = "linux")]
fn ram_device(root: &Path) -> Result<(), String> {
    let all = mounts()?;
    let canon = fs::canonicalize(root).map_err(|e| format!("{}: {e}", root.display()))?;
    let m = mount_of(&all, &canon)?;
    if m.fstype == "tmpfs" || m.fstype == "ramfs" {
        return Ok(());
    }
    let dev = m.source.strip_prefix("/dev/").unwrap_or("");
    if dev.starts_with("loop") {
        let backing = format!("/sys/block/{dev}/loop/backing_file");
        let file = fs::read_to_string(&backing).map_err(|e| format!("{backing}: {e}"))?;
        let file = PathBuf::from(file.trim());
        let on = mount_of(&all, &file)?;
        if on.fstype == "tmpfs" || on.fstype == "ramfs" {
            return Ok(());
        }
        return Err(format!(
            "{} is {} on {}, a loop device over {} on {}, which is not RAM",
            root.display(),
            m.fstype,
            m.source,
            file.display(),
            on.fstype
        ));
    }
    Err(format!(
        "{} is {} on {}, neither tmpfs nor a loop device over tmpfs",
        root.display(),
        m.fstype,
        m.source
    ))
}

/// Checks that nothing under canonical `root` is another filesystem: no
/// mount point lies inside it.
#[cfg(target_os = "linux")]
fn no_mounts_inside(root: &Path) -> Result<(), String> {
    for m in mounts()? {
        if m.point != root && m.point.starts_with(root) {
            return Err(format!(
                "{} ({}) is mounted inside the RAM-backed root",
                m.point.display(),
                m.fstype
            ));
        }
    }
    Ok(())
}

fn ram_backed_stays_inside(c: &Ctx) -> Result<(), String> {
    let s = &c.store;
    let st = s
        .layer_store()
        .status()
        .map_err(|err| format!("status: {err}"))?;
    let root = fs::canonicalize(&st.root).map_err(|err| format!("root: {err}"))?;
    #[cfg(target_os = "linux")]
    {
        ram_device(&root)?;
        no_mounts_inside(&root)?;
    }
    c.with_branch(|b, _| {
        let t = s.branch(b);
        e(t.write_at("dir/sub/c.txt", 0, b"ram"), "copy-up")?;
        e(t.write_file("new.txt", b"n"), "create")?;
        e(t.rename("dir", "moved"), "rename")?;
        e(s.create_snapshot(b, Some(&c.name())), "snapshot")?;
        e(t.write_file("after", b"a"), "write")?;
        // Where did the core put things? The metadata and every layer: all
        // inside the root (which holds no other filesystem, see above).
        let meta = e(s.info(), "info")?.meta_dir;
        let mut places = vec![meta];
        for l in e(s.layers_in_use(), "layers")? {
            places.push(
                s.layer_store()
                    .layer_path(&l)
                    .map_err(|err| format!("layer_path {l}: {err}"))?,
            );
        }
        for p in places {
            let canon = fs::canonicalize(&p).map_err(|err| format!("{}: {err}", p.display()))?;
            if !canon.starts_with(&root) {
                return Err(format!(
                    "{} is outside the RAM-backed root {}",
                    canon.display(),
                    root.display()
                ));
            }
        }
        Ok(())
    })
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use agentfs_testfs::{mount_or_skip, FsKind};

    #[test]
    fn only_ram_counts_as_ram() {
        if let Some(fs) = mount_or_skip(FsKind::Tmpfs, 16, "only_ram_counts_as_ram") {
            ram_device(fs.path()).unwrap();
            no_mounts_inside(fs.path()).unwrap();
        }
        if let Some(fs) = mount_or_skip(FsKind::Ext4, 16, "only_ram_counts_as_ram") {
            // A loop device over an image file: on disk, unless
            // AGENTFS_TESTFS_DIR puts the images on tmpfs.
            let images = std::env::var_os("AGENTFS_TESTFS_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(std::env::temp_dir);
            let on_ram = mount_of(&mounts().unwrap(), &fs::canonicalize(images).unwrap())
                .is_ok_and(|m| m.fstype == "tmpfs");
            let r = ram_device(fs.path());
            assert_eq!(r.is_ok(), on_ram, "{r:?}");
            // The parent of a mount point has a mount inside it.
            assert!(no_mounts_inside(fs.path().parent().unwrap()).is_err());
        }
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape("/mnt/with\\040space"), "/mnt/with space");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("/trail\\04"), "/trail\\04");
    }
}
