//! Inode numbers for branch paths: assigned on first sight, never reused
//! while the mount lives, and carried along by renames (so a renamed file
//! keeps its number, as on a native filesystem).

use std::collections::{HashMap, HashSet};

use agentfs_core::BranchPath;

/// The root directory's inode number (FUSE's fixed one).
pub const ROOT_INO: u64 = 1;

/// The two-way map between inode numbers and branch paths.
#[derive(Debug)]
pub struct Inodes {
    by_ino: HashMap<u64, BranchPath>,
    by_path: HashMap<BranchPath, u64>,
    /// Numbers given up by [`Inodes::renumber`], to the number that
    /// replaced them (their open files still ask by the old one).
    renumbered: HashMap<u64, u64>,
    /// Numbers last seen as directories (their listings and attributes
    /// are what the kernel may use without a lookup).
    dirs: HashSet<u64>,
    next: u64,
}

impl Default for Inodes {
    fn default() -> Self {
        let mut s = Self {
            by_ino: HashMap::new(),
            by_path: HashMap::new(),
            renumbered: HashMap::new(),
            dirs: HashSet::from([ROOT_INO]),
            next: ROOT_INO + 1,
        };
        s.by_ino.insert(ROOT_INO, BranchPath::root());
        s.by_path.insert(BranchPath::root(), ROOT_INO);
        s
    }
}

impl Inodes {
    /// The path of inode `ino`, if it is known.
    pub fn path(&self, ino: u64) -> Option<BranchPath> {
        let mut i = ino;
        loop {
            if let Some(p) = self.by_ino.get(&i) {
                return Some(p.clone());
            }
            i = *self.renumbered.get(&i)?;
        }
    }

    /// True when `ino` is the number `path` has now (not one it gave up).
    pub fn is_current(&self, path: &BranchPath, ino: u64) -> bool {
        self.by_path.get(path) == Some(&ino)
    }

    /// The inode number of `path`, if it has one.
    pub fn get(&self, path: &BranchPath) -> Option<u64> {
        self.by_path.get(path).copied()
    }

    /// The inode number of `path`, assigning a new one on first sight.
    pub fn ino(&mut self, path: &BranchPath) -> u64 {
        if let Some(&i) = self.by_path.get(path) {
            return i;
        }
        let i = self.next;
        self.next += 1;
        self.by_ino.insert(i, path.clone());
        self.by_path.insert(path.clone(), i);
        i
    }

    /// Every known entry but the root: (parent's number, name, number), the
    /// names the kernel may have cached.
    pub fn entries(&self) -> Vec<(u64, std::ffi::OsString, u64)> {
        self.by_path
            .iter()
            .filter_map(|(p, &i)| {
                let parent = self.by_path.get(&p.parent()?)?;
                Some((*parent, p.file_name()?.to_os_string(), i))
            })
            .collect()
    }

    /// Notes that `ino` was seen as a directory.
    pub fn mark_dir(&mut self, ino: u64) {
        self.dirs.insert(ino);
    }

    /// The numbers of the known directories.
    pub fn dirs(&self) -> Vec<u64> {
        self.dirs
            .iter()
            .copied()
            .filter(|i| self.by_ino.contains_key(i))
            .collect()
    }

    /// Forgets `path` and everything beneath it (it was removed or
    /// replaced): a later entry of the same name gets a new number.
    pub fn remove(&mut self, path: &BranchPath) {
        if path.is_root() {
            return;
        }
        let gone: Vec<BranchPath> = self
            .by_path
            .keys()
            .filter(|p| p.starts_with(path))
            .cloned()
            .collect();
        for p in gone {
            if let Some(i) = self.by_path.remove(&p) {
                self.by_ino.remove(&i);
                self.dirs.remove(&i);
            }
        }
    }

    /// Gives `path` (a file) a new number: later lookups find the new
    /// one, while the old one still names the same path (for the files
    /// open under it) without being looked up again. Returns the new number.
    pub fn renumber(&mut self, path: &BranchPath) -> u64 {
        let old = self.by_path.remove(path);
        if let Some(old) = old {
            self.by_ino.remove(&old);
        }
        let new = self.ino(path);
        if let Some(old) = old {
            self.renumbered.insert(old, new);
        }
        new
    }

    /// Moves `from` and everything beneath it to `to` (whatever `to` was
    /// is forgotten first).
    pub fn rename(&mut self, from: &BranchPath, to: &BranchPath) {
        if from == to {
            return;
        }
        self.remove(to);
        let moved: Vec<BranchPath> = self
            .by_path
            .keys()
            .filter(|p| p.starts_with(from))
            .cloned()
            .collect();
        let n = from.components().len();
        for p in moved {
            let Some(i) = self.by_path.remove(&p) else {
                continue;
            };
            let mut q = to.clone();
            for c in &p.components()[n..] {
                q = q.join(c);
            }
            self.by_ino.insert(i, q.clone());
            self.by_path.insert(q, i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> BranchPath {
        BranchPath::parse(s).unwrap()
    }

    #[test]
    fn numbers_are_stable_and_follow_renames() {
        let mut t = Inodes::default();
        let a = t.ino(&p("d/a"));
        let d = t.ino(&p("d"));
        assert_eq!(t.ino(&p("d/a")), a);
        assert_ne!(a, d);
        t.rename(&p("d"), &p("e"));
        assert_eq!(t.ino(&p("e/a")), a);
        assert_eq!(t.ino(&p("e")), d);
        assert_eq!(t.path(a), Some(p("e/a")));
        t.remove(&p("e"));
        assert_eq!(t.path(a), None);
        assert_ne!(t.ino(&p("e/a")), a, "numbers are not reused");
        assert_eq!(t.ino(&BranchPath::root()), ROOT_INO);
        let b = t.ino(&p("e/b"));
        let b2 = t.renumber(&p("e/b"));
        assert_ne!(b, b2);
        assert_eq!(t.path(b), Some(p("e/b")), "the old number still names it");
        assert!(!t.is_current(&p("e/b"), b));
        assert!(t.is_current(&p("e/b"), b2));
        assert_eq!(t.ino(&p("e/b")), b2);
        t.rename(&p("e/b"), &p("e/c"));
        assert_eq!(t.path(b), Some(p("e/c")), "and follows renames");
        t.remove(&p("e/c"));
        assert_eq!(t.path(b), None);
        let e = t.ino(&p("e"));
        t.mark_dir(e);
        assert_eq!(t.dirs().len(), 2, "the root and e");
        assert!(t.dirs().contains(&e));
        t.remove(&p("e"));
        assert_eq!(t.dirs(), vec![ROOT_INO], "a removed directory is not swept");
    }
}
