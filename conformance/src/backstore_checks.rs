//! Checks for backstore plugins.

use std::{
    fs,
    path::Path,
    sync::atomic::{AtomicU64, Ordering},
};

use agentfs_host::{
    config::PluginEntry,
    loader::{load_backstore, LoadError, LoadedBackstore, SearchPath},
};
use agentfs_plugin_api::{backstore::Capabilities, ErrorCode, PluginError, PluginResult};
use proptest::{
    collection::vec,
    prelude::any,
    test_runner::{Config as PtConfig, TestCaseError, TestError, TestRunner},
};

use crate::{run_checks, skip_checks, timed, Check, Outcome, Report};

struct Ctx {
    b: LoadedBackstore,
    caps: Capabilities,
    seq: AtomicU64,
}

impl Ctx {
    fn id(&self) -> String {
        format!(
            "cf-{}-{}",
            std::process::id(),
            self.seq.fetch_add(1, Ordering::Relaxed)
        )
    }
    fn reflink(&self) -> bool {
        self.caps.contains(Capabilities::NATIVE_REFLINK)
    }
    fn snapshots(&self) -> bool {
        self.caps.contains(Capabilities::NATIVE_SNAPSHOTS)
    }
    /// Runs `f` with a fresh layer, deleting it afterwards.
    fn with_layer(&self, f: impl FnOnce(&str, &Path) -> Result<(), String>) -> Result<(), String> {
        let id = self.id();
        let p = self
            .b
            .create_layer(&id)
            .map_err(|e| format!("create_layer({id}): {e}"))?;
        let r = f(&id, &p);
        let d = self
            .b
            .delete_layer(&id)
            .map_err(|e| format!("delete_layer({id}): {e}"));
        r.and(d)
    }
}

fn always(_: &Ctx) -> Option<String> {
    None
}
fn needs_reflink(c: &Ctx) -> Option<String> {
    (!c.reflink()).then(|| "the instance does not declare native_reflink".to_string())
}
fn needs_snapshots(c: &Ctx) -> Option<String> {
    (!c.snapshots()).then(|| "the instance does not declare native_snapshots".to_string())
}
fn lacks_snapshots(c: &Ctx) -> Option<String> {
    c.snapshots()
        .then(|| "the instance declares native_snapshots".to_string())
}

fn expect_code<T: std::fmt::Debug>(
    r: PluginResult<T>,
    code: ErrorCode,
    what: &str,
) -> Result<(), String> {
    match r {
        Err(e) if e.code == code => {
            if e.message().trim().is_empty() {
                Err(format!("{what}: {code} error has an empty message"))
            } else {
                Ok(())
            }
        }
        Err(e) => Err(format!(
            "{what}: expected {code}, got {} ({})",
            e.code,
            e.message()
        )),
        Ok(v) => Err(format!("{what}: expected {code}, but it succeeded ({v:?})")),
    }
}

fn io<T>(r: std::io::Result<T>, what: &str) -> Result<T, String> {
    r.map_err(|e| format!("{what}: {e}"))
}

fn pe<T>(r: Result<T, PluginError>, what: &str) -> Result<T, String> {
    r.map_err(|e| format!("{what}: {e}"))
}

const CHECKS: &[Check<Ctx>] = &[
    Check {
        name: "backstore.status",
        skip_unless: always,
        run: status,
    },
    Check {
        name: "backstore.metadata_dir",
        skip_unless: always,
        run: metadata_dir,
    },
    Check {
        name: "backstore.layer.lifecycle",
        skip_unless: always,
        run: layer_lifecycle,
    },
    Check {
        name: "backstore.layer.hostile_ids",
        skip_unless: always,
        run: hostile_ids,
    },
    Check {
        name: "backstore.reflink.capability_agrees",
        skip_unless: always,
        run: reflink_capability,
    },
    Check {
        name: "backstore.reflink.content_identical",
        skip_unless: needs_reflink,
        run: reflink_content,
    },
    Check {
        name: "backstore.reflink.independence",
        skip_unless: needs_reflink,
        run: reflink_independence,
    },
    Check {
        name: "backstore.reflink.across_layers",
        skip_unless: needs_reflink,
        run: reflink_across_layers,
    },
    Check {
        name: "backstore.reflink.destination_exists",
        skip_unless: needs_reflink,
        run: reflink_dst_exists,
    },
    Check {
        name: "backstore.reflink.missing_source",
        skip_unless: needs_reflink,
        run: reflink_missing_src,
    },
    Check {
        name: "backstore.reflink.directory_source",
        skip_unless: needs_reflink,
        run: reflink_dir_src,
    },
    Check {
        name: "backstore.snapshot.unsupported",
        skip_unless: lacks_snapshots,
        run: snapshot_unsupported,
    },
    Check {
        name: "backstore.snapshot.read_only_isolated",
        skip_unless: needs_snapshots,
        run: snapshot_ro,
    },
    Check {
        name: "backstore.snapshot.writable_isolated",
        skip_unless: needs_snapshots,
        run: snapshot_rw,
    },
];

/// Constructs the backstore once and runs every check on it.
pub(crate) fn run_all(report: &mut Report, entry: &PluginEntry, search: &SearchPath) {
    let platforms = report
        .plugin
        .as_ref()
        .map(|p| p.platforms.clone())
        .unwrap_or_default();
    let here = std::env::consts::OS;
    let foreign = platforms != "any" && platforms != here;
    let built = load_backstore(entry, search);
    if foreign {
        // A plugin for another platform must refuse to start, clearly.
        timed(
            report,
            "backstore.construct.wrong_platform",
            || match &built {
                Err(LoadError::Constructor { error, .. })
                    if error.code == ErrorCode::WRONG_PLATFORM =>
                {
                    Outcome::Passed
                }
                Err(e) => Outcome::Failed(format!("expected a wrong-platform error, got: {e}")),
                Ok(_) => Outcome::Failed(format!("a {platforms}-only plugin started on {here}")),
            },
        );
        skip_checks(
            report,
            CHECKS,
            &format!("plugin is for {platforms}, this is {here}"),
        );
        return;
    }
    let b = match built {
        Ok(b) => {
            report.push("backstore.construct", Outcome::Passed, Default::default());
            b
        }
        Err(e) => {
            report.push(
                "backstore.construct",
                Outcome::Failed(e.to_string()),
                Default::default(),
            );
            skip_checks(report, CHECKS, "the backstore could not be constructed");
            return;
        }
    };
    let ctx = Ctx {
        caps: b.capabilities(),
        b,
        seq: AtomicU64::new(0),
    };
    run_checks(report, CHECKS, &ctx);
}

fn status(c: &Ctx) -> Result<(), String> {
    let st = pe(c.b.status(), "status")?;
    if st.fs_type.trim().is_empty() {
        return Err("status: fs_type is empty".into());
    }
    if st.capacity_bytes == 0 {
        return Err("status: capacity is 0".into());
    }
    if st.used_bytes > st.capacity_bytes {
        return Err(format!(
            "status: used {} > capacity {}",
            st.used_bytes, st.capacity_bytes
        ));
    }
    let root = agentfs_plugin_api::guard::path_from_bytes(&st.root);
    if !root.is_dir() {
        return Err(format!(
            "status: root {} is not a directory",
            root.display()
        ));
    }
    Ok(())
}

fn metadata_dir(c: &Ctx) -> Result<(), String> {
    let m = pe(c.b.metadata_dir(), "metadata_dir")?;
    if !m.is_dir() {
        return Err(format!("metadata_dir {} is not a directory", m.display()));
    }
    let probe = m.join(format!(".cf-probe-{}", std::process::id()));
    io(fs::write(&probe, b"x"), "metadata_dir is not writable")?;
    io(fs::remove_file(&probe), "remove probe")?;
    c.with_layer(|_, p| {
        if p.starts_with(&m) || m.starts_with(p) {
            Err(format!(
                "metadata_dir {} overlaps layer {}",
                m.display(),
                p.display()
            ))
        } else {
            Ok(())
        }
    })
}

fn layer_lifecycle(c: &Ctx) -> Result<(), String> {
    let id = c.id();
    let p = pe(c.b.create_layer(&id), "create_layer")?;
    let cleanup = |r: Result<(), String>| {
        let _ = c.b.delete_layer(&id);
        r
    };
    cleanup((|| {
        if !p.is_dir() || io(fs::read_dir(&p), "read new layer")?.next().is_some() {
            return Err(format!(
                "new layer {} is not an empty directory",
                p.display()
            ));
        }
        let again = pe(c.b.layer_path(&id), "layer_path")?;
        if again != p {
            return Err(format!(
                "layer_path {} differs from create_layer {}",
                again.display(),
                p.display()
            ));
        }
        if !pe(c.b.list_layers(), "list_layers")?.contains(&id) {
            return Err("list_layers does not list a new layer".into());
        }
        expect_code(
            c.b.create_layer(&id),
            ErrorCode::ALREADY_EXISTS,
            "create_layer of an existing id",
        )?;
        io(fs::write(p.join("f"), b"data"), "write into layer")?;
        io(fs::create_dir(p.join("d")), "mkdir in layer")?;
        io(fs::write(p.join("d/g"), b"data"), "write in layer subdir")?;
        pe(c.b.delete_layer(&id), "delete_layer")?;
        if p.exists() {
            return Err(format!("deleted layer {} still exists", p.display()));
        }
        if pe(c.b.list_layers(), "list_layers")?.contains(&id) {
            return Err("list_layers still lists a deleted layer".into());
        }
        expect_code(
            c.b.delete_layer(&id),
            ErrorCode::NOT_FOUND,
            "delete_layer of a deleted id",
        )?;
        expect_code(
            c.b.layer_path(&id),
            ErrorCode::NOT_FOUND,
            "layer_path of a deleted id",
        )
    })())
}

fn hostile_ids(c: &Ctx) -> Result<(), String> {
    let before = pe(c.b.list_layers(), "list_layers")?;
    for id in ["", ".", "..", "../escape", "a/b", "/abs", "x\0y"] {
        expect_code(
            c.b.create_layer(id),
            ErrorCode::INVALID_ARGUMENT,
            &format!("create_layer({id:?})"),
        )?;
        expect_code(
            c.b.layer_path(id),
            ErrorCode::INVALID_ARGUMENT,
            &format!("layer_path({id:?})"),
        )?;
        expect_code(
            c.b.delete_layer(id),
            ErrorCode::INVALID_ARGUMENT,
            &format!("delete_layer({id:?})"),
        )?;
    }
    if pe(c.b.list_layers(), "list_layers")? != before {
        return Err("hostile ids changed the set of layers".into());
    }
    Ok(())
}

fn reflink_capability(c: &Ctx) -> Result<(), String> {
    c.with_layer(|_, p| {
        let (a, b) = (p.join("a"), p.join("b"));
        io(fs::write(&a, b"hello"), "write source")?;
        let r = c.b.reflink(&a, &b);
        if c.reflink() {
            pe(r, "reflink with native_reflink declared")?;
            if io(fs::read(&b), "read clone")? != b"hello" {
                return Err("clone content differs".into());
            }
        } else {
            expect_code(r, ErrorCode::UNSUPPORTED, "reflink without native_reflink")?;
            if b.exists() {
                return Err("an Unsupported reflink left a destination file".into());
            }
        }
        Ok(())
    })
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn reflink_content(c: &Ctx) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    c.with_layer(|_, p| {
        let (a, b) = (p.join("a"), p.join("b"));
        let data = pattern(3 << 20, 7);
        io(fs::write(&a, &data), "write source")?;
        io(
            fs::set_permissions(&a, fs::Permissions::from_mode(0o640)),
            "chmod source",
        )?;
        pe(c.b.reflink(&a, &b), "reflink")?;
        if io(fs::read(&b), "read clone")? != data {
            return Err("clone content differs from the source".into());
        }
        let mode = io(fs::metadata(&b), "stat clone")?.permissions().mode() & 0o777;
        if mode != 0o640 {
            return Err(format!("clone mode {mode:o}, source 640"));
        }
        Ok(())
    })
}

fn reflink_independence(c: &Ctx) -> Result<(), String> {
    c.with_layer(|_, p| {
        let mut runner = TestRunner::new(PtConfig {
            cases: 24,
            failure_persistence: None,
            ..PtConfig::default()
        });
        let n = AtomicU64::new(0);
        let strategy = (
            vec(any::<u8>(), 0..20_000),
            vec(any::<u8>(), 1..512),
            any::<u16>(),
            any::<bool>(),
        );
        runner
            .run(&strategy, |(data, patch, at, write_clone)| {
                let k = n.fetch_add(1, Ordering::Relaxed);
                let (a, b) = (p.join(format!("a{k}")), p.join(format!("b{k}")));
                let fail = |m: String| TestCaseError::fail(m);
                fs::write(&a, &data).map_err(|e| fail(e.to_string()))?;
                c.b.reflink(&a, &b).map_err(|e| fail(e.to_string()))?;
                // Overwrite a range of one side in place.
                let (changed, other) = if write_clone { (&b, &a) } else { (&a, &b) };
                let at = if data.is_empty() {
                    0
                } else {
                    at as usize % data.len()
                } as u64;
                {
                    use std::os::unix::fs::FileExt;
                    let f = fs::OpenOptions::new()
                        .write(true)
                        .open(changed)
                        .map_err(|e| fail(e.to_string()))?;
                    f.write_all_at(&patch, at)
                        .map_err(|e| fail(e.to_string()))?;
                }
                let seen = fs::read(other).map_err(|e| fail(e.to_string()))?;
                if seen != data {
                    let first = seen
                        .iter()
                        .zip(&data)
                        .position(|(x, y)| x != y)
                        .unwrap_or(seen.len().min(data.len()));
                    return Err(fail(format!(
                        "writing {} bytes at {at} into the {} changed the {} (first differing byte at offset {first})",
                        patch.len(),
                        if write_clone { "clone" } else { "source" },
                        if write_clone { "source" } else { "clone" }
                    )));
                }
                let _ = fs::remove_file(&a);
                let _ = fs::remove_file(&b);
                Ok(())
            })
            .map_err(|e| summarise_failure(&e))
    })
}

/// One line for a failed property run: the reason and the sizes of the
/// minimal failing case, never the shrunk byte arrays themselves (which
/// proptest's own message prints in full, thousands of lines).
fn summarise_failure(e: &TestError<(Vec<u8>, Vec<u8>, u16, bool)>) -> String {
    match e {
        TestError::Abort(why) => format!("property run aborted: {why}"),
        TestError::Fail(why, (data, patch, at, write_clone)) => format!(
            "{why} [minimal failing case: a {}-byte file, {} bytes written at {} into the {}]",
            data.len(),
            patch.len(),
            if data.is_empty() {
                0
            } else {
                *at as usize % data.len()
            },
            if *write_clone { "clone" } else { "source" }
        ),
    }
}

fn reflink_across_layers(c: &Ctx) -> Result<(), String> {
    c.with_layer(|_, p1| {
        c.with_layer(|_, p2| {
            io(fs::write(p1.join("a"), b"across"), "write source")?;
            pe(
                c.b.reflink(&p1.join("a"), &p2.join("a")),
                "reflink between two layers",
            )?;
            if io(fs::read(p2.join("a")), "read clone")? != b"across" {
                return Err("clone content differs".into());
            }
            Ok(())
        })
    })
}

fn reflink_dst_exists(c: &Ctx) -> Result<(), String> {
    c.with_layer(|_, p| {
        let (a, b) = (p.join("a"), p.join("b"));
        io(fs::write(&a, b"new"), "write source")?;
        io(fs::write(&b, b"keep me"), "write destination")?;
        expect_code(
            c.b.reflink(&a, &b),
            ErrorCode::ALREADY_EXISTS,
            "reflink onto an existing file",
        )?;
        if io(fs::read(&b), "read destination")? != b"keep me" {
            return Err("the existing destination was overwritten".into());
        }
        Ok(())
    })
}

fn reflink_missing_src(c: &Ctx) -> Result<(), String> {
    c.with_layer(|_, p| {
        expect_code(
            c.b.reflink(&p.join("nope"), &p.join("b")),
            ErrorCode::NOT_FOUND,
            "reflink of a missing source",
        )?;
        if p.join("b").exists() {
            return Err("a failed reflink left a destination file".into());
        }
        Ok(())
    })
}

fn reflink_dir_src(c: &Ctx) -> Result<(), String> {
    c.with_layer(|_, p| {
        io(fs::create_dir(p.join("d")), "mkdir")?;
        match c.b.reflink(&p.join("d"), &p.join("b")) {
            Err(e)
                if e.code == ErrorCode::IS_DIRECTORY || e.code == ErrorCode::INVALID_ARGUMENT =>
            {
                if p.join("b").exists() {
                    Err("a refused directory reflink left a destination".into())
                } else if e.message().trim().is_empty() {
                    Err("directory-source error has no message".into())
                } else {
                    Ok(())
                }
            }
            Err(e) => Err(format!(
                "directory source: expected is-directory or invalid-argument, got {e}"
            )),
            Ok(()) => Err("reflink of a directory succeeded".into()),
        }
    })
}

fn snapshot_unsupported(c: &Ctx) -> Result<(), String> {
    c.with_layer(|id, p| {
        io(fs::write(p.join("f"), b"x"), "write")?;
        let before = pe(c.b.list_layers(), "list_layers")?;
        let dst = c.id();
        expect_code(
            c.b.snapshot_layer(id, &dst, true),
            ErrorCode::UNSUPPORTED,
            "snapshot_layer without native_snapshots",
        )?;
        expect_code(
            c.b.snapshot_layer(id, &dst, false),
            ErrorCode::UNSUPPORTED,
            "writable snapshot_layer",
        )?;
        if pe(c.b.list_layers(), "list_layers")? != before {
            return Err("an Unsupported snapshot created a layer".into());
        }
        expect_code(
            c.b.layer_path(&dst),
            ErrorCode::NOT_FOUND,
            "layer_path of the refused snapshot",
        )
    })
}

fn snapshot_isolation(c: &Ctx, read_only: bool) -> Result<(), String> {
    c.with_layer(|id, p| {
        io(fs::write(p.join("f"), b"v1"), "write")?;
        io(fs::create_dir(p.join("d")), "mkdir")?;
        let sid = c.id();
        let sp = pe(c.b.snapshot_layer(id, &sid, read_only), "snapshot_layer")?;
        let r = (|| {
            if io(fs::read(sp.join("f")), "read snapshot")? != b"v1" {
                return Err("snapshot content differs from the source".into());
            }
            io(fs::write(p.join("f"), b"v2"), "write source after snapshot")?;
            io(
                fs::write(p.join("new"), b"n"),
                "create in source after snapshot",
            )?;
            if io(fs::read(sp.join("f")), "read snapshot")? != b"v1" || sp.join("new").exists() {
                return Err(
                    "a write to the source after the snapshot shows in the snapshot".into(),
                );
            }
            let w = fs::write(sp.join("w"), b"w");
            if read_only {
                match w {
                    Ok(()) => return Err("a read-only snapshot accepted a write".into()),
                    Err(e)
                        if e.raw_os_error() == Some(libc_erofs())
                            || e.kind() == std::io::ErrorKind::PermissionDenied => {}
                    Err(e) => {
                        return Err(format!(
                            "writing a read-only snapshot: expected EROFS, got {e}"
                        ))
                    }
                }
            } else {
                io(w, "write into a writable snapshot")?;
                if p.join("w").exists() {
                    return Err("a write to the writable snapshot shows in the source".into());
                }
            }
            Ok(())
        })();
        let d = pe(c.b.delete_layer(&sid), "delete snapshot layer");
        r.and(d)
    })
}

fn libc_erofs() -> i32 {
    30 // EROFS on Linux and macOS
}

fn snapshot_ro(c: &Ctx) -> Result<(), String> {
    snapshot_isolation(c, true)
}

fn snapshot_rw(c: &Ctx) -> Result<(), String> {
    snapshot_isolation(c, false)
}
