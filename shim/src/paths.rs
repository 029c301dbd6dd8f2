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

/// True when relative path `rel` is already in normal form: no empty,
/// `.` or `..` component and no trailing slash (joining it to a
/// normalised directory gives a normalised path).
pub fn is_clean_relative(rel: &[u8]) -> bool {
    !rel.is_empty()
        && rel
            .split(|&b| b == b'/')
            .all(|c| !c.is_empty() && c != b"." && c != b"..")
}

/// True when absolute path `abs` is in the form [`normalize`] gives.
pub fn is_normal(abs: &[u8]) -> bool {
    abs == b"/" || (abs.first() == Some(&b'/') && is_clean_relative(&abs[1..]))
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

/// The path the program sees for a path the kernel reported (`realpath`,
/// `F_GETPATH`): one inside the store (`store`, normalised) is a layer
/// path, which `branch_path_of` maps to its branch path, shown under
/// `root`; `None` means "show the kernel's path" (not in the store, or in
/// the store but no layer of the branch: another branch's layer is not
/// the program's to see either way, and hiding it would lie).
pub fn shown_for_kernel_path(
    store: &[u8],
    root: &[u8],
    kernel: &[u8],
    branch_path_of: impl FnOnce(&[u8]) -> Option<Vec<u8>>,
) -> Option<Vec<u8>> {
    let kernel = normalize(kernel);
    if under(root, &kernel).is_some() {
        return None; // already a visible path
    }
    under(store, &kernel)?;
    let rel = branch_path_of(&kernel)?;
    Some(visible(root, &rel))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_paths_from_the_kernel_show_as_branch_paths() {
        let map = |p: &[u8]| {
            p.strip_prefix(b"/store/layers/7".as_slice())
                .map(|r| r.strip_prefix(b"/").unwrap_or(r).to_vec())
        };
        assert_eq!(
            shown_for_kernel_path(b"/store", b"/w/base", b"/store/layers/7/src/a.rs", map),
            Some(b"/w/base/src/a.rs".to_vec())
        );
        assert_eq!(
            shown_for_kernel_path(b"/store", b"/w/base", b"/store/layers/7", map),
            Some(b"/w/base".to_vec())
        );
        assert_eq!(
            shown_for_kernel_path(b"/store", b"/w/base", b"/store//layers/7/./x", map),
            Some(b"/w/base/x".to_vec()),
            "normalised first"
        );
        // Outside the store, a visible path, or a layer not in the chain.
        assert_eq!(
            shown_for_kernel_path(b"/store", b"/w/base", b"/etc/hosts", map),
            None
        );
        assert_eq!(
            shown_for_kernel_path(b"/store", b"/w/base", b"/w/base/x", map),
            None
        );
        assert_eq!(
            shown_for_kernel_path(b"/store", b"/w/base", b"/store/layers/9/x", map),
            None
        );
        assert_eq!(
            shown_for_kernel_path(b"/store", b"/w/base", b"/storex/layers/7/x", map),
            None
        );
    }

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
