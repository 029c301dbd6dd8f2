//! `agentfs branch ...`.

use std::{path::PathBuf, process::ExitCode};

use agentfs_core::BranchInfo;

use super::backend::Backend;
use anyhow::Result;
use clap::Subcommand;

use super::store::{base_label, print_json_via};

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

/// `agentfs branch ...`
pub fn run(s: &mut Backend, cmd: BranchCmd) -> Result<ExitCode> {
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
