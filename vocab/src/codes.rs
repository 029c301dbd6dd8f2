//! Error codes: the numbers that plugin errors (`ErrorCode` in the plugin
//! ABI) and wire errors carry, their stable names, and the errno mapping.
//! The set is open: a newer peer may send a code this build does not know;
//! it is carried through and shown by number.

/// The capability is absent; the host falls back.
pub const UNSUPPORTED: u32 = 1;
/// The named object does not exist.
pub const NOT_FOUND: u32 = 2;
/// The destination already exists.
pub const ALREADY_EXISTS: u32 = 3;
/// The object is in use (e.g. a snapshot others depend on).
pub const BUSY: u32 = 4;
/// An argument or option is invalid.
pub const INVALID_ARGUMENT: u32 = 5;
/// Source and destination are on different filesystems.
pub const CROSS_DEVICE: u32 = 6;
/// No space left on the device.
pub const NO_SPACE: u32 = 7;
/// The caller lacks permission.
pub const PERMISSION_DENIED: u32 = 8;
/// The object is read-only.
pub const READ_ONLY: u32 = 9;
/// Any other I/O error.
pub const IO: u32 = 10;
/// A plugin panicked; the panic was caught at the boundary.
pub const PANICKED: u32 = 11;
/// A directory was given where a file was expected.
pub const IS_DIRECTORY: u32 = 12;
/// A non-directory was given where a directory was expected.
pub const NOT_DIRECTORY: u32 = 13;
/// A directory is not empty.
pub const NOT_EMPTY: u32 = 14;
/// The plugin cannot run on this platform.
pub const WRONG_PLATFORM: u32 = 15;

/// Every code this build knows, with its stable name.
pub const ALL: &[(u32, &str)] = &[
    (UNSUPPORTED, "unsupported"),
    (NOT_FOUND, "not-found"),
    (ALREADY_EXISTS, "already-exists"),
    (BUSY, "busy"),
    (INVALID_ARGUMENT, "invalid-argument"),
    (CROSS_DEVICE, "cross-device"),
    (NO_SPACE, "no-space"),
    (PERMISSION_DENIED, "permission-denied"),
    (READ_ONLY, "read-only"),
    (IO, "io"),
    (PANICKED, "panicked"),
    (IS_DIRECTORY, "is-directory"),
    (NOT_DIRECTORY, "not-directory"),
    (NOT_EMPTY, "not-empty"),
    (WRONG_PLATFORM, "wrong-platform"),
];

/// The code's stable name (`"not-found"`), or `"unknown"`.
pub fn name(code: u32) -> &'static str {
    ALL.iter()
        .find(|(c, _)| *c == code)
        .map_or("unknown", |(_, n)| n)
}

/// The closest code for an OS errno.
pub fn from_errno(errno: i32) -> u32 {
    match errno {
        libc::ENOENT => NOT_FOUND,
        libc::EEXIST => ALREADY_EXISTS,
        libc::EBUSY => BUSY,
        libc::EINVAL => INVALID_ARGUMENT,
        libc::EXDEV => CROSS_DEVICE,
        libc::ENOSPC | libc::EDQUOT => NO_SPACE,
        libc::EPERM | libc::EACCES => PERMISSION_DENIED,
        libc::EROFS => READ_ONLY,
        libc::EISDIR => IS_DIRECTORY,
        libc::ENOTDIR => NOT_DIRECTORY,
        libc::ENOTEMPTY => NOT_EMPTY,
        e if e == libc::EOPNOTSUPP || e == libc::ENOTSUP || e == libc::ENOSYS => UNSUPPORTED,
        _ => IO,
    }
}

/// The closest errno for a code (`EIO` for codes without one).
pub fn to_errno(code: u32) -> i32 {
    match code {
        UNSUPPORTED => libc::ENOTSUP,
        NOT_FOUND => libc::ENOENT,
        ALREADY_EXISTS => libc::EEXIST,
        BUSY => libc::EBUSY,
        INVALID_ARGUMENT => libc::EINVAL,
        CROSS_DEVICE => libc::EXDEV,
        NO_SPACE => libc::ENOSPC,
        PERMISSION_DENIED => libc::EACCES,
        READ_ONLY => libc::EROFS,
        IS_DIRECTORY => libc::EISDIR,
        NOT_DIRECTORY => libc::ENOTDIR,
        NOT_EMPTY => libc::ENOTEMPTY,
        _ => libc::EIO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_round_trips_for_codes_that_have_one() {
        for &(code, _) in ALL {
            let e = to_errno(code);
            if e != libc::EIO {
                assert_eq!(from_errno(e), code, "{}", name(code));
            }
        }
        assert_eq!(from_errno(libc::EOPNOTSUPP), UNSUPPORTED);
        assert_eq!(name(999), "unknown");
        assert_eq!(name(BUSY), "busy");
    }
}
