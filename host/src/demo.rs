//! `agentfs demo`: the main job, visibly and step by step, on the
//! configured backstore: a branch over a directory, a change in it, a
//! snapshot, a diff, and proof that the base is byte-for-byte untouched.
//! Everything it creates is removed at the end.

use std::{
    collections::BTreeMap,
    fs,
    hash::{Hash, Hasher},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Instant,
};

use agentfs_core::{FileKind, InitOptions, LockWait, Store};
use agentfs_host::Host;
use anyhow::{bail, Context, Result};

/// A fingerprint of a directory tree: every entry's path, kind, mode and
/// content (symlinks: target), and the number of files.
struct Fingerprint {
    hash: u64,
    files: usize,
    bytes: u64,
}

fn fingerprint(root: &Path) -> Result<Fingerprint> {
    fn walk(
        root: &Path,
        rel: &Path,
        out: &mut BTreeMap<PathBuf, (u8, u32, Vec<u8>)>,
    ) -> Result<()> {
        let dir = root.join(rel);
        for e in fs::read_dir(&dir).with_context(|| format!("read {}", dir.display()))? {
            let e = e?;
            let r = rel.join(e.file_name());
            let p = root.join(&r);
            let md = fs::symlink_metadata(&p)?;
            let mode = md.permissions().mode();
            if md.is_dir() {
                out.insert(r.clone(), (b'd', mode, Vec::new()));
                walk(root, &r, out)?;
            } else if md.file_type().is_symlink() {
                let t = fs::read_link(&p)?.into_os_string().into_encoded_bytes();
                out.insert(r, (b'l', mode, t));
            } else if md.is_file() {
                out.insert(r, (b'f', mode, fs::read(&p)?));
            } else {
                out.insert(r, (b'o', mode, Vec::new()));
            }
        }
        Ok(())
    }
    let mut all = BTreeMap::new();
    walk(root, Path::new(""), &mut all)?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    all.hash(&mut h);
    Ok(Fingerprint {
        hash: h.finish(),
        files: all.values().filter(|v| v.0 == b'f').count(),
        bytes: all.values().map(|v| v.2.len() as u64).sum(),
    })
}

const SAMPLE: &[(&str, &str)] = &[
    (
        "README.md",
        "# sample project\n\nA small tree for the AgentFS demo.\n",
    ),
    (
        "Cargo.toml",
        "[package]\nname = \"sample\"\nversion = \"0.1.0\"\n",
    ),
    ("src/main.rs", "fn main() {\n    println!(\"hello\");\n}\n"),
    ("src/lib.rs", "pub fn answer() -> u32 {\n    42\n}\n"),
    (
        "docs/notes.md",
        "Notes the agent will delete in its branch.\n",
    ),
];

fn write_sample(dir: &Path) -> Result<()> {
    for (p, content) in SAMPLE {
        let f = dir.join(p);
        fs::create_dir_all(f.parent().expect("has a parent"))?;
        fs::write(&f, content)?;
    }
    Ok(())
}

/// Regular files of the base, in a stable order (up to `limit`).
fn some_files(root: &Path, limit: usize) -> Vec<PathBuf> {
    fn walk(root: &Path, rel: &Path, out: &mut Vec<PathBuf>, limit: usize) {
        let Ok(rd) = fs::read_dir(root.join(rel)) else {
            return;
        };
        let mut names: Vec<_> = rd.flatten().map(|e| e.file_name()).collect();
        names.sort();
        for n in names {
            if out.len() >= limit {
                return;
            }
            let r = rel.join(&n);
            let Ok(md) = fs::symlink_metadata(root.join(&r)) else {
                continue;
            };
            if md.is_file() && md.len() <= 1 << 20 && n.to_str().is_some() {
                out.push(r);
            } else if md.is_dir() && !n.to_string_lossy().starts_with('.') {
                walk(root, &r, out, limit);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, Path::new(""), &mut out, limit);
    out
}

fn ms(t: Instant) -> String {
    format!("{:.2} ms", t.elapsed().as_secs_f64() * 1e3)
}

fn tail(data: &[u8]) -> String {
    let s = String::from_utf8_lossy(data);
    s.lines().last().unwrap_or("").to_string()
}

/// Runs the demo.
pub fn run(h: &Host, wait: LockWait, base: Option<PathBuf>) -> Result<ExitCode> {
    let b = h.backstore()?;
    let plugin = b.details().name.clone();
    let caps = b.capabilities().names();
    let (base, _temp) = match base {
        Some(d) => (
            fs::canonicalize(&d).with_context(|| format!("base {}", d.display()))?,
            None,
        ),
        None => {
            let t = tempfile::Builder::new()
                .prefix("agentfs-demo-base-")
                .tempdir()
                .context("creating a temporary base directory")?;
            write_sample(t.path())?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    println!("AgentFS demo: a copy-on-write branch of a real directory\n");
    println!(
        "backstore: {plugin} ({})",
        if caps.is_empty() {
            "-".to_string()
        } else {
            caps.join(", ")
        }
    );
    let before = fingerprint(&base)?;
    println!(
        "[1] base: {} ({} files, {} bytes, fingerprint {:016x})",
        base.display(),
        before.files,
        before.bytes,
        before.hash
    );
    let created_store = !Store::exists(&b)?;
    let store = if created_store {
        Store::init(b, InitOptions::default(), wait)?
    } else {
        Store::open(b, wait)?
    };
    println!(
        "    store: {}{}",
        store.info()?.meta_dir.display(),
        if created_store {
            " (created for the demo)"
        } else {
            ""
        }
    );
    let branch = format!("demo-{}", std::process::id());
    let result = steps(&store, &branch, &base, &before);
    // Clean up whatever was created, even after a failure: the branch
    // first (without native snapshots it is built on its snapshot).
    let mut cleanup_errors = Vec::new();
    match store.delete_branch(&branch) {
        Ok(()) | Err(agentfs_core::CoreError::NotFound(_)) => {}
        Err(e) => cleanup_errors.push(e.to_string()),
    }
    for s in store.list_snapshots().unwrap_or_default() {
        if s.branch == branch {
            if let Err(e) = store.delete_snapshot(&s.name) {
                cleanup_errors.push(e.to_string());
            }
        }
    }
    if created_store {
        if let Err(e) = store.destroy() {
            cleanup_errors.push(e.to_string());
        }
    }
    if cleanup_errors.is_empty() {
        println!(
            "[8] cleanup: removed branch {branch}, its snapshot{}{}",
            if created_store {
                ", the demo store"
            } else {
                ""
            },
            if _temp.is_some() {
                " and the temporary base"
            } else {
                ""
            }
        );
    } else {
        eprintln!("agentfs: warning: cleanup: {}", cleanup_errors.join("; "));
    }
    result?;
    println!("\ndemo complete: branch, change, snapshot, diff; base untouched.");
    Ok(ExitCode::SUCCESS)
}

fn steps(store: &Store, branch: &str, base: &Path, before: &Fingerprint) -> Result<()> {
    let t0 = Instant::now();
    store.create_branch(branch, None, Some(base))?;
    println!(
        "[2] branch: created {branch} over the base in {} (one empty layer, nothing copied)",
        ms(t0)
    );
    let t = store.branch(branch);
    let top: Vec<String> = t
        .read_dir("")?
        .into_iter()
        .take(8)
        .map(|e| {
            let n = e.name.to_string_lossy().into_owned();
            if e.kind == FileKind::Dir {
                n + "/"
            } else {
                n
            }
        })
        .collect();
    println!("    the branch shows the base: {}", top.join("  "));

    let files = some_files(base, 2);
    let (r0, c0) = store.copy_stats();
    let edited = files.first().map(|f| f.to_string_lossy().into_owned());
    if let Some(f) = &edited {
        let len = t.stat(f.as_str())?.size;
        let line = format!("\nagentfs demo: this line exists only in branch {branch}\n");
        t.write_at(f.as_str(), len, line.as_bytes())?;
        let (r1, c1) = store.copy_stats();
        let how = if r1 > r0 {
            "copy-up by reflink"
        } else if c1 > c0 {
            "copy-up by copy"
        } else {
            "copy-up"
        };
        println!("[3] change: appended a line to {f} in the branch ({how})");
        println!(
            "    branch {f} ends with: {:?}",
            tail(&t.read_file(f.as_str())?)
        );
        println!(
            "    base   {f} ends with: {:?}",
            tail(&fs::read(base.join(f))?)
        );
    } else {
        println!("[3] change: (the base has no small regular file to edit)");
    }
    t.write_file("AGENTFS-DEMO.txt", b"written in the branch\n")?;
    println!("    added AGENTFS-DEMO.txt");
    if let Some(second) = files.get(1) {
        let s = second.to_string_lossy();
        t.unlink(s.as_ref())?;
        println!("    deleted {s} (a whiteout in the branch; the base keeps it)");
    }

    let t0 = Instant::now();
    let snap = store.create_snapshot(branch, None)?;
    println!(
        "[4] snapshot: {} in {} ({})",
        snap.name,
        ms(t0),
        if snap.native {
            "native snapshot of the branch layer"
        } else {
            "the branch layer committed, a fresh layer on top"
        }
    );
    t.write_file("AGENTFS-DEMO.txt", b"changed after the snapshot\n")?;
    let in_snap = store.snapshot(&snap.name).read_file("AGENTFS-DEMO.txt")?;
    println!(
        "[5] after the snapshot the branch says {:?}, the snapshot still says {:?}",
        tail(&t.read_file("AGENTFS-DEMO.txt")?),
        tail(&in_snap)
    );
    if in_snap != b"written in the branch\n" {
        bail!("the snapshot changed after it was taken");
    }

    println!("[6] diff of {branch} against its base:");
    for c in store.diff(branch, None)? {
        let dir = if c.kind == FileKind::Dir { "/" } else { "" };
        println!("      {} {}{dir}", c.change.letter(), c.path);
    }
    println!("    diff against snapshot {}:", snap.name);
    for c in store.diff(branch, Some(&snap.name))? {
        println!("      {} {}", c.change.letter(), c.path);
    }

    let after = fingerprint(base)?;
    if after.hash != before.hash || after.files != before.files {
        bail!(
            "the base changed: fingerprint {:016x} -> {:016x}",
            before.hash,
            after.hash
        );
    }
    println!(
        "[7] base check: {} files, fingerprint {:016x} before and after: byte-for-byte untouched",
        after.files, after.hash
    );
    Ok(())
}
