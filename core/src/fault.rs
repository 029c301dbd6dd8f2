//! Fault-injection points for crash tests.
//!
//! When the environment variable `AGENTFS_FAULT` names a point, the process
//! stops there: it prints `agentfs: fault point <name> reached` on stderr
//! and waits forever, so a test can kill it with SIGKILL at exactly that
//! moment and then check that the store reopens consistent. Unset (always,
//! outside tests), a point costs one comparison.
//!
//! Points: `copyup-after-temp-write` (a copy-up's temporary file is complete
//! but not yet renamed into place), `snapshot-after-layer-create` (the new
//! layer exists, the graph does not mention it yet), `graph-before-commit`
//! (a graph change is written to the database, not yet committed),
//! `graph-db-before-rename` (a new or migrated graph database is complete
//! under its temporary name), `migrate-before-legacy-removal` (a migrated
//! database is in place, `store.json` not yet removed),
//! `rename-after-place` (a renamed lower entry is at its new name, the old
//! name is not yet whited out).

use std::{io::Write, sync::OnceLock};

/// Stops here if `AGENTFS_FAULT` names this point.
pub fn point(name: &str) {
    static WANTED: OnceLock<Option<String>> = OnceLock::new();
    let wanted = WANTED.get_or_init(|| std::env::var("AGENTFS_FAULT").ok());
    if wanted.as_deref() == Some(name) {
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "agentfs: fault point {name} reached");
        let _ = err.flush();
        drop(err);
        loop {
            std::thread::park();
        }
    }
}
