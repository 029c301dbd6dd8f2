//! Path matching shared by the watch providers. Paths are branch-relative,
//! `/`-separated, without a leading slash; `""` is the branch root. A watch
//! matches only events of its own branch. The string rules themselves are
//! protocol vocabulary and live in `agentfs_vocab::watch_path`.

use agentfs_plugin_api::{
    watch::{CoreEvent, NativeRecord, WatchSpec},
    PluginError, PluginResult,
};
pub use agentfs_vocab::watch_path::{file_name, is_under, parent, retarget, visible_path};

/// [`agentfs_vocab::watch_path::normalize`] with the plugin ABI's error.
pub fn normalize(path: &str) -> PluginResult<String> {
    agentfs_vocab::watch_path::normalize(path).map_err(|e| PluginError::invalid(e.to_string()))
}

/// How an event path relates to a watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relation<'a> {
    /// The event is about the watched entry itself.
    Itself,
    /// The event is about a direct child of a watched directory (its name).
    Child(&'a str),
    /// No match.
    Unrelated,
}

/// Relates `path` to `watch`: equality for every watch, direct children for
/// a directory watch. The root's parent is not the root: `""` is no child.
pub fn relation<'a>(watch: &WatchSpec, path: &'a str) -> Relation<'a> {
    let w = watch.path.as_str();
    if path == w {
        Relation::Itself
    } else if watch.is_dir && !path.is_empty() && parent(path) == w {
        Relation::Child(file_name(path))
    } else {
        Relation::Unrelated
    }
}

/// True when the watch belongs to the event's branch.
pub fn same_branch(watch: &WatchSpec, event: &CoreEvent) -> bool {
    watch.branch.as_str() == event.branch.as_str()
}

/// A record for `watch` with `flags`, stamped with the event's `seq`.
pub fn record(watch: &WatchSpec, event: &CoreEvent, flags: u64) -> NativeRecord {
    NativeRecord {
        watch_id: watch.watch_id,
        handle: watch.handle,
        seq: event.seq,
        flags,
        cookie: 0,
        name: Default::default(),
        retire_watch: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(path: &str, is_dir: bool) -> WatchSpec {
        WatchSpec {
            watch_id: 1,
            pid: 1,
            instance: 1,
            handle: 1,
            branch: "b".into(),
            path: path.into(),
            visible_root: "".into(),
            is_dir,
            flags: 0,
        }
    }

    #[test]
    fn relations() {
        let d = spec("dir", true);
        assert_eq!(relation(&d, "dir"), Relation::Itself);
        assert_eq!(relation(&d, "dir/f"), Relation::Child("f"));
        assert_eq!(relation(&d, "dir/sub/f"), Relation::Unrelated);
        assert_eq!(relation(&d, "dirx/f"), Relation::Unrelated);
        let f = spec("dir/f", false);
        assert_eq!(relation(&f, "dir/f"), Relation::Itself);
        assert_eq!(relation(&f, "dir/f/g"), Relation::Unrelated);
        let root = spec("", true);
        assert_eq!(relation(&root, "top"), Relation::Child("top"));
        assert_eq!(relation(&root, ""), Relation::Itself);
    }
}
