//! Active mounts, for `agentfs status` and `agentfs unmount`: one small
//! JSON file per mount in a per-user directory, written by the serving
//! process once mounted and removed when it stops. A record whose process
//! is gone, or whose mountpoint no longer holds an AgentFS mount, is stale
//! and is skipped (and removed) when listing.

use std::{
    fs,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// One active mount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The serving process.
    pub pid: u32,
    /// The branch.
    pub branch: String,
    /// The absolute mountpoint.
    pub mountpoint: PathBuf,
    /// How opened files are served (`passthrough`: by the kernel from the
    /// layer files; `fuse`: through this process).
    pub io_mode: String,
    /// When it was mounted, seconds since the epoch.
    pub started: u64,
}

fn file_of(dir: &Path, mountpoint: &Path) -> PathBuf {
    // FNV-1a of the mountpoint: one file per mountpoint.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in mountpoint.as_os_str().as_encoded_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    dir.join(format!("{h:016x}.json"))
}

/// Records `r` in `dir` (created, mode 0700, if missing).
pub fn add(dir: &Path, r: &Record) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let f = file_of(dir, &r.mountpoint);
    let tmp = f.with_extension("tmp");
    fs::write(
        &tmp,
        serde_json::to_vec_pretty(r).map_err(std::io::Error::other)?,
    )?;
    fs::rename(tmp, f)
}

/// Removes the record of `mountpoint` (if any).
pub fn remove(dir: &Path, mountpoint: &Path) {
    let _ = fs::remove_file(file_of(dir, mountpoint));
}

/// The record of `mountpoint`, if one is live.
pub fn find(dir: &Path, mountpoint: &Path) -> Option<Record> {
    list(dir).into_iter().find(|r| r.mountpoint == mountpoint)
}

/// True when process `pid` runs (a zombie, killed but not yet reaped,
/// does not).
fn alive(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name, which is in parentheses.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .is_some_and(|state| state != "Z" && state != "X")
}

/// The live records in `dir`, by mountpoint; stale ones are removed.
pub fn list(dir: &Path) -> Vec<Record> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mounted = crate::mounts();
    let mut v = Vec::new();
    for e in rd.flatten() {
        let p = e.path();
        if p.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let rec: Option<Record> = fs::read(&p)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        match rec {
            Some(r)
                if alive(r.pid)
                    && mounted
                        .iter()
                        .any(|m| m.mountpoint == r.mountpoint && m.is_agentfs()) =>
            {
                v.push(r)
            }
            _ => {
                let _ = fs::remove_file(&p);
            }
        }
    }
    v.sort_by(|a, b| a.mountpoint.cmp(&b.mountpoint));
    v
}
