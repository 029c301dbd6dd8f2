//! The opt-in wrapper around `diskutil apfs createSnapshot` /
//! `deleteSnapshot` (`volume_snapshots = true`).
//!
//! These are snapshots of a whole APFS volume, not of one layer directory,
//! and Apple offers no public API to make them on a user-managed volume:
//! `diskutil` accepts the verb only on some releases and volumes (Time
//! Machine–managed ones) and with enough privilege. So the backstore never
//! uses them for `snapshot_layer` (which stays `Unsupported`); this wrapper
//! is for callers of the Rust API that manage such volumes. Every failure of
//! the tool comes back as one clear line: an unknown verb is `Unsupported`,
//! missing privileges `PermissionDenied`.

use agentfs_plugin_api::{ErrorCode, PluginError, PluginResult};

use crate::{
    names::sanitize_snapshot_name,
    parse::{self, ListedSnapshot},
    tools::{Tool, ToolError, Tools},
};

/// A snapshot `diskutil` made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeSnapshot {
    /// Its UUID (upper-case), the stable identifier.
    pub uuid: String,
    /// The sanitised name it was given.
    pub name: String,
}

/// Snapshot operations on one APFS volume (a device like `disk5s1` or a
/// mount point).
#[derive(Debug, Clone)]
pub struct VolumeSnapshots {
    tools: Tools,
    volume: String,
}

impl VolumeSnapshots {
    /// The wrapper for `volume`.
    pub fn new(tools: Tools, volume: impl Into<String>) -> Self {
        Self {
            tools,
            volume: volume.into(),
        }
    }

    /// The volume it snapshots.
    pub fn volume(&self) -> &str {
        &self.volume
    }

    /// The arguments of the create command for a sanitised `name`.
    pub fn create_args<'a>(&'a self, name: &'a str) -> [&'a str; 5] {
        ["apfs", "createSnapshot", &self.volume, name, "-readonly"]
    }

    /// Creates a read-only snapshot of the volume named `name` (sanitised
    /// first) and returns its UUID as `diskutil` printed it.
    pub fn create(&self, name: &str) -> PluginResult<VolumeSnapshot> {
        let name = sanitize_snapshot_name(name)?;
        let uuid = self
            .tools
            .run_and_read(
                Tool::Diskutil,
                &self.create_args(&name),
                "snapshot UUID",
                parse::snapshot_uuid,
            )
            .map_err(|e| context(e, "create", &self.volume))?;
        tracing::info!(volume = %self.volume, %uuid, %name, "created APFS volume snapshot");
        Ok(VolumeSnapshot { uuid, name })
    }

    /// Deletes the snapshot with `uuid`.
    pub fn delete(&self, uuid: &str) -> PluginResult<()> {
        if !parse::is_uuid(uuid) {
            return Err(PluginError::invalid(format!(
                "{uuid:?} is not a snapshot UUID (8-4-4-4-12 hex digits)"
            )));
        }
        self.tools
            .run(
                Tool::Diskutil,
                &["apfs", "deleteSnapshot", &self.volume, "-uuid", uuid],
            )
            .map(|_| ())
            .map_err(|e| context(e, "delete", &self.volume))
    }

    /// The volume's snapshots.
    pub fn list(&self) -> PluginResult<Vec<ListedSnapshot>> {
        let out = self
            .tools
            .run(Tool::Diskutil, &["apfs", "listSnapshots", &self.volume])
            .map_err(|e| context(e, "list", &self.volume))?;
        Ok(parse::snapshot_list(&out.stdout))
    }
}

fn context(e: ToolError, verb: &str, volume: &str) -> PluginError {
    let mut pe = PluginError::from(e);
    let why = match pe.code {
        ErrorCode::UNSUPPORTED => {
            " (this macOS cannot snapshot that volume with diskutil; AgentFS snapshots layers without it)"
        }
        ErrorCode::PERMISSION_DENIED => " (diskutil needs more privilege for APFS snapshots)",
        _ => "",
    };
    pe.message = format!(
        "APFS volume snapshot: {verb} on {volume}: {}{why}",
        pe.message()
    )
    .into();
    pe
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakeTools;

    #[test]
    fn create_sanitises_the_name_runs_diskutil_and_parses_the_uuid() {
        let fake = FakeTools::new();
        fake.prints(
            Tool::Diskutil,
            include_str!("../fixtures/diskutil-createSnapshot.txt"),
        );
        let vs = VolumeSnapshots::new(fake.tools(), "disk5s1");
        let s = vs.create("agentfs before refactor").unwrap();
        assert_eq!(
            s,
            VolumeSnapshot {
                uuid: "6D1E5C7A-3F2B-4E8D-9A1C-0B2D3E4F5A6B".into(),
                name: "agentfs_before_refactor".into()
            }
        );
        assert_eq!(
            fake.calls(),
            vec!["diskutil apfs createSnapshot disk5s1 agentfs_before_refactor -readonly"]
        );
    }

    #[test]
    fn a_name_that_looks_like_an_option_never_reaches_diskutil_as_one() {
        let fake = FakeTools::new();
        fake.prints(
            Tool::Diskutil,
            include_str!("../fixtures/diskutil-createSnapshot.txt"),
        );
        let vs = VolumeSnapshots::new(fake.tools(), "disk5s1");
        vs.create("-uuid x").unwrap();
        assert_eq!(
            fake.calls(),
            vec!["diskutil apfs createSnapshot disk5s1 uuid_x -readonly"]
        );
        let e = vs.create(" -- ").unwrap_err();
        assert_eq!(e.code, ErrorCode::INVALID_ARGUMENT);
        assert_eq!(fake.calls().len(), 1, "an unusable name runs nothing");
    }

    #[test]
    fn failures_of_diskutil_map_to_clear_errors() {
        for (fixture, code, needle) in [
            (
                include_str!("../fixtures/diskutil-createSnapshot-privileges.txt"),
                ErrorCode::PERMISSION_DENIED,
                "needs more privilege",
            ),
            (
                include_str!("../fixtures/diskutil-apfs-usage.txt"),
                ErrorCode::UNSUPPORTED,
                "cannot snapshot that volume",
            ),
        ] {
            let fake = FakeTools::new();
            fake.fails(Tool::Diskutil, fixture, 1);
            let e = VolumeSnapshots::new(fake.tools(), "disk5s1")
                .create("x")
                .unwrap_err();
            assert_eq!(e.code, code, "{e}");
            assert!(e.message().starts_with("APFS volume snapshot: create on disk5s1: `diskutil apfs createSnapshot disk5s1 x -readonly` failed (exit 1): "), "{e}");
            assert!(e.message().contains(needle), "{e}");
            assert!(!e.message().contains('\n'));
        }
    }

    #[test]
    fn success_without_a_uuid_is_an_error_not_a_guess() {
        let fake = FakeTools::new();
        fake.prints(
            Tool::Diskutil,
            "Started APFS operation\nFinished APFS operation\n",
        );
        let e = VolumeSnapshots::new(fake.tools(), "disk5s1")
            .create("x")
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::IO);
        assert!(e.message().contains("no snapshot UUID"), "{e}");
    }

    #[test]
    fn delete_and_list_run_the_documented_verbs() {
        let fake = FakeTools::new();
        fake.script(
            Tool::Diskutil,
            &format!(
                "case \"$2\" in listSnapshots) cat '{}';; deleteSnapshot) cat '{}';; esac",
                fake.fixture(
                    "list",
                    include_str!("../fixtures/diskutil-listSnapshots-tree.txt")
                )
                .display(),
                fake.fixture(
                    "del",
                    include_str!("../fixtures/diskutil-deleteSnapshot.txt")
                )
                .display(),
            ),
        );
        let vs = VolumeSnapshots::new(fake.tools(), "/Volumes/Data");
        assert_eq!(vs.list().unwrap().len(), 2);
        vs.delete("CB2895FA-DE9E-467F-912C-208C88FF13C8").unwrap();
        assert_eq!(
            vs.delete("not-a-uuid").unwrap_err().code,
            ErrorCode::INVALID_ARGUMENT
        );
        assert_eq!(
            fake.calls(),
            vec![
                "diskutil apfs listSnapshots /Volumes/Data",
                "diskutil apfs deleteSnapshot /Volumes/Data -uuid CB2895FA-DE9E-467F-912C-208C88FF13C8",
            ]
        );
    }

    #[test]
    fn concurrent_creates_all_succeed_with_unique_uuids() {
        let fake = FakeTools::new();
        // Each run prints a UUID of its own, made from the shell's pid.
        fake.script(
            Tool::Diskutil,
            "printf 'Created APFS Snapshot %08X-0000-4000-8000-000000000000\\n' $$",
        );
        let vs = VolumeSnapshots::new(fake.tools(), "disk5s1");
        let uuids: Vec<String> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..16)
                .map(|i| {
                    let vs = &vs;
                    s.spawn(move || vs.create(&format!("snap {i}")).unwrap().uuid)
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let unique: std::collections::HashSet<_> = uuids.iter().collect();
        assert_eq!(unique.len(), 16, "{uuids:?}");
        assert_eq!(fake.calls().len(), 16);
    }
}
