//! Watch APIs by number: the values of the plugin ABI's `WatchApi` and of
//! the protocol's `api` fields.

/// BSD/macOS kqueue `EVFILT_VNODE`.
pub const KQUEUE: u32 = 1;
/// macOS FSEvents streams.
pub const FSEVENTS: u32 = 2;
/// Linux inotify.
pub const INOTIFY: u32 = 3;

/// The API's name (`"kqueue"`, `"fsevents"`, `"inotify"`, else `"unknown"`).
pub fn name(api: u32) -> &'static str {
    match api {
        KQUEUE => "kqueue",
        FSEVENTS => "fsevents",
        INOTIFY => "inotify",
        _ => "unknown",
    }
}
