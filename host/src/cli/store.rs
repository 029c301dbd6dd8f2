//! Commands over the whole store: `agentfs init`, `agentfs diff`, and what
//! every command shares (opening the store, JSON output, exit statuses).

use std::{os::unix::ffi::OsStringExt, path::PathBuf, process::ExitCode};

use agentfs_core::{CoreError, FileKind, InitOptions, LockWait, Store};
use agentfs_host::Host;

use anyhow::Result;

/// Opens the configured backstore's store.
pub fn open_store(h: &Host, wait: LockWait) -> Result<Store> {
    let b = h.backstore()?;
    Ok(Store::open(b, wait)?)
}

pub fn print_json(v: &impl serde::Serialize) -> Result<()> {
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

pub fn base_label(b: &Option<PathBuf>) -> String {
    b.as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "-".into())
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
            // A directory's slash goes inside the quotes, as git puts it.
            let mut path = c.path.to_os_string().into_vec();
            if c.kind == FileKind::Dir {
                path.push(b'/');
            }
            let path = crate::output::quoted(&path);
            println!("{} {path}", c.change.letter());
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
