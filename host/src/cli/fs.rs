//! `agentfs fs ...`: file operations inside a branch or snapshot.

use std::{
    ffi::{OsStr, OsString},
    io::{Read, Write},
    os::unix::ffi::{OsStrExt, OsStringExt},
    process::ExitCode,
};

use agentfs_core::FileKind;

use super::backend::{self, Backend};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};

use super::store::print_json_via;

/// Which tree a read-only `fs` command looks at.
#[derive(Args, Debug)]
pub struct TreeArgs {
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
        at: TreeArgs,
        /// Directory (default: the root).
        #[arg(default_value = "")]
        path: OsString,
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
        at: TreeArgs,
        /// The file.
        path: OsString,
    },
    /// Show an entry's metadata.
    Stat {
        #[command(flatten)]
        at: TreeArgs,
        /// The entry.
        path: OsString,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a symlink's target.
    Readlink {
        #[command(flatten)]
        at: TreeArgs,
        /// The symlink.
        path: OsString,
    },
    /// Write a file (content from --data, else stdin); creates or replaces.
    Write {
        /// The branch.
        #[arg(long)]
        branch: String,
        /// The file.
        path: OsString,
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
        path: OsString,
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
        from: OsString,
        /// To.
        to: OsString,
    },
    /// Create a directory.
    Mkdir {
        /// The branch.
        #[arg(long)]
        branch: String,
        /// The directory.
        path: OsString,
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
        target: OsString,
        /// The link.
        path: OsString,
    },
    /// Change permission bits (octal, e.g. 755).
    Chmod {
        /// The branch.
        #[arg(long)]
        branch: String,
        /// Octal mode.
        mode: String,
        /// The entry.
        path: OsString,
    },
}

fn tree(at: &TreeArgs) -> backend::TreeRef<'_> {
    match (&at.branch, &at.snapshot) {
        (Some(b), _) => backend::TreeRef::Branch(b),
        (None, Some(snap)) => backend::TreeRef::Snapshot(snap),
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
pub fn run(s: &mut Backend, cmd: FsCmd) -> Result<ExitCode> {
    let via = s.via();
    match cmd {
        FsCmd::Ls {
            at,
            path,
            long,
            json,
        } => {
            let t = tree(&at);
            let entries = s.read_dir(t, &path)?;
            let dir = path.as_bytes();
            let dir = &dir[..dir.len() - dir.iter().rev().take_while(|&&b| b == b'/').count()];
            let join = |n: &OsStr| -> OsString {
                let mut p = dir.to_vec();
                if !p.is_empty() {
                    p.push(b'/');
                }
                p.extend_from_slice(n.as_bytes());
                OsString::from_vec(p)
            };
            if json {
                let mut out = Vec::new();
                for e in &entries {
                    let mut v = serde_json::to_value(e)?;
                    if long {
                        v["stat"] = serde_json::to_value(s.lstat(t, &join(&e.name))?)?;
                    }
                    out.push(v);
                }
                print_json_via(&serde_json::json!({ "entries": out }), via)?;
            } else {
                for e in &entries {
                    let mut name = e.name.as_bytes().to_vec();
                    if e.kind == FileKind::Dir {
                        name.push(b'/');
                    }
                    let name = crate::output::quoted(&name);
                    if long {
                        let st = s.lstat(t, &join(&e.name))?;
                        let origin = match &st.origin {
                            agentfs_core::Origin::Active => "branch".to_string(),
                            agentfs_core::Origin::Committed(id) => format!("layer {id}"),
                            agentfs_core::Origin::Base => "base".to_string(),
                        };
                        println!(
                            "{} {:>10}  {:<13}  {name}",
                            mode_string(st.kind, st.mode),
                            st.size,
                            origin,
                        );
                    } else {
                        println!("{name}");
                    }
                }
            }
        }
        FsCmd::Cat { at, path } => {
            let mut out = std::io::stdout().lock();
            s.copy_file_to(tree(&at), &path, &mut out)?;
            out.flush()?;
        }
        FsCmd::Stat { at, path, json } => {
            let st = s.lstat(tree(&at), &path)?;
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
            // The target's exact bytes, as readlink(1) prints them.
            let mut target = s.read_link(tree(&at), &path)?.into_vec();
            target.push(b'\n');
            std::io::stdout().lock().write_all(&target)?;
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
