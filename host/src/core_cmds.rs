//! The `agentfs` subcommands over the core: init, branch, snapshot, fs, diff.

use std::{
    io::{Read, Write},
    os::unix::ffi::OsStrExt,
    path::PathBuf,
    process::ExitCode,
};

use agentfs_core::{BranchInfo, CoreError, FileKind, InitOptions, LockWait, SnapshotInfo, Store};
use agentfs_host::Host;

use crate::cli_backend::{self, Backend};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};

/// `agentfs branch ...`
#[derive(Subcommand, Debug)]
pub enum BranchCmd {
    /// Create a branch: over the store's default base, over --base DIR, or
    /// from a snapshot. O(1): nothing is copied.
    Create {
        /// The branch name ([A-Za-z0-9._-], up to 64 bytes).
        name: String,
        /// Start from this snapshot.
        #[arg(long, value_name = "SNAPSHOT", conflicts_with = "base")]
        from: Option<String>,
        /// Branch this directory instead of the store's default base.
        #[arg(long, value_name = "DIR")]
        base: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List branches.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete a branch and the layers only it used.
    Delete {
        /// The branch.
        name: String,
    },
    /// Merge the branch's committed layers into one (reflink or copy).
    Compact {
        /// The branch.
        name: String,
    },
}

/// `agentfs snapshot ...`
#[derive(Subcommand, Debug)]
pub enum SnapshotCmd {
    /// Freeze a branch into a read-only snapshot.
    Create {
        /// The branch to snapshot.
        #[arg(long)]
        branch: String,
        /// The snapshot name (default: <branch>.<n>).
        name: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List snapshots.
    List {
        /// Only snapshots of this branch.
        #[arg(long)]
        branch: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete a snapshot (refused while a branch or snapshot builds on it).
    Delete {
        /// The snapshot.
        name: String,
    },
}

/// Which tree a read-only `fs` command looks at.
#[derive(Args, Debug)]
pub struct At {
    /// The branch.
    #[arg(
        long,
        required_unless_present = "snapshot",
        conflicts_with = "snapshot"
    )]
    branch: Option<String>,
    /// A snapshot instead of a branch.
    #[arg(long)]
    snapshot: Option<String>,
}

/// `agentfs fs ...`: file operations inside a branch (paths are relative
/// to the branch root).
#[derive(Subcommand, Debug)]
pub enum FsCmd {
    /// List a directory.
    Ls {
        #[command(flatten)]
        at: At,
        /// Directory (default: the root).
        #[arg(default_value = "")]
        path: String,
        /// Long format: kind, mode, size, origin layer.
        #[arg(short, long)]
        long: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a file.
    Cat {
        #[command(flatten)]
        at: At,
        /// The file.
        path: String,
    },
    /// Show an entry's metadata.
    Stat {
        #[command(flatten)]
        at: At,
        /// The entry.
        path: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a symlink's target.
    Readlink {
        #[command(flatten)]
        at: At,
        /// The symlink.
        path: String,
    },
    /// Write a file (content from --data, else stdin); creates or replaces.
    Write {
        /// The branch.
        #[arg(long)]
        branch: String,
        /// The file.
        path: String,
        /// The content (default: read stdin).
        #[arg(long)]
        data: Option<String>,
    },
    /// Remove a file, symlink or empty directory (-r: a whole tree).
    Rm {
        /// The branch.
        #[arg(long)]
        branch: String,
        /// The entry.
        path: String,
        /// Remove directories and their content.
        #[arg(short, long)]
        recursive: bool,
    },
    /// Rename or move an entry.
    Mv {
        /// The branch.
        #[arg(long)]
        branch: String,
        /// From.
        from: String,
        /// To.
        to: String,
    },
    /// Create a directory.
    Mkdir {
        /// The branch.
        #[arg(long)]
        branch: String,
        /// The directory.
        path: String,
        /// Create missing parents; an existing directory is fine.
        #[arg(short, long)]
        parents: bool,
    },
    /// Create a symlink PATH pointing to TARGET.
    Symlink {
        /// The branch.
        #[arg(long)]
        branch: String,
        /// What the link points to (stored verbatim).
        target: String,
        /// The link.
        path: String,
    },
    /// Change permission bits (octal, e.g. 755).
    Chmod {
        /// The branch.
        #[arg(long)]
        branch: String,
        /// Octal mode.
        mode: String,
        /// The entry.
        path: String,
    },
}

/// Opens the configured backstore's store.
pub fn open_store(h: &Host, wait: LockWait) -> Result<Store> {
    let b = h.backstore()?;
    Ok(Store::open(b, wait)?)
}

fn print_json(v: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Prints `v` as JSON with `"via"` naming the daemon or the store.
pub fn print_json_via(v: &impl serde::Serialize, via: &str) -> Result<()> {
    let mut v = serde_json::to_value(v)?;
    if let Some(o) = v.as_object_mut() {
        o.insert("via".into(), via.into());
    }
    print_json(&v)
}

/// `agentfs init`.
pub fn init(
    h: &Host,
    wait: LockWait,
    base: Option<PathBuf>,
    compact_threshold: Option<u32>,
    json: bool,
) -> Result<ExitCode> {
    let b = h.backstore()?;
    let s = Store::init(
        b,
        InitOptions {
            default_base: base,
            compact_threshold,
        },
        wait,
    )?;
    let info = s.info()?;
    if json {
        print_json(&info)?;
    } else {
        println!("store:            {}", info.meta_dir.display());
        println!("backstore:        {}", info.backstore);
        println!(
            "default base:     {}",
            info.default_base
                .as_ref()
                .map(|b| b.display().to_string())
                .unwrap_or_else(|| "none (branches start empty unless given --base)".into())
        );
        println!(
            "compact after:    {} committed layers",
            info.compact_threshold
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn base_label(b: &Option<PathBuf>) -> String {
    b.as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "-".into())
}

/// `agentfs branch ...`
pub fn branch(s: &mut Backend, cmd: BranchCmd) -> Result<ExitCode> {
    let via = s.via();
    match cmd {
        BranchCmd::Create {
            name,
            from,
            base,
            json,
        } => {
            let b = s.create_branch(&name, from.as_deref(), base.as_deref())?;
            if json {
                print_json_via(&b, via)?;
            } else {
                let over = match &b.from_snapshot {
                    Some(snap) => format!("snapshot {snap}"),
                    None => format!("base {}", base_label(&b.base)),
                };
                println!("created branch {} over {over}", b.name);
            }
        }
        BranchCmd::List { json } => {
            let list = s.list_branches()?;
            if json {
                print_json_via(&serde_json::json!({ "branches": list }), via)?;
            } else {
                print_branches(&list);
            }
        }
        BranchCmd::Delete { name } => {
            s.delete_branch(&name)?;
            println!("deleted branch {name}");
        }
        BranchCmd::Compact { name } => {
            if s.compact_branch(&name)? {
                println!("compacted branch {name}");
            } else {
                println!("branch {name}: nothing to compact");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_branches(list: &[BranchInfo]) {
    if list.is_empty() {
        println!("no branches");
        return;
    }
    let w = list.iter().map(|b| b.name.len()).max().unwrap_or(4).max(4);
    println!("{:<w$}  {:>5}  {:<12}  BASE", "NAME", "DEPTH", "FROM");
    for b in list {
        println!(
            "{:<w$}  {:>5}  {:<12}  {}",
            b.name,
            b.depth,
            b.from_snapshot.as_deref().unwrap_or("-"),
            base_label(&b.base)
        );
    }
}

/// `agentfs snapshot ...`
pub fn snapshot(s: &mut Backend, cmd: SnapshotCmd) -> Result<ExitCode> {
    let via = s.via();
    match cmd {
        SnapshotCmd::Create { branch, name, json } => {
            let snap = s.create_snapshot(&branch, name.as_deref())?;
            if json {
                print_json_via(&snap, via)?;
            } else {
                println!(
                    "created snapshot {} of branch {} ({})",
                    snap.name,
                    snap.branch,
                    if snap.native {
                        "native snapshot"
                    } else {
                        "committed layer"
                    }
                );
            }
        }
        SnapshotCmd::List { branch, json } => {
            let list: Vec<SnapshotInfo> = s
                .list_snapshots()?
                .into_iter()
                .filter(|x| branch.as_ref().is_none_or(|b| &x.branch == b))
                .collect();
            if json {
                print_json_via(&serde_json::json!({ "snapshots": list }), via)?;
            } else if list.is_empty() {
                println!("no snapshots");
            } else {
                let w = list.iter().map(|x| x.name.len()).max().unwrap_or(4).max(4);
                println!("{:<w$}  {:<16}  KIND", "NAME", "BRANCH");
                for x in &list {
                    println!(
                        "{:<w$}  {:<16}  {}",
                        x.name,
                        x.branch,
                        if x.native { "native" } else { "committed" }
                    );
                }
            }
        }
        SnapshotCmd::Delete { name } => {
            s.delete_snapshot(&name)?;
            println!("deleted snapshot {name}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn tree(at: &At) -> cli_backend::At<'_> {
    match (&at.branch, &at.snapshot) {
        (Some(b), _) => cli_backend::At::Branch(b),
        (None, Some(snap)) => cli_backend::At::Snapshot(snap),
        (None, None) => unreachable!("clap requires one"),
    }
}

fn mode_string(kind: FileKind, mode: u32) -> String {
    let mut out = String::new();
    out.push(kind.letter());
    for shift in [6, 3, 0] {
        let b = (mode >> shift) & 7;
        out.push(if b & 4 != 0 { 'r' } else { '-' });
        out.push(if b & 2 != 0 { 'w' } else { '-' });
        out.push(if b & 1 != 0 { 'x' } else { '-' });
    }
    out
}

/// `agentfs fs ...`
pub fn fs(s: &mut Backend, cmd: FsCmd) -> Result<ExitCode> {
    let via = s.via();
    match cmd {
        FsCmd::Ls {
            at,
            path,
            long,
            json,
        } => {
            let t = tree(&at);
            let entries = s.read_dir(t, path.as_str())?;
            let join = |n: &std::ffi::OsStr| -> String {
                let n = n.to_string_lossy();
                if path.trim_matches('/').is_empty() {
                    n.into_owned()
                } else {
                    format!("{}/{n}", path.trim_end_matches('/'))
                }
            };
            if json {
                let mut out = Vec::new();
                for e in &entries {
                    let mut v = serde_json::to_value(e)?;
                    if long && e.name.to_str().is_some() {
                        v["stat"] = serde_json::to_value(s.lstat(t, join(&e.name).as_str())?)?;
                    } else if long {
                        // Requests carry paths as UTF-8: this entry cannot
                        // be named in one (its exact name is in name_bytes).
                        v["stat"] = serde_json::Value::Null;
                    }
                    out.push(v);
                }
                print_json_via(&serde_json::json!({ "entries": out }), via)?;
            } else {
                for e in &entries {
                    let name = crate::output::quoted(e.name.as_bytes());
                    if long && e.name.to_str().is_none() {
                        // Requests carry paths as UTF-8: this entry cannot
                        // be named in one, so it is listed without its stat
                        // (as `ls` lists an entry it cannot stat).
                        println!("?????????? {:>10}  {:<13}  {name}", "?", "?");
                    } else if long {
                        let st = s.lstat(t, join(&e.name).as_str())?;
                        let origin = match &st.origin {
                            agentfs_core::Origin::Active => "branch".to_string(),
                            agentfs_core::Origin::Committed(id) => format!("layer {id}"),
                            agentfs_core::Origin::Base => "base".to_string(),
                        };
                        println!(
                            "{} {:>10}  {:<13}  {name}{}",
                            mode_string(st.kind, st.mode),
                            st.size,
                            origin,
                            if st.kind == FileKind::Dir { "/" } else { "" }
                        );
                    } else {
                        println!("{name}{}", if e.kind == FileKind::Dir { "/" } else { "" });
                    }
                }
            }
        }
        FsCmd::Cat { at, path } => {
            let mut out = std::io::stdout().lock();
            s.copy_file_to(tree(&at), path.as_str(), &mut out)?;
            out.flush()?;
        }
        FsCmd::Stat { at, path, json } => {
            let st = s.lstat(tree(&at), path.as_str())?;
            if json {
                print_json_via(&st, via)?;
            } else {
                println!("kind:   {:?}", st.kind);
                println!("mode:   {:o} ({})", st.mode, mode_string(st.kind, st.mode));
                println!("size:   {}", st.size);
                println!("origin: {:?}", st.origin);
            }
        }
        FsCmd::Readlink { at, path } => {
            println!("{}", s.read_link(tree(&at), path.as_str())?);
        }
        FsCmd::Write { branch, path, data } => {
            let bytes = match data {
                Some(d) => d.into_bytes(),
                None => {
                    let mut v = Vec::new();
                    std::io::stdin()
                        .read_to_end(&mut v)
                        .context("reading stdin")?;
                    v
                }
            };
            s.write_file(&branch, &path, bytes)?;
        }
        FsCmd::Rm {
            branch,
            path,
            recursive,
        } => s.remove(&branch, &path, recursive)?,
        FsCmd::Mv { branch, from, to } => s.rename(&branch, &from, &to)?,
        FsCmd::Mkdir {
            branch,
            path,
            parents,
        } => s.mkdir(&branch, &path, parents)?,
        FsCmd::Symlink {
            branch,
            target,
            path,
        } => s.symlink(&branch, &target, &path)?,
        FsCmd::Chmod { branch, mode, path } => {
            let Ok(m) = u32::from_str_radix(&mode, 8) else {
                bail!("invalid mode {mode:?}: give octal permission bits, e.g. 755");
            };
            if m > 0o7777 {
                bail!("invalid mode {mode:?}: at most 7777");
            }
            s.chmod(&branch, &path, m)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `agentfs diff`.
pub fn diff(s: &Store, branch: &str, from: Option<&str>, json: bool) -> Result<ExitCode> {
    let changes = s.diff(branch, from)?;
    if json {
        print_json(&serde_json::json!({
            "branch": branch,
            "from": from,
            "changes": changes,
        }))?;
    } else {
        for c in &changes {
            let dir = if c.kind == FileKind::Dir { "/" } else { "" };
            let path = c.path.components().join(std::ffi::OsStr::new("/"));
            let path = crate::output::quoted(path.as_bytes());
            println!("{} {path}{dir}", c.change.letter());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Exit status for errors scripts may want to tell apart: 75 (EX_TEMPFAIL)
/// when the store is busy.
pub fn exit_code_for(e: &anyhow::Error) -> ExitCode {
    match e.downcast_ref::<CoreError>() {
        Some(CoreError::StoreBusy { .. }) => ExitCode::from(75),
        _ => ExitCode::FAILURE,
    }
}
