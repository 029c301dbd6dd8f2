//! The FFI-safe error that crosses the plugin boundary.

use std::fmt;

use abi_stable::{std_types::RString, StableAbi};
use agentfs_vocab::codes;

/// An errno-like error code. Non-exhaustive by construction: unknown codes
/// from newer plugins are carried through and displayed by number. The
/// numbers and names are `agentfs_vocab::codes`, shared with the wire
/// protocol.
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct ErrorCode(pub u32);

impl ErrorCode {
    /// The capability is absent; the host falls back.
    pub const UNSUPPORTED: Self = Self(codes::UNSUPPORTED);
    /// The named object does not exist.
    pub const NOT_FOUND: Self = Self(codes::NOT_FOUND);
    /// The destination already exists.
    pub const ALREADY_EXISTS: Self = Self(codes::ALREADY_EXISTS);
    /// The object is in use (e.g. a snapshot others depend on).
    pub const BUSY: Self = Self(codes::BUSY);
    /// An argument or option is invalid.
    pub const INVALID_ARGUMENT: Self = Self(codes::INVALID_ARGUMENT);
    /// Source and destination are on different filesystems.
    pub const CROSS_DEVICE: Self = Self(codes::CROSS_DEVICE);
    /// No space left on the device.
    pub const NO_SPACE: Self = Self(codes::NO_SPACE);
    /// The caller lacks permission.
    pub const PERMISSION_DENIED: Self = Self(codes::PERMISSION_DENIED);
    /// The object is read-only.
    pub const READ_ONLY: Self = Self(codes::READ_ONLY);
    /// Any other I/O error.
    pub const IO: Self = Self(codes::IO);
    /// The plugin panicked; the panic was caught at the boundary.
    pub const PANICKED: Self = Self(codes::PANICKED);
    /// A directory was given where a file was expected.
    pub const IS_DIRECTORY: Self = Self(codes::IS_DIRECTORY);
    /// A non-directory was given where a directory was expected.
    pub const NOT_DIRECTORY: Self = Self(codes::NOT_DIRECTORY);
    /// A directory is not empty.
    pub const NOT_EMPTY: Self = Self(codes::NOT_EMPTY);
    /// The plugin cannot run on this platform.
    pub const WRONG_PLATFORM: Self = Self(codes::WRONG_PLATFORM);

    /// A short stable name for the code (`"unsupported"`, `"not-found"`, ...).
    pub fn name(self) -> &'static str {
        codes::name(self.0)
    }

    /// Maps an OS errno to the closest code.
    pub fn from_errno(errno: i32) -> Self {
        Self(codes::from_errno(errno))
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            "unknown" => write!(f, "error code {}", self.0),
            name => f.write_str(name),
        }
    }
}

/// An error returned by a plugin: a code, the raw OS errno if there was
/// one (0 otherwise), and a human-readable message.
#[repr(C)]
#[derive(StableAbi, Clone, PartialEq, Eq, Debug)]
pub struct PluginError {
    /// What kind of failure this is.
    pub code: ErrorCode,
    /// The OS errno behind it, or 0.
    pub errno: i32,
    /// What happened, for a person.
    pub message: RString,
}

impl PluginError {
    /// Builds an error from a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            errno: 0,
            message: RString::from(message.into()),
        }
    }

    /// Shorthand for an `Unsupported` error.
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::UNSUPPORTED, message)
    }

    /// Shorthand for an `InvalidArgument` error.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::INVALID_ARGUMENT, message)
    }

    /// Builds an error from an `io::Error`, with context prepended.
    pub fn from_io(context: impl fmt::Display, err: &std::io::Error) -> Self {
        let errno = err.raw_os_error().unwrap_or(0);
        let code = if errno != 0 {
            ErrorCode::from_errno(errno)
        } else {
            match err.kind() {
                std::io::ErrorKind::NotFound => ErrorCode::NOT_FOUND,
                std::io::ErrorKind::AlreadyExists => ErrorCode::ALREADY_EXISTS,
                std::io::ErrorKind::PermissionDenied => ErrorCode::PERMISSION_DENIED,
                std::io::ErrorKind::InvalidInput => ErrorCode::INVALID_ARGUMENT,
                std::io::ErrorKind::Unsupported => ErrorCode::UNSUPPORTED,
                _ => ErrorCode::IO,
            }
        };
        Self {
            code,
            errno,
            message: RString::from(format!("{context}: {err}")),
        }
    }

    /// The message as a `&str`.
    pub fn message(&self) -> &str {
        self.message.as_str()
    }

    /// True when this is `Unsupported`.
    pub fn is_unsupported(&self) -> bool {
        self.code == ErrorCode::UNSUPPORTED
    }
}

impl fmt::Display for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl std::error::Error for PluginError {}

/// The result type of plugin calls on the Rust side.
pub type PluginResult<T> = Result<T, PluginError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_mapping_covers_the_documented_codes() {
        assert_eq!(ErrorCode::from_errno(libc::EXDEV), ErrorCode::CROSS_DEVICE);
        assert_eq!(
            ErrorCode::from_errno(libc::EOPNOTSUPP),
            ErrorCode::UNSUPPORTED
        );
        assert_eq!(ErrorCode::from_errno(libc::ENOSPC), ErrorCode::NO_SPACE);
        assert_eq!(
            ErrorCode::from_errno(libc::EEXIST),
            ErrorCode::ALREADY_EXISTS
        );
        assert_eq!(ErrorCode::from_errno(libc::EROFS), ErrorCode::READ_ONLY);
        assert_eq!(ErrorCode::from_errno(libc::EIO), ErrorCode::IO);
    }

    #[test]
    fn unknown_codes_display_by_number() {
        assert_eq!(ErrorCode(999).to_string(), "error code 999");
        assert_eq!(ErrorCode::BUSY.to_string(), "busy");
    }

    #[test]
    fn io_errors_keep_errno_and_context() {
        let e = PluginError::from_io("open /x", &std::io::Error::from_raw_os_error(libc::ENOENT));
        assert_eq!(e.code, ErrorCode::NOT_FOUND);
        assert_eq!(e.errno, libc::ENOENT);
        assert!(e.message().starts_with("open /x: "));
    }
}
