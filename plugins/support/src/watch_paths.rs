//! Path matching shared by the watch providers (DESIGN §6). Paths are
//! branch-relative, `/`-separated, without a leading slash; `""` is the
//! branch root. A watch matches only events of its own branch.

use agentfs_plugin_api::{
    watch::{CoreEvent, NativeRecord, WatchSpec},
    PluginError, PluginResult,
};

/// Normalises a branch-relative path: strips leading and trailing slashes
/// and empty components; refuses `.`, `..` and NUL.
pub fn normalize(path: &str) -> PluginResult<String> {
    let mut out = String::with_capacity(path.len());
    for comp in path.split('/').filter(|c| !c.is_empty()) {
        if comp == "." || comp == ".." || comp.contains('\0') {
            return Err(PluginError::invalid(format!(
                "watch path {path:?}: '.', '..' and NUL are not allowed in branch-relative paths"
            )));
        }
        if !out.is_empty() {
            out.push('/');
        }
        out.push_str(comp);
    }
    Ok(out)
}

/// The parent of `path` (`""` for a top-level entry and for the root).
pub fn parent(path: &str) -> &str {
    path.rfind('/').map_or("", |i| &path[..i])
}

/// The last component of `path` (`""` for the root).
pub fn file_name(path: &str) -> &str {
    path.rfind('/').map_or(path, |i| &path[i + 1..])
}

/// True when `path` is `prefix` or lies beneath it (`""` is above everything).
pub fn is_under(prefix: &str, path: &str) -> bool {
    prefix.is_empty()
        || (path.starts_with(prefix)
            && (path.len() == prefix.len() || path.as_bytes()[prefix.len()] == b'/'))
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

/// Where a watch on `path` points after `from` was renamed to `to`, for APIs
/// whose watches follow the inode ([`agentfs_plugin_api::watch::WatchApi::follows_inode`]);
/// `None` when the rename does not move it.
pub fn retarget(path: &str, from: &str, to: &str) -> Option<String> {
    if from.is_empty() || !is_under(from, path) {
        return None;
    }
    Some(format!("{to}{}", &path[from.len()..]))
}

/// The absolute path a process sees for branch-relative `rel` when it sees
/// the branch root at `root`.
pub fn visible_path(root: &str, rel: &str) -> String {
    let root = root.trim_end_matches('/');
    if rel.is_empty() {
        if root.is_empty() {
            "/".to_string()
        } else {
            root.to_string()
        }
    } else {
        format!("{root}/{rel}")
    }
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
    fn normalize_strips_slashes_and_refuses_dot_dot() {
        assert_eq!(normalize("/a//b/").unwrap(), "a/b");
        assert_eq!(normalize("").unwrap(), "");
        assert_eq!(normalize("/").unwrap(), "");
        assert!(normalize("a/../b").is_err());
        assert!(normalize("./a").is_err());
        assert!(normalize("a\0b").is_err());
    }

    #[test]
    fn parent_and_name() {
        assert_eq!(parent("a/b/c"), "a/b");
        assert_eq!(parent("a"), "");
        assert_eq!(file_name("a/b/c"), "c");
        assert_eq!(file_name("a"), "a");
        assert_eq!(file_name(""), "");
    }

    #[test]
    fn prefixes_match_on_component_boundaries() {
        assert!(is_under("src", "src"));
        assert!(is_under("src", "src/a.rs"));
        assert!(!is_under("src", "srcx/a.rs"));
        assert!(!is_under("src/a", "src"));
        assert!(is_under("", "anything"));
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

    #[test]
    fn retarget_follows_the_moved_subtree() {
        assert_eq!(retarget("a/b", "a", "x").as_deref(), Some("x/b"));
        assert_eq!(retarget("a", "a", "x/y").as_deref(), Some("x/y"));
        assert_eq!(retarget("ab", "a", "x"), None);
        assert_eq!(retarget("a", "", "x"), None);
    }

    #[test]
    fn visible_paths() {
        assert_eq!(visible_path("/Users/me/p/", "src/a"), "/Users/me/p/src/a");
        assert_eq!(visible_path("/Users/me/p", ""), "/Users/me/p");
        assert_eq!(visible_path("", ""), "/");
    }
}
