//! Branch-relative paths and branch/snapshot names, validated lexically
//! before anything touches a filesystem.
//!
//! A [`BranchPath`] is a list of plain components: never absolute, never
//! `..`, no NUL, each component at most 255 bytes. `.` and empty components
//! (`a//b`, a trailing `/`) are dropped; `""`, `"."` and `"/"` are the branch
//! root (a lone `/` names the branch's own root, never the host's).

use std::{
    ffi::{OsStr, OsString},
    fmt,
    os::unix::ffi::{OsStrExt, OsStringExt},
};

use super::error::{CoreError, CoreResult};

/// Longest component accepted, in bytes (NAME_MAX on Linux and macOS).
pub const NAME_MAX: usize = 255;
/// Longest path accepted, in bytes (PATH_MAX).
pub const PATH_MAX: usize = 4096;
/// Longest branch or snapshot name.
pub const MAX_NAME: usize = 64;

/// A validated path relative to a branch root.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct BranchPath {
    comps: Vec<OsString>,
}

impl BranchPath {
    /// The branch root.
    pub fn root() -> Self {
        Self::default()
    }

    /// Parses a branch-relative path; see the module docs for the rules.
    pub fn parse(raw: impl AsRef<OsStr>) -> CoreResult<Self> {
        let raw = raw.as_ref();
        let bytes = raw.as_bytes();
        let shown = || raw.to_string_lossy().into_owned();
        let bad = |why| CoreError::InvalidPath { path: shown(), why };
        if bytes.contains(&0) {
            return Err(bad("it contains a NUL byte"));
        }
        if bytes.starts_with(b"/") && !bytes.iter().all(|&b| b == b'/') {
            return Err(bad(
                "absolute paths are not allowed: paths are relative to the branch root",
            ));
        }
        if bytes.len() > PATH_MAX {
            return Err(CoreError::NameTooLong(shown()));
        }
        let mut comps = Vec::new();
        for c in bytes.split(|&b| b == b'/') {
            match c {
                b"" | b"." => continue,
                b".." => return Err(bad("'..' is not allowed")),
                c if c.len() > NAME_MAX => return Err(CoreError::NameTooLong(shown())),
                c => comps.push(OsStr::from_bytes(c).to_os_string()),
            }
        }
        Ok(Self { comps })
    }

    /// Builds a path from components that are already known to be plain
    /// (no `/`, not `.`/`..`, not empty).
    pub(crate) fn from_components(comps: Vec<OsString>) -> Self {
        debug_assert!(comps.iter().all(|c| is_plain_component(c)));
        Self { comps }
    }

    /// The components.
    pub fn components(&self) -> &[OsString] {
        &self.comps
    }

    /// True for the branch root.
    pub fn is_root(&self) -> bool {
        self.comps.is_empty()
    }

    /// The last component, or `None` for the root.
    pub fn file_name(&self) -> Option<&OsStr> {
        self.comps.last().map(OsString::as_os_str)
    }

    /// The parent path, or `None` for the root.
    pub fn parent(&self) -> Option<BranchPath> {
        if self.comps.is_empty() {
            None
        } else {
            Some(Self {
                comps: self.comps[..self.comps.len() - 1].to_vec(),
            })
        }
    }

    /// This path with one more component (which must be plain).
    pub fn join(&self, name: &OsStr) -> BranchPath {
        debug_assert!(is_plain_component(name));
        let mut comps = self.comps.clone();
        comps.push(name.to_os_string());
        Self { comps }
    }

    /// True when `self` is `other` or lies beneath it.
    pub fn starts_with(&self, other: &BranchPath) -> bool {
        self.comps.starts_with(&other.comps)
    }

    /// The path's exact bytes, `/`-separated without a leading slash
    /// (empty for the root).
    pub fn to_os_string(&self) -> OsString {
        let mut out = Vec::new();
        for (i, c) in self.comps.iter().enumerate() {
            if i > 0 {
                out.push(b'/');
            }
            out.extend_from_slice(c.as_bytes());
        }
        OsString::from_vec(out)
    }

    /// The path as `/`-separated text without a leading slash (`""` for the
    /// root); non-UTF-8 bytes are replaced.
    pub fn to_string_lossy(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for BranchPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, c) in self.comps.iter().enumerate() {
            if i > 0 {
                f.write_str("/")?;
            }
            f.write_str(&c.to_string_lossy())?;
        }
        Ok(())
    }
}

impl fmt::Debug for BranchPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.to_string())
    }
}

/// True for a component that can name an entry: not empty, not `.`/`..`,
/// no `/` or NUL, at most [`NAME_MAX`] bytes.
pub fn is_plain_component(c: &OsStr) -> bool {
    let b = c.as_bytes();
    !b.is_empty()
        && b != b"."
        && b != b".."
        && b.len() <= NAME_MAX
        && !b.iter().any(|&x| x == b'/' || x == 0)
}

/// Checks a branch or snapshot name: 1 to 64 (`MAX_NAME`) of `[A-Za-z0-9._-]`,
/// not starting with `.` or `-`.
pub fn validate_name(kind: &str, name: &str) -> CoreResult<()> {
    let why = if name.is_empty() {
        Some("it is empty".to_string())
    } else if name.len() > MAX_NAME {
        Some(format!("{kind} names are at most {MAX_NAME} bytes"))
    } else if name.starts_with('.') || name.starts_with('-') {
        Some(format!("{kind} names must not start with '.' or '-'"))
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        Some(format!("{kind} names use only [A-Za-z0-9._-]"))
    } else {
        None
    };
    match why {
        None => Ok(()),
        Some(why) => Err(CoreError::InvalidName {
            name: name.to_string(),
            why,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_paths_normalise() {
        assert!(BranchPath::parse("").unwrap().is_root());
        assert!(BranchPath::parse(".").unwrap().is_root());
        assert!(BranchPath::parse("./").unwrap().is_root());
        assert!(BranchPath::parse("/").unwrap().is_root());
        let p = BranchPath::parse("a//b/./c/").unwrap();
        assert_eq!(p.to_string(), "a/b/c");
        assert_eq!(p.parent().unwrap().to_string(), "a/b");
        assert_eq!(p.file_name().unwrap(), "c");
        assert!(p.starts_with(&BranchPath::parse("a/b").unwrap()));
        assert!(!p.starts_with(&BranchPath::parse("a/bc").unwrap()));
    }

    #[test]
    fn hostile_paths_are_refused() {
        for bad in [
            "/etc/passwd",
            "//x",
            "..",
            "../x",
            "a/../../x",
            "a/..",
            "a\0b",
        ] {
            let e = BranchPath::parse(bad).unwrap_err();
            assert!(matches!(e, CoreError::InvalidPath { .. }), "{bad:?}: {e}");
        }
        let long = "x".repeat(256);
        assert!(matches!(
            BranchPath::parse(&long).unwrap_err(),
            CoreError::NameTooLong(_)
        ));
        let deep = "a/".repeat(2100);
        assert!(matches!(
            BranchPath::parse(&deep).unwrap_err(),
            CoreError::NameTooLong(_)
        ));
        // Dots inside names are fine.
        assert_eq!(BranchPath::parse("..a/b..").unwrap().components().len(), 2);
    }

    #[test]
    fn non_utf8_components_survive() {
        let raw = OsStr::from_bytes(b"d/\xff\xfe");
        let p = BranchPath::parse(raw).unwrap();
        assert_eq!(p.components()[1].as_bytes(), b"\xff\xfe");
    }

    #[test]
    fn names_are_plain() {
        for good in ["main", "agent-1", "snap_2.b"] {
            validate_name("branch", good).unwrap();
        }
        for bad in ["", ".x", "-x", "a/b", "a b", "ü", &"x".repeat(65)] {
            assert!(validate_name("branch", bad).is_err(), "{bad:?}");
        }
    }
}
