//! Leftovers of dead processes: entries named `<prefix><pid>-<rest>` that
//! a process made for itself and would have removed had it not been killed
//! (a mock store in `/dev/shm`, a btrfs probe subvolume).
//!
//! Policy: an entry is reclaimed only when its name parses as ours and the
//! pid in it names no live process. A live process with a reused pid keeps
//! its entry (the safe side). Pids are those of this pid namespace: a store
//! shared with a container that has its own pid namespace must not use
//! these names.

use std::{io, path::Path};

/// Whether process `pid` exists (a process of another user counts).
pub fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 sends nothing; kill only checks that the pid exists
    // and whether we may signal it.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// The owner pid in a name `<prefix><pid>-<rest>`, if the name is ours.
pub fn owner_pid(name: &str, prefix: &str) -> Option<u32> {
    let rest = name.strip_prefix(prefix)?;
    let (pid, tail) = rest.split_once('-')?;
    if tail.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

/// Removes every entry of `dir` named `<prefix><pid>-<rest>` whose owner is
/// dead, with `remove`. Returns one line per entry removed (`removed
/// <path> (owner pid N is gone)`); what cannot be removed is logged and
/// left. A missing `dir` is nothing to do.
pub fn reap_dead_owners(
    dir: &Path,
    prefix: &str,
    remove: impl Fn(&Path) -> io::Result<()>,
) -> Vec<String> {
    let mut done = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return done;
    };
    let mut entries: Vec<_> = rd.flatten().map(|e| e.path()).collect();
    // `x-0-ro` sorts after `x-0`: remove dependants (snapshots) first.
    entries.sort();
    entries.reverse();
    for p in entries {
        let Some(pid) = p
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| owner_pid(n, prefix))
        else {
            continue;
        };
        if process_alive(pid) {
            continue;
        }
        match remove(&p) {
            Ok(()) => done.push(format!("removed {} (owner pid {pid} is gone)", p.display())),
            Err(e) => {
                tracing::warn!(path = %p.display(), error = %e, "cannot remove the leftover of a dead process")
            }
        }
    }
    for line in &done {
        tracing::info!("{line}");
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dead_pid() -> u32 {
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let pid = c.id();
        c.wait().unwrap();
        pid
    }

    #[test]
    fn names_parse_only_when_ours() {
        assert_eq!(owner_pid("agentfs-mock-12-0", "agentfs-mock-"), Some(12));
        assert_eq!(owner_pid("agentfs-mock-12-0-ro", "agentfs-mock-"), Some(12));
        assert_eq!(owner_pid("agentfs-mock-12", "agentfs-mock-"), None);
        assert_eq!(owner_pid("agentfs-mock-x-0", "agentfs-mock-"), None);
        assert_eq!(owner_pid("other-12-0", "agentfs-mock-"), None);
    }

    #[test]
    fn liveness_follows_the_process() {
        assert!(process_alive(std::process::id()));
        assert!(!process_alive(dead_pid()));
        assert!(!process_alive(0));
        assert!(!process_alive(u32::MAX));
    }

    #[test]
    fn only_dead_owners_entries_are_removed() {
        let t = tempfile::tempdir().unwrap();
        let dead = dead_pid();
        let me = std::process::id();
        for n in [
            format!("p-{dead}-0"),
            format!("p-{dead}-0-ro"),
            format!("p-{me}-0"),
            "p-notapid-0".to_string(),
            format!("q-{dead}-0"),
        ] {
            std::fs::create_dir(t.path().join(n)).unwrap();
        }
        let done = reap_dead_owners(t.path(), "p-", |p| std::fs::remove_dir(p));
        assert_eq!(done.len(), 2, "{done:?}");
        let mut left: Vec<String> = std::fs::read_dir(t.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            vec![
                format!("p-{me}-0"),
                "p-notapid-0".into(),
                format!("q-{dead}-0")
            ]
        );
    }
}
