//! Filesystem probe: type name from statfs, capacity and usage from statvfs.

use std::{ffi::CString, os::unix::ffi::OsStrExt, path::Path};

use agentfs_plugin_api::{backstore::StoreStatus, PluginError, PluginResult};

fn cpath(p: &Path) -> PluginResult<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| PluginError::invalid(format!("path {} contains a NUL byte", p.display())))
}

/// Name of a Linux filesystem magic number (`statfs.f_type`).
pub fn linux_fs_name(magic: i64) -> &'static str {
    match magic {
        0x9123_683E => "btrfs",
        0x5846_5342 => "xfs",
        0xEF53 => "ext4",
        0x0102_1994 => "tmpfs",
        0x8584_58F6 => "ramfs",
        0x794C_7630 => "overlay",
        0x6969 => "nfs",
        0x6573_5546 => "fuse",
        0x2FC1_2FC1 => "zfs",
        0xF2F5_2010 => "f2fs",
        _ => "other",
    }
}

/// The type of the filesystem holding `p` (`btrfs`, `xfs`, `ext4`, `tmpfs`,
/// `apfs`, `hfs`, ...).
pub fn fs_type_of(p: &Path) -> PluginResult<String> {
    let c = cpath(p)?;
    // SAFETY: `statfs` is plain old data; all-zero is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a valid out-pointer.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(PluginError::from_io(
            format!("statfs {}", p.display()),
            &std::io::Error::last_os_error(),
        ));
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        #[allow(clippy::unnecessary_cast)]
        Ok(linux_fs_name(st.f_type as i64).to_string())
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        Ok(fstypename_to_string(&st.f_fstypename))
    }
}

/// Decodes a BSD `f_fstypename` field (NUL-padded C chars).
pub fn fstypename_to_string(raw: &[libc::c_char]) -> String {
    let bytes: Vec<u8> = raw
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Builds a [`StoreStatus`] for `root`: type, capacity and usage.
pub fn status_of(root: &Path) -> PluginResult<StoreStatus> {
    let c = cpath(root)?;
    // SAFETY: `statvfs` is plain old data; all-zero is a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a valid out-pointer.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(PluginError::from_io(
            format!("statvfs {}", root.display()),
            &std::io::Error::last_os_error(),
        ));
    }
    #[allow(clippy::unnecessary_cast)]
    let frsize = st.f_frsize as u64;
    #[allow(clippy::unnecessary_cast)]
    let (blocks, bfree) = (st.f_blocks as u64, st.f_bfree as u64);
    Ok(StoreStatus {
        fs_type: fs_type_of(root)?,
        capacity_bytes: blocks.saturating_mul(frsize),
        used_bytes: blocks.saturating_sub(bfree).saturating_mul(frsize),
        root: root.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_numbers_map_to_names() {
        assert_eq!(linux_fs_name(0x9123683E), "btrfs");
        assert_eq!(linux_fs_name(0x58465342), "xfs");
        assert_eq!(linux_fs_name(0xEF53), "ext4");
        assert_eq!(linux_fs_name(0x01021994), "tmpfs");
        assert_eq!(linux_fs_name(1), "other");
    }

    #[test]
    fn fstypename_decoding_stops_at_nul() {
        let mut raw = [0 as libc::c_char; 16];
        for (i, b) in b"apfs".iter().enumerate() {
            raw[i] = *b as libc::c_char;
        }
        assert_eq!(fstypename_to_string(&raw), "apfs");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn dev_shm_is_tmpfs_and_status_is_sane() {
        if !Path::new("/dev/shm").is_dir() {
            eprintln!("skipped: no /dev/shm on this machine");
            return;
        }
        assert_eq!(fs_type_of(Path::new("/dev/shm")).unwrap(), "tmpfs");
        let st = status_of(Path::new("/dev/shm")).unwrap();
        assert!(st.capacity_bytes > 0 && st.used_bytes <= st.capacity_bytes);
    }
}
