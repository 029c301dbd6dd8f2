//! What the core reports about entries: kind, mode, size, times.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// The kind of a directory entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A FIFO, socket or device node.
    Other,
}

impl FileKind {
    /// From the `S_IFMT` bits of a mode.
    #[allow(clippy::unnecessary_cast)] // mode_t is u16 on macOS
    pub fn from_mode(mode: u32) -> Self {
        match mode & libc::S_IFMT as u32 {
            m if m == libc::S_IFREG as u32 => Self::File,
            m if m == libc::S_IFDIR as u32 => Self::Dir,
            m if m == libc::S_IFLNK as u32 => Self::Symlink,
            _ => Self::Other,
        }
    }

    /// One letter, as `ls -l` shows it.
    pub fn letter(self) -> char {
        match self {
            Self::File => '-',
            Self::Dir => 'd',
            Self::Symlink => 'l',
            Self::Other => '?',
        }
    }
}

/// What a [`FileKind::Other`] entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Special {
    /// A named pipe.
    Fifo,
    /// A UNIX socket.
    Socket,
    /// A character device node.
    CharDevice,
    /// A block device node.
    BlockDevice,
}

impl Special {
    /// From the `S_IFMT` bits of a mode (`None` for a file, directory or
    /// symlink).
    #[allow(clippy::unnecessary_cast)] // mode_t is u16 on macOS
    pub fn from_mode(mode: u32) -> Option<Self> {
        match mode & libc::S_IFMT as u32 {
            m if m == libc::S_IFIFO as u32 => Some(Self::Fifo),
            m if m == libc::S_IFSOCK as u32 => Some(Self::Socket),
            m if m == libc::S_IFCHR as u32 => Some(Self::CharDevice),
            m if m == libc::S_IFBLK as u32 => Some(Self::BlockDevice),
            _ => None,
        }
    }
}

/// Which layer of a branch an entry comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "kind", content = "id")]
pub enum Origin {
    /// The branch's own writable layer.
    Active,
    /// A committed layer (the id names it).
    Committed(String),
    /// The base directory.
    Base,
}

/// Metadata of one entry in a merged view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stat {
    /// File, directory, symlink or other.
    pub kind: FileKind,
    /// Permission bits (`0o7777`).
    pub mode: u32,
    /// Size in bytes (for a symlink, the target's length).
    pub size: u64,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Hard link count in the layer holding the entry.
    pub nlink: u64,
    /// Inode number in the layer holding the entry (changes on copy-up).
    pub ino: u64,
    /// Device of the layer holding the entry.
    pub dev: u64,
    /// For [`FileKind::Other`]: which special file it is.
    pub special: Option<Special>,
    /// The device a device node stands for (else 0).
    pub rdev: u64,
    /// Last access.
    #[serde(serialize_with = "ser_time")]
    pub atime: SystemTime,
    /// Last modification.
    #[serde(serialize_with = "ser_time")]
    pub mtime: SystemTime,
    /// The layer the entry comes from.
    pub origin: Origin,
}

fn ser_time<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    s.serialize_f64(d.as_secs_f64())
}

/// A time from seconds and nanoseconds since the epoch (may be negative).
pub(crate) fn time_from(secs: i64, nsec: i64) -> SystemTime {
    let nsec = nsec.clamp(0, 999_999_999) as u32;
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsec)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + Duration::from_nanos(nsec.into())
    }
}

/// One entry of a merged directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// The entry's name (in JSON: `name`, with U+FFFD for bytes that are
    /// not UTF-8, and then `name_bytes`, the exact bytes).
    pub name: std::ffi::OsString,
    /// Its kind.
    pub kind: FileKind,
}

impl Serialize for DirEntry {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        use std::os::unix::ffi::OsStrExt;
        let exact = self.name.to_str().is_none();
        let mut st = s.serialize_struct("DirEntry", 2 + usize::from(exact))?;
        st.serialize_field("name", &self.name.to_string_lossy())?;
        if exact {
            st.serialize_field("name_bytes", self.name.as_bytes())?;
        }
        st.serialize_field("kind", &self.kind)?;
        st.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_from_mode() {
        assert_eq!(FileKind::from_mode(0o100644), FileKind::File);
        assert_eq!(FileKind::from_mode(0o040755), FileKind::Dir);
        assert_eq!(FileKind::from_mode(0o120777), FileKind::Symlink);
        assert_eq!(FileKind::from_mode(0o010644), FileKind::Other);
        assert_eq!(Special::from_mode(0o010644), Some(Special::Fifo));
        assert_eq!(Special::from_mode(0o140755), Some(Special::Socket));
        assert_eq!(Special::from_mode(0o020666), Some(Special::CharDevice));
        assert_eq!(Special::from_mode(0o060660), Some(Special::BlockDevice));
        assert_eq!(Special::from_mode(0o100644), None);
    }

    #[test]
    fn negative_times_are_before_the_epoch() {
        assert!(time_from(-1, 0) < UNIX_EPOCH);
        assert_eq!(
            time_from(1, 5),
            UNIX_EPOCH + Duration::from_secs(1) + Duration::from_nanos(5)
        );
    }
}
