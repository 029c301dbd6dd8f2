//! Typed errors on the wire: an errno-like code plus a message.

use agentfs_plugin_api::{ErrorCode, PluginError};
use serde::{Deserialize, Serialize};

/// An error as it travels: `code` is an [`ErrorCode`] value (same numbers)
/// or one of the protocol codes (1000 and up); `errno` is the OS errno
/// behind it, or 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message} ({})", self.code_name())]
pub struct WireError {
    /// What kind of failure.
    pub code: u32,
    /// The OS errno, or 0.
    pub errno: i32,
    /// For a person.
    pub message: String,
}

impl WireError {
    /// The peers share no protocol version.
    pub const VERSION_MISMATCH: u32 = 1001;
    /// A frame could not be decoded, or a message came out of order.
    pub const PROTOCOL: u32 = 1002;
    /// A frame exceeded the receiver's size limit.
    pub const FRAME_TOO_LARGE: u32 = 1003;
    /// A request arrived before the handshake.
    pub const NOT_HANDSHAKEN: u32 = 1004;
    /// The peer's uid is not allowed.
    pub const PEER_REFUSED: u32 = 1005;

    /// Builds an error from a code and message.
    pub fn new(code: u32, message: impl Into<String>) -> Self {
        Self {
            code,
            errno: 0,
            message: message.into(),
        }
    }

    /// Builds an error from an I/O error, with context.
    pub fn from_io(context: impl std::fmt::Display, err: &std::io::Error) -> Self {
        PluginError::from_io(context, err).into()
    }

    /// The code's stable name (`"not-found"`, `"version-mismatch"`, ...).
    pub fn code_name(&self) -> &'static str {
        match self.code {
            Self::VERSION_MISMATCH => "version-mismatch",
            Self::PROTOCOL => "protocol",
            Self::FRAME_TOO_LARGE => "frame-too-large",
            Self::NOT_HANDSHAKEN => "not-handshaken",
            Self::PEER_REFUSED => "peer-refused",
            c => ErrorCode(c).name(),
        }
    }

    /// The closest [`ErrorCode`]: plugin codes map to themselves; protocol
    /// codes map to `Unsupported` (version mismatch), `PermissionDenied`
    /// (peer refused) or `InvalidArgument`.
    pub fn error_code(&self) -> ErrorCode {
        match self.code {
            Self::VERSION_MISMATCH => ErrorCode::UNSUPPORTED,
            Self::PEER_REFUSED => ErrorCode::PERMISSION_DENIED,
            c if c >= 1000 => ErrorCode::INVALID_ARGUMENT,
            c => ErrorCode(c),
        }
    }
}

impl From<PluginError> for WireError {
    fn from(e: PluginError) -> Self {
        Self {
            code: e.code.0,
            errno: e.errno,
            message: e.message.into_string(),
        }
    }
}

impl From<WireError> for PluginError {
    fn from(e: WireError) -> Self {
        let mut p = PluginError::new(e.error_code(), e.message);
        p.errno = e.errno;
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_errors_round_trip_with_errno() {
        let p = PluginError::from_io("open x", &std::io::Error::from_raw_os_error(libc::ENOENT));
        let w = WireError::from(p.clone());
        assert_eq!(w.code, ErrorCode::NOT_FOUND.0);
        assert_eq!(w.code_name(), "not-found");
        assert_eq!(PluginError::from(w), p);
    }

    #[test]
    fn protocol_codes_map_to_the_closest_plugin_code() {
        let w = WireError::new(WireError::VERSION_MISMATCH, "no common version");
        assert_eq!(w.error_code(), ErrorCode::UNSUPPORTED);
        assert_eq!(w.to_string(), "no common version (version-mismatch)");
        let w = WireError::new(WireError::PEER_REFUSED, "uid 1000 is not 0");
        assert_eq!(PluginError::from(w).code, ErrorCode::PERMISSION_DENIED);
        assert_eq!(
            WireError::new(WireError::FRAME_TOO_LARGE, "x").error_code(),
            ErrorCode::INVALID_ARGUMENT
        );
        assert_eq!(
            WireError::new(4242, "future").error_code(),
            ErrorCode::INVALID_ARGUMENT
        );
        assert_eq!(
            WireError::new(77, "future plugin code").error_code(),
            ErrorCode(77)
        );
    }
}
