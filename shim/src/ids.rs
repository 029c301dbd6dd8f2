//! The identities (`st_dev`, `st_ino`, `d_ino`) programs see for entries
//! of the branch.
//!
//! Policy: every entry of the branch shows the base's device, so the
//! branch is one filesystem to `find -xdev`, `du -x`, `cp -a` and git, and
//! every `(st_dev, st_ino)` pair stays unique and the same every time:
//!
//! - an entry the base holds, or a layer on the base's own device (the
//!   normal, reflink setup), shows its real inode: unique on that device
//!   already, and an unchanged base file keeps the inode a native run (and
//!   git's index) knows;
//! - an entry of a layer on another device (a store on tmpfs, a btrfs
//!   store whose layers are subvolumes) shows `2^63 | code(device) << 40 |
//!   inode`: the top bit keeps it out of the base's range, the device's
//!   code (23 bits from its major and minor numbers) keeps two layer
//!   devices apart, and the same layer file maps to the same number in
//!   every process and after every snapshot.
//!
//! Assumptions, checked where they can be: the base's filesystem never
//! hands out an inode with the top bit set. That holds for the
//! filesystems [`rewrites_on`] accepts (ext2/3/4, XFS, btrfs, tmpfs, f2fs,
//! ZFS number their inodes from small counters or block positions); on
//! any other base (overlayfs with `xino`, bcachefs, NFS, FUSE, which may
//! use the top bits) nothing is rewritten and a layer entry shows the
//! store's device, as a plain path walk would. A layer inode of 2^40 or
//! more, or a layer device whose code another layer device shares, keeps
//! its real device and inode (unique, but another device to `-xdev`).
//!
//! Mechanism: the devices are read once per chain (one `stat` of each
//! layer root and a `statfs` of the base); the per-call check for an
//! entry on the base's device is one compare ([`Identity::map`]).

/// The bit every rewritten inode has.
pub const MAPPED: u64 = 1 << 63;
/// Bits of a layer inode kept as they are.
const INO_BITS: u32 = 40;
/// Bits of a layer device's code.
const CODE_BITS: u32 = 23;

/// The identities of one chain's entries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// The base's device, which every entry shows (0: nothing rewritten).
    dev: u64,
    /// Layer devices other than the base's, with the high bits their
    /// inodes get.
    foreign: Vec<(u64, u64)>,
    /// Per layer of the chain (top first): the high bits of its inodes (0
    /// for the base and layers on its device).
    layer_tags: Vec<u64>,
    /// The base's `statfs` `f_fsid`.
    fsid: [i32; 2],
    /// The `f_fsid`s of the layers on other devices.
    foreign_fsids: Vec<[i32; 2]>,
}

/// A Linux `dev_t`'s major number (glibc's encoding).
fn major(dev: u64) -> u64 {
    ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff)
}

/// A Linux `dev_t`'s minor number (glibc's encoding).
fn minor(dev: u64) -> u64 {
    (dev & 0xff) | ((dev >> 12) & !0xff)
}

/// A Linux `dev_t` from its major and minor numbers (glibc's encoding).
pub fn makedev(major: u64, minor: u64) -> u64 {
    ((major & 0xfffff000) << 32)
        | ((major & 0xfff) << 8)
        | ((minor & 0xffffff00) << 12)
        | (minor & 0xff)
}

/// A device's code: its minor number's low 20 bits (anonymous devices,
/// tmpfs and btrfs subvolumes among them, have major 0 and minors below
/// 2^20) and its major number's low 3 bits.
fn code(dev: u64) -> u64 {
    ((minor(dev) & 0xf_ffff) | ((major(dev) & 0x7) << 20)) & ((1 << CODE_BITS) - 1)
}

impl Identity {
    /// Nothing rewritten: every entry shows its real identity.
    pub fn none() -> Self {
        Self::default()
    }

    /// The identities of a chain whose base is on device `base` (`None`:
    /// rewrite nothing) and whose layers, top first and the base
    /// included, are on `layers` (`None`: unknown, not rewritten).
    pub fn new(base: Option<u64>, layers: &[Option<u64>]) -> Self {
        let Some(dev) = base else {
            return Self::none();
        };
        let mut foreign: Vec<(u64, u64)> = Vec::new();
        for d in layers.iter().flatten() {
            if *d != dev && !foreign.iter().any(|(f, _)| f == d) {
                foreign.push((*d, MAPPED | code(*d) << INO_BITS));
            }
        }
        // Two devices with one code would map two files to one number:
        // neither is rewritten.
        let tags: Vec<u64> = foreign.iter().map(|(_, t)| *t).collect();
        foreign.retain(|(_, t)| tags.iter().filter(|x| *x == t).count() == 1);
        let layer_tags = layers
            .iter()
            .map(|d| {
                d.and_then(|d| foreign.iter().find(|(f, _)| *f == d))
                    .map_or(0, |(_, t)| *t)
            })
            .collect();
        Self {
            dev: if foreign.is_empty() { 0 } else { dev },
            foreign,
            layer_tags,
            ..Self::default()
        }
    }

    /// The same, with the base's `f_fsid` shown for an entry whose
    /// filesystem answers with one of `foreign` (the layers' on other
    /// devices).
    pub fn with_fsids(mut self, base: [i32; 2], foreign: Vec<[i32; 2]>) -> Self {
        self.fsid = base;
        self.foreign_fsids = foreign;
        self
    }

    /// The `f_fsid` to show for a `statfs` of an entry of the branch that
    /// answered `fsid`, when it is not that: a layer's on another device
    /// shows the base's, as its `st_dev` does.
    pub fn map_fsid(&self, fsid: [i32; 2]) -> Option<[i32; 2]> {
        (self.dev != 0 && fsid != self.fsid && self.foreign_fsids.contains(&fsid))
            .then_some(self.fsid)
    }

    /// [`Identity::map_fsid`] for `statvfs`'s `f_fsid`, which glibc makes
    /// of the two words.
    pub fn map_vfs_fsid(&self, fsid: u64) -> Option<u64> {
        let from = *self.foreign_fsids.iter().find(|f| vfs_fsid(**f) == fsid)?;
        self.map_fsid(from).map(vfs_fsid)
    }

    /// The device every entry shows when something is rewritten: `None`
    /// when every layer is on the base's device (or nothing may be
    /// rewritten), so an entry's real identity is already the one shown.
    pub fn device(&self) -> Option<u64> {
        (self.dev != 0).then_some(self.dev)
    }

    /// The identity to show for an entry found on device `dev` with inode
    /// `ino`, when it is not that: `None` for the base's device (one
    /// compare) and for devices that are no layer's.
    #[inline]
    pub fn map(&self, dev: u64, ino: u64) -> Option<(u64, u64)> {
        if dev == self.dev || self.dev == 0 {
            return None;
        }
        let (_, tag) = self.foreign.iter().find(|(d, _)| *d == dev)?;
        (ino >> INO_BITS == 0).then_some((self.dev, tag | ino))
    }

    /// The inode to show for inode `ino` read from a directory of layer
    /// `layer` (a `d_ino`), as [`Identity::map`] shows its `st_ino`.
    #[inline]
    pub fn layer_ino(&self, layer: usize, ino: u64) -> u64 {
        match self.layer_tags.get(layer) {
            Some(&tag) if tag != 0 && ino >> INO_BITS == 0 => tag | ino,
            _ => ino,
        }
    }
}

/// `statvfs`'s `f_fsid` for `statfs`'s two words, as glibc makes it (the
/// first word in the low half, zero-extended).
fn vfs_fsid(f: [i32; 2]) -> u64 {
    u64::from(f[0] as u32) | (u64::from(f[1] as u32) << 32)
}

/// Whether the base's filesystem (`statfs`'s `f_type`) is one whose inode
/// numbers never have the top bit set, so rewritten layer inodes cannot
/// meet one of the base's.
pub fn rewrites_on(f_type: u32) -> bool {
    const EXT: u32 = 0xEF53;
    const XFS: u32 = 0x5846_5342;
    const BTRFS: u32 = 0x9123_683E;
    const TMPFS: u32 = 0x0102_1994;
    const F2FS: u32 = 0xF2F5_2010;
    const ZFS: u32 = 0x2FC1_2FC1;
    matches!(f_type, EXT | XFS | BTRFS | TMPFS | F2FS | ZFS)
}

/// The identities of a chain over layer roots `roots` (top first), whose
/// base, if any, is the last: read from the filesystem (Linux; elsewhere
/// nothing is rewritten).
#[cfg(target_os = "linux")]
pub fn of_roots(roots: &[&std::ffi::CStr], has_base: bool) -> Identity {
    let dev_of = |p: &std::ffi::CStr| rustix::fs::stat(p).ok().map(|st| st.st_dev);
    let devs: Vec<Option<u64>> = roots.iter().map(|r| dev_of(r)).collect();
    let (Some(b), true) = (roots.last(), has_base) else {
        return Identity::none();
    };
    let Ok(fs) = rustix::fs::statfs(*b) else {
        return Identity::none();
    };
    let base = devs
        .last()
        .copied()
        .flatten()
        .filter(|_| rewrites_on(fs.f_type as u32));
    let ids = Identity::new(base, &devs);
    // One `statfs` per layer device other than the base's.
    let mut fsids = Vec::new();
    let mut asked = Vec::new();
    for (r, d) in roots.iter().zip(&devs) {
        match d {
            Some(d) if ids.foreign.iter().any(|(f, _)| f == d) && !asked.contains(d) => {
                asked.push(*d);
                if let Ok(s) = rustix::fs::statfs(*r) {
                    fsids.push(fsid_words(s.f_fsid));
                }
            }
            _ => {}
        }
    }
    ids.with_fsids(fsid_words(fs.f_fsid), fsids)
}

/// The two words of an `f_fsid`.
#[cfg(target_os = "linux")]
fn fsid_words(f: rustix::fs::Fsid) -> [i32; 2] {
    // SAFETY: the kernel's `__kernel_fsid_t` is two C ints (rustix keeps
    // the field private).
    unsafe { std::mem::transmute::<rustix::fs::Fsid, [i32; 2]>(f) }
}

/// The identities of a chain: nothing is rewritten on this platform.
#[cfg(not(target_os = "linux"))]
pub fn of_roots(_roots: &[&std::ffi::CStr], _has_base: bool) -> Identity {
    Identity::none()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: u64 = 0xfe01; // 254:1, an ext4 on a device mapper disk
    const TMPFS: u64 = 0x2e; // 0:46, an anonymous device

    #[test]
    fn the_base_device_and_layers_on_it_keep_their_identity() {
        let ids = Identity::new(Some(BASE), &[Some(BASE), Some(BASE)]);
        assert_eq!(ids.device(), None);
        assert_eq!(ids.map(BASE, 12), None);
        assert_eq!(ids.map(TMPFS, 12), None);
        assert_eq!(ids.layer_ino(0, 12), 12);
    }

    #[test]
    fn layers_on_another_device_show_the_base_device_and_a_tagged_inode() {
        let ids = Identity::new(Some(BASE), &[Some(TMPFS), Some(TMPFS), Some(BASE)]);
        assert_eq!(ids.device(), Some(BASE));
        assert_eq!(ids.map(BASE, 12), None, "base entries are untouched");
        let (dev, ino) = ids.map(TMPFS, 12).unwrap();
        assert_eq!(dev, BASE);
        assert_eq!(ino, MAPPED | 46 << INO_BITS | 12);
        assert_eq!(ids.layer_ino(0, 12), ino, "readdir agrees with stat");
        assert_eq!(ids.layer_ino(1, 12), ino);
        assert_eq!(ids.layer_ino(2, 12), 12, "the base's d_ino is its own");
        // A device that is no layer's (a mount inside the base, a symlink
        // out of the branch) is left alone.
        assert_eq!(ids.map(0x2f, 12), None);
    }

    #[test]
    fn the_mapping_is_injective_and_stable() {
        let other = makedev(0, 300);
        let a = Identity::new(Some(BASE), &[Some(TMPFS), Some(other), Some(BASE)]);
        // The same devices in another order (a later chain) give the same
        // numbers.
        let b = Identity::new(Some(BASE), &[Some(other), Some(TMPFS), Some(BASE)]);
        for ino in [1u64, 2, 1 << 32, (1 << INO_BITS) - 1] {
            let x = a.map(TMPFS, ino).unwrap();
            let y = a.map(other, ino).unwrap();
            assert_ne!(x, y);
            assert_eq!(b.map(TMPFS, ino), Some(x));
            assert_ne!(x.1 & MAPPED, 0);
        }
        // Too large to tag: its real identity, which is unique.
        assert_eq!(a.map(TMPFS, 1 << INO_BITS), None);
        assert_eq!(a.layer_ino(0, 1 << INO_BITS), 1 << INO_BITS);
    }

    #[test]
    fn devices_sharing_a_code_are_not_rewritten() {
        let (x, y) = (makedev(0, 5), makedev(8, 5)); // codes 5 and 5
        let ids = Identity::new(Some(BASE), &[Some(x), Some(y), Some(BASE)]);
        assert_eq!(ids.map(x, 1), None);
        assert_eq!(ids.map(y, 1), None);
        assert_eq!(ids.layer_ino(0, 1), 1);
    }

    #[test]
    fn no_base_or_an_unsafe_base_rewrites_nothing() {
        let ids = Identity::new(None, &[Some(TMPFS)]);
        assert_eq!(ids.map(TMPFS, 1), None);
        assert!(rewrites_on(0xEF53));
        assert!(!rewrites_on(0x794C_7630), "overlayfs may use the top bits");
    }

    #[test]
    fn a_layer_filesystem_shows_the_base_fsid() {
        let ids =
            Identity::new(Some(BASE), &[Some(TMPFS), Some(BASE)]).with_fsids([7, -8], vec![[0, 0]]);
        assert_eq!(ids.map_fsid([0, 0]), Some([7, -8]));
        assert_eq!(ids.map_fsid([7, -8]), None);
        assert_eq!(ids.map_fsid([1, 1]), None, "another filesystem's");
        assert_eq!(ids.map_vfs_fsid(0), Some(vfs_fsid([7, -8])));
        assert_eq!(vfs_fsid([-7, 8]), 0x0000_0008_ffff_fff9);
        assert_eq!(ids.map_vfs_fsid(vfs_fsid([7, -8])), None);
        // Nothing rewritten when every layer is on the base's device.
        let same = Identity::new(Some(BASE), &[Some(BASE)]).with_fsids([7, 8], vec![]);
        assert_eq!(same.map_fsid([0, 0]), None);
    }

    #[test]
    fn dev_t_encoding_round_trips() {
        for (ma, mi) in [(0, 46), (8, 1), (259, 70000), (4095, 1 << 19)] {
            let d = makedev(ma, mi);
            assert_eq!((major(d), minor(d)), (ma, mi));
        }
    }
}
