//! Panic guard and path conversion used at the ABI boundary.

use std::{
    ffi::OsStr,
    os::unix::ffi::OsStrExt,
    panic::{catch_unwind, AssertUnwindSafe},
    path::Path,
};

use abi_stable::std_types::{RResult, RVec};

use crate::{ErrorCode, PluginError, PluginResult};

/// Runs `f`, turning a panic into a `Panicked` error so it never unwinds
/// across the ABI.
pub fn guard<T>(f: impl FnOnce() -> PluginResult<T>) -> RResult<T, PluginError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => RResult::ROk(v),
        Ok(Err(e)) => RResult::RErr(e),
        Err(payload) => {
            let what = panic_message(payload.as_ref());
            RResult::RErr(PluginError::new(
                ErrorCode::PANICKED,
                format!("plugin panicked: {what}"),
            ))
        }
    }
}

/// Replaces the default panic hook of the plugin's copy of std with a
/// one-line report on stderr. Called from the ABI entry points only, so a
/// plugin crate's own unit tests keep the test harness's hook. In a cdylib
/// the plugin has its own std, so the host's hook is untouched.
pub fn install_plugin_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let what = panic_message(info.payload());
            let at = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()))
                .unwrap_or_default();
            eprintln!("agentfs plugin: panic at {at}: {what} (caught at the ABI boundary)");
        }));
    });
}

/// The text of a panic payload (`&str` or `String`), or a placeholder.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_string())
}

/// OS path bytes for the ABI.
pub fn path_to_bytes(p: &Path) -> RVec<u8> {
    RVec::from(p.as_os_str().as_bytes())
}

/// A path borrowed from ABI bytes.
pub fn path_from_bytes(b: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_turns_panics_into_errors() {
        let r: RResult<(), PluginError> = guard(|| panic!("boom"));
        let e = r.into_result().unwrap_err();
        assert_eq!(e.code, ErrorCode::PANICKED);
        assert!(e.message().contains("boom"));
    }

    #[test]
    fn paths_round_trip_non_utf8() {
        let raw = b"/tmp/\xff\xfe";
        assert_eq!(path_to_bytes(path_from_bytes(raw)).as_slice(), raw);
    }
}
