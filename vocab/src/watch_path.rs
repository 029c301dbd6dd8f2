//! Branch-relative watch paths: `/`-separated, no leading slash, `""` for
//! the branch root. A watch registered as `/src//` and one registered as
//! `src` are the same watch; `..` never is one.

/// A watch path with `.`, `..` or NUL in it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("watch path {0:?}: '.', '..' and NUL are not allowed in branch-relative paths")]
pub struct InvalidWatchPath(pub String);

/// Normalises a branch-relative path: strips leading and trailing slashes
/// and empty components; refuses `.`, `..` and NUL.
pub fn normalize(path: &str) -> Result<String, InvalidWatchPath> {
    let mut out = String::with_capacity(path.len());
    for comp in path.split('/').filter(|c| !c.is_empty()) {
        if comp == "." || comp == ".." || comp.contains('\0') {
            return Err(InvalidWatchPath(path.to_string()));
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

/// Where a watch on `path` points after `from` was renamed to `to`, for APIs
/// whose watches follow the inode (the plugin ABI's `WatchApi::follows_inode`);
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

#[cfg(test)]
mod tests {
    use super::*;

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
