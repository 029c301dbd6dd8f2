//! Parsers for what `hdiutil` and `diskutil` print. Pure functions over
//! text, tested on Linux against the files in `fixtures/`.

use std::path::PathBuf;

/// The whole-disk device `hdiutil attach -nomount ram://N` printed
/// (`/dev/diskN`), from its first `/dev/disk` line.
pub fn attached_device(out: &str) -> Option<String> {
    out.lines()
        .filter_map(|l| l.split_whitespace().next())
        .find(|t| is_whole_disk(t.trim_start_matches("/dev/")) && t.starts_with("/dev/"))
        .map(str::to_string)
}

/// True for `diskN` (a whole disk, not a slice `diskNsM`).
pub fn is_whole_disk(id: &str) -> bool {
    id.strip_prefix("disk")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// True for `diskN` or `diskNsM` (a BSD disk identifier, without `/dev/`).
pub fn is_disk_identifier(id: &str) -> bool {
    let Some(rest) = id.strip_prefix("disk") else {
        return false;
    };
    let mut parts = rest.split('s');
    let digits =
        |p: Option<&str>| p.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    digits(parts.next()) && parts.all(|p| digits(Some(p)))
}

/// The disk a `diskutil apfs` operation made: `Disk from APFS operation:
/// diskN`, else `Created new APFS Container|Volume diskN`.
pub fn apfs_operation_disk(out: &str) -> Option<String> {
    let after = |prefix: &str| {
        out.lines().find_map(|l| {
            l.trim()
                .strip_prefix(prefix)
                .map(str::trim)
                .and_then(|r| r.split_whitespace().next())
                .filter(|d| is_disk_identifier(d))
                .map(str::to_string)
        })
    };
    after("Disk from APFS operation:")
        .or_else(|| after("Created new APFS Container"))
        .or_else(|| after("Created new APFS Volume"))
}

/// What `diskutil info <disk>` says about a volume.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskInfo {
    /// `Device Identifier` (`disk5s1`).
    pub device: Option<String>,
    /// `Volume Name`.
    pub volume_name: Option<String>,
    /// `Mount Point`, when mounted.
    pub mount_point: Option<PathBuf>,
    /// `File System Personality` (`APFS`, `HFS+`, ...).
    pub personality: Option<String>,
    /// `APFS Physical Store` (`disk4`).
    pub physical_store: Option<String>,
}

/// Parses `diskutil info` text (`   Key:   value` lines).
pub fn disk_info(out: &str) -> DiskInfo {
    let mut info = DiskInfo::default();
    for line in out.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        let some = || (!value.is_empty()).then(|| value.to_string());
        match key.trim() {
            "Device Identifier" => info.device = some(),
            "Volume Name" => info.volume_name = some(),
            "Mount Point" => {
                info.mount_point = some().filter(|v| v.starts_with('/')).map(PathBuf::from)
            }
            "File System Personality" => info.personality = some(),
            "APFS Physical Store" => info.physical_store = some(),
            _ => {}
        }
    }
    info
}

/// One device line of an attached image in `hdiutil info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceEntry {
    /// `/dev/diskN` or `/dev/diskNsM`.
    pub dev: String,
    /// Where it is mounted, if it is.
    pub mount_point: Option<PathBuf>,
}

/// One attached image in `hdiutil info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedImage {
    /// `image-path` (`ram://N` for a RAM disk).
    pub image_path: String,
    /// Its device lines, in order (the physical device first).
    pub devices: Vec<DeviceEntry>,
}

impl AttachedImage {
    /// True for a RAM disk (`ram://` image path).
    pub fn is_ram_disk(&self) -> bool {
        self.image_path.starts_with("ram://")
    }

    /// The whole-disk device that backs the image (its first device line).
    pub fn physical_device(&self) -> Option<&str> {
        self.devices
            .iter()
            .map(|d| d.dev.as_str())
            .find(|d| is_whole_disk(d.trim_start_matches("/dev/")))
    }
}

/// Parses `hdiutil info` text: sections separated by `=====` lines, each
/// with `key : value` lines and `dev<TAB>hint<TAB>mount point` lines.
pub fn hdiutil_info(out: &str) -> Vec<AttachedImage> {
    let mut images = Vec::new();
    let mut current: Option<AttachedImage> = None;
    for line in out.lines() {
        if line.starts_with("====") {
            images.extend(current.take());
            current = Some(AttachedImage {
                image_path: String::new(),
                devices: Vec::new(),
            });
            continue;
        }
        let Some(img) = current.as_mut() else {
            continue;
        };
        if line.starts_with("/dev/") {
            let mut cols = line.split('\t');
            let dev = cols.next().unwrap_or("").trim().to_string();
            let mount = cols.nth(1).map(str::trim).unwrap_or("");
            img.devices.push(DeviceEntry {
                dev,
                mount_point: (!mount.is_empty()).then(|| PathBuf::from(mount)),
            });
        } else if let Some((key, value)) = line.split_once(" : ") {
            if key.trim() == "image-path" {
                img.image_path = value.trim().to_string();
            }
        }
    }
    images.extend(current);
    images.retain(|i| !i.image_path.is_empty() || !i.devices.is_empty());
    images
}

/// True for a UUID in 8-4-4-4-12 hex form.
pub fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(p, n)| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The UUIDs on one line, upper-cased, in order.
fn uuids_in(line: &str) -> impl Iterator<Item = String> + '_ {
    line.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|t| is_uuid(t))
        .map(|t| t.to_ascii_uppercase())
}

/// The snapshot UUID `diskutil apfs createSnapshot` printed: the first UUID
/// on a line that mentions a snapshot, else the first UUID anywhere.
pub fn snapshot_uuid(out: &str) -> Option<String> {
    out.lines()
        .filter(|l| l.to_ascii_lowercase().contains("snapshot"))
        .find_map(|l| uuids_in(l).next())
        .or_else(|| out.lines().find_map(|l| uuids_in(l).next()))
}

/// One snapshot listed by `diskutil apfs listSnapshots`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedSnapshot {
    /// Its UUID, upper-cased.
    pub uuid: String,
    /// Its name, when listed.
    pub name: Option<String>,
}

/// Parses both layouts of `diskutil apfs listSnapshots`: the tree
/// (`+-- <UUID>` then `|   Name: ...`) and the flat one (`Snapshot Name:`
/// then `Snapshot UUID:`).
pub fn snapshot_list(out: &str) -> Vec<ListedSnapshot> {
    let mut list: Vec<ListedSnapshot> = Vec::new();
    let mut pending_name: Option<String> = None;
    for raw in out.lines() {
        let line = raw.trim_start_matches(['|', ' ', '\t']).trim_end();
        if let Some(rest) = line.strip_prefix("+--") {
            if let Some(uuid) = uuids_in(rest).next() {
                list.push(ListedSnapshot { uuid, name: None });
            }
        } else if let Some(name) = line.strip_prefix("Snapshot Name:") {
            pending_name = Some(name.trim().to_string());
        } else if let Some(uuid) = line.strip_prefix("Snapshot UUID:") {
            if let Some(uuid) = uuids_in(uuid).next() {
                list.push(ListedSnapshot {
                    uuid,
                    name: pending_name.take(),
                });
            }
        } else if let Some(name) = line.strip_prefix("Name:") {
            if let Some(last) = list.last_mut().filter(|s| s.name.is_none()) {
                last.name = Some(name.trim().to_string());
            }
        }
    }
    list
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attach_output_gives_the_whole_disk() {
        assert_eq!(
            attached_device(include_str!("../fixtures/hdiutil-attach-ram.txt")).as_deref(),
            Some("/dev/disk4")
        );
        assert_eq!(
            attached_device(
                "/dev/disk12\tGUID_partition_scheme\t\n/dev/disk12s1\tApple_HFS\t/Volumes/x\n"
            )
            .as_deref(),
            Some("/dev/disk12")
        );
        assert_eq!(attached_device("hdiutil: attach failed\n"), None);
        assert_eq!(attached_device(""), None);
    }

    #[test]
    fn disk_identifiers_are_recognised() {
        for ok in ["disk0", "disk12", "disk5s1", "disk3s1s1"] {
            assert!(is_disk_identifier(ok), "{ok}");
        }
        for bad in [
            "disk",
            "diskX",
            "disk5s",
            "rdisk5",
            "/dev/disk5",
            "disk5 s1",
            "",
        ] {
            assert!(!is_disk_identifier(bad), "{bad}");
        }
        assert!(is_whole_disk("disk4") && !is_whole_disk("disk4s1"));
    }

    #[test]
    fn apfs_operations_name_the_disk_they_made() {
        assert_eq!(
            apfs_operation_disk(include_str!(
                "../fixtures/diskutil-apfs-createContainer.txt"
            ))
            .as_deref(),
            Some("disk5")
        );
        assert_eq!(
            apfs_operation_disk(include_str!("../fixtures/diskutil-apfs-addVolume.txt")).as_deref(),
            Some("disk5s1")
        );
        assert_eq!(
            apfs_operation_disk("Creating APFS Container\nCreated new APFS Container disk271\n")
                .as_deref(),
            Some("disk271")
        );
        assert_eq!(apfs_operation_disk("Error: -69808\n"), None);
        assert_eq!(
            apfs_operation_disk("Disk from APFS operation: garbage\n"),
            None
        );
    }

    #[test]
    fn disk_info_reads_name_mount_point_and_personality() {
        let i = disk_info(include_str!("../fixtures/diskutil-info-volume.txt"));
        assert_eq!(i.device.as_deref(), Some("disk5s1"));
        assert_eq!(i.volume_name.as_deref(), Some("AgentFS-4242-0badc0de"));
        assert_eq!(
            i.mount_point.as_deref(),
            Some(std::path::Path::new("/Volumes/AgentFS-4242-0badc0de"))
        );
        assert_eq!(i.personality.as_deref(), Some("APFS"));
        assert_eq!(i.physical_store.as_deref(), Some("disk4"));

        let u = disk_info(include_str!("../fixtures/diskutil-info-unmounted.txt"));
        assert_eq!(u.volume_name.as_deref(), Some("AgentFS-31337-00c0ffee"));
        assert_eq!(u.mount_point, None);
        // An empty or "Not applicable" mount point is no mount point.
        assert_eq!(
            disk_info("   Mount Point:              \n").mount_point,
            None
        );
        assert_eq!(
            disk_info("   Mount Point:   Not applicable (no file system)\n").mount_point,
            None
        );
        // A mount point with spaces and colons survives.
        assert_eq!(
            disk_info("   Mount Point:   /Volumes/My Disk: two\n").mount_point,
            Some(PathBuf::from("/Volumes/My Disk: two"))
        );
    }

    #[test]
    fn hdiutil_info_lists_images_devices_and_mount_points() {
        let imgs = hdiutil_info(include_str!("../fixtures/hdiutil-info.txt"));
        assert_eq!(imgs.len(), 5);
        assert_eq!(
            imgs[0].image_path,
            "/Users/runner/Downloads/Tool Installer.dmg"
        );
        assert!(!imgs[0].is_ram_disk());
        assert_eq!(
            imgs[0].devices[1].mount_point.as_deref(),
            Some(std::path::Path::new("/Volumes/Tool Installer"))
        );
        let ram = &imgs[1];
        assert!(ram.is_ram_disk());
        assert_eq!(ram.physical_device(), Some("/dev/disk4"));
        assert_eq!(
            ram.devices,
            vec![
                DeviceEntry {
                    dev: "/dev/disk4".into(),
                    mount_point: None
                },
                DeviceEntry {
                    dev: "/dev/disk5".into(),
                    mount_point: None
                },
                DeviceEntry {
                    dev: "/dev/disk5s1".into(),
                    mount_point: Some("/Volumes/AgentFS-4242-0badc0de".into())
                },
            ]
        );
        assert_eq!(imgs[3].devices[2].mount_point, None);
        assert_eq!(
            imgs[4].devices[2].mount_point.as_deref(),
            Some(std::path::Path::new("/Volumes/AgentFS-7-1234abcd 1"))
        );
        assert!(hdiutil_info("framework : 1\ndriver : 1\nimages : 0\n").is_empty());
    }

    #[test]
    fn snapshot_uuid_is_found_and_normalised() {
        assert_eq!(
            snapshot_uuid(include_str!("../fixtures/diskutil-createSnapshot.txt")).as_deref(),
            Some("6D1E5C7A-3F2B-4E8D-9A1C-0B2D3E4F5A6B")
        );
        // A volume UUID on an unrelated line loses to the snapshot line.
        let out = "Volume 0E9F4C4B-8C1F-4B5A-9D0E-2C8E1A6F7B3D\nSnapshot uuid=6d1e5c7a-3f2b-4e8d-9a1c-0b2d3e4f5a6b\n";
        assert_eq!(
            snapshot_uuid(out).as_deref(),
            Some("6D1E5C7A-3F2B-4E8D-9A1C-0B2D3E4F5A6B")
        );
        assert_eq!(
            snapshot_uuid("created 0E9F4C4B-8C1F-4B5A-9D0E-2C8E1A6F7B3D\n").as_deref(),
            Some("0E9F4C4B-8C1F-4B5A-9D0E-2C8E1A6F7B3D")
        );
        for bad in [
            "Finished\n",
            "Snapshot 6D1E5C7A-3F2B-4E8D-9A1C\n",
            "Snapshot 6D1E5C7A-3F2B-4E8D-9A1C-0B2D3E4F5A6BX\n",
        ] {
            assert_eq!(snapshot_uuid(bad), None, "{bad}");
        }
        assert!(is_uuid("6D1E5C7A-3F2B-4E8D-9A1C-0B2D3E4F5A6B"));
        assert!(!is_uuid("6D1E5C7A-3F2B-4E8D-9A1C-0B2D3E4F5A6G"));
    }

    #[test]
    fn both_snapshot_list_layouts_parse() {
        let tree = snapshot_list(include_str!("../fixtures/diskutil-listSnapshots-tree.txt"));
        assert_eq!(
            tree,
            vec![
                ListedSnapshot {
                    uuid: "7A5B1A0C-5F39-4D7F-9A8E-2E4B6C1D0F3E".into(),
                    name: Some("com.apple.TimeMachine.2024-01-01-101010.local".into())
                },
                ListedSnapshot {
                    uuid: "CB2895FA-DE9E-467F-912C-208C88FF13C8".into(),
                    name: Some("com.apple.asr.254".into())
                },
            ]
        );
        let flat = snapshot_list(include_str!("../fixtures/diskutil-listSnapshots-flat.txt"));
        assert_eq!(flat.len(), 2);
        assert_eq!(flat[1].uuid, "6D1E5C7A-3F2B-4E8D-9A1C-0B2D3E4F5A6B");
        assert_eq!(flat[1].name.as_deref(), Some("agentfs-ünïcode snapshot"));
        assert!(
            snapshot_list(include_str!("../fixtures/diskutil-listSnapshots-none.txt")).is_empty()
        );
    }
}
