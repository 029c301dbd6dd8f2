//! `agentfs snapshot ...`.

use std::process::ExitCode;

use agentfs_core::SnapshotInfo;

use super::backend::Backend;
use anyhow::Result;
use clap::Subcommand;

use super::store::print_json_via;

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

/// `agentfs snapshot ...`
pub fn run(s: &mut Backend, cmd: SnapshotCmd) -> Result<ExitCode> {
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
