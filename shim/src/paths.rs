//! Lexical path arithmetic on raw bytes: joining, normalising (`.`, `..`,
//! repeated slashes) and deciding whether a path lies under the branch's
//! visible root. Nothing here touches the filesystem.
//!
//! `..` is resolved lexically, as the shell's `cd` does: `dir/link/..` is
//! `dir`, even when `link` is a symlink to a directory elsewhere.

/// `rel` appended to absolute directory `dir` (`rel` itself when absolute).
pub fn join(dir: &[u8], rel: &[u8]) -> Vec<u8> {
    if rel.starts_with(b"/") {
        return rel.to_vec();
    }
    let mut v = Vec::with_capacity(dir.len() + rel.len() + 1);
    v.extend_from_slice(dir);
    if !v.ends_with(b"/") {
        v.push(b'/');
    }
    v.extend_from_slice(rel);
    v
}

/// Absolute path `abs` with `.`, `..` and repeated slashes removed
/// (`/..` is `/`); no trailing slash except for `/` itself.
pub fn normalize(abs: &[u8]) -> Vec<u8> {
    let mut out: Vec<u8> = Vec::with_capacity(abs.len() + 1);
    for c in abs.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                let cut = out.iter().rposition(|&b| b == b'/').unwrap_or(0);
                out.truncate(cut);
            }
            c => {
                out.push(b'/');
                out.extend_from_slice(c);
            }
        }
    }
    if out.is_empty() {
        out.push(b'/');
    }
    out
}

/// The branch-relative form (`""` for the root itself) of normalised
/// absolute path `abs` when it lies at or under `root` (normalised).
pub fn under<'a>(root: &[u8], abs: &'a [u8]) -> Option<&'a [u8]> {
    if root == b"/" {
        return Some(abs.strip_prefix(b"/").unwrap_or(abs));
    }
    let rest = abs.strip_prefix(root)?;
    if rest.is_empty() {
        Some(rest)
    } else {
        rest.strip_prefix(b"/")
    }
}

/// True when `path` (absolute, not normalised) cannot lie under `root`
/// without normalising: it neither starts with `root` nor has a `..` or
/// `.` component that could bring it there. The cheap test for the common
/// case of a path far from the branch.
pub fn clearly_outside(root: &[u8], path: &[u8]) -> bool {
    !path.starts_with(root) && !path.windows(2).any(|w| w == b"/." || w == b"//")
}

/// `root` followed by branch path `rel`.
pub fn visible(root: &[u8], rel: &[u8]) -> Vec<u8> {
    if rel.is_empty() {
        return root.to_vec();
    }
    join(root, rel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_collapses_dots_and_slashes() {
        assert_eq!(normalize(b"/a//b/./c/"), b"/a/b/c");
        assert_eq!(normalize(b"/a/b/../c"), b"/a/c");
        assert_eq!(normalize(b"/../.."), b"/");
        assert_eq!(normalize(b"/"), b"/");
    }

    #[test]
    fn under_gives_the_branch_path() {
        assert_eq!(under(b"/w/base", b"/w/base"), Some(&b""[..]));
        assert_eq!(under(b"/w/base", b"/w/base/src/a"), Some(&b"src/a"[..]));
        assert_eq!(under(b"/w/base", b"/w/based"), None);
        assert_eq!(under(b"/w/base", b"/w"), None);
        assert_eq!(under(b"/", b"/x"), Some(&b"x"[..]));
    }

    #[test]
    fn join_and_visible() {
        assert_eq!(join(b"/w", b"a/b"), b"/w/a/b");
        assert_eq!(join(b"/", b"a"), b"/a");
        assert_eq!(join(b"/w", b"/abs"), b"/abs");
        assert_eq!(visible(b"/w/base", b""), b"/w/base");
        assert_eq!(visible(b"/w/base", b"x/y"), b"/w/base/x/y");
    }

    #[test]
    fn clearly_outside_is_conservative() {
        assert!(clearly_outside(b"/w/base", b"/usr/lib/x.so"));
        assert!(!clearly_outside(b"/w/base", b"/w/base/x"));
        assert!(!clearly_outside(b"/w/base", b"/usr/../w/base/x"));
        assert!(!clearly_outside(b"/w/base", b"/w//base"));
    }
}
