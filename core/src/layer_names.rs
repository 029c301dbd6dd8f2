//! How user names, whiteouts and opaque markers are stored in a layer
//! directory: a reserved-name scheme with escaping, so nothing the host
//! stores can collide with a user's file name.
//!
//! Every name in a layer that starts with [`RESERVED_PREFIX`] (`.agentfs~`)
//! belongs to AgentFS:
//!
//! | stored name                  | meaning                                                   |
//! |------------------------------|-----------------------------------------------------------|
//! | `.agentfs~esc.<rest>`        | the user's entry named `.agentfs~<rest>` (escaped)         |
//! | `.agentfs~wh.<name>`         | whiteout: `<name>` is deleted in this layer and below      |
//! | `.agentfs~whh.<32 hex>`      | whiteout of a name too long for the form above; the file   |
//! |                              | holds the full name, the hex is its FNV-1a-128 hash        |
//! | `.agentfs~opaque`            | the directory holding it hides everything below it         |
//! | `.agentfs~work`              | (layer root only) temporary files of in-flight operations |
//! | any other `.agentfs~...`     | reserved: ignored                                           |
//!
//! Every other stored name is the user's name, unchanged. The base
//! directory is never written and its names are taken literally: a base
//! file may be called `.agentfs~wh.x` and is then just a file.
//!
//! Whiteouts and markers are empty regular files created with one atomic
//! syscall each, so they live and die with the layer directory: a native
//! snapshot of the layer carries them, and they survive restarts.

use std::{
    ffi::{OsStr, OsString},
    os::unix::ffi::{OsStrExt, OsStringExt},
};

use super::{
    error::{CoreError, CoreResult},
    path::NAME_MAX,
};

/// Prefix of every name AgentFS reserves inside layers.
pub const RESERVED_PREFIX: &[u8] = b".agentfs~";
/// Marker file making its directory opaque.
pub const OPAQUE_MARKER: &str = ".agentfs~opaque";
/// Work directory at a layer's root, for temporary files.
pub const WORK_DIR: &str = ".agentfs~work";
const ESCAPED: &[u8] = b".agentfs~esc.";
const WHITEOUT: &[u8] = b".agentfs~wh.";
const HASHED_WHITEOUT: &[u8] = b".agentfs~whh.";

/// What a name found in a layer directory stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A user entry with this (decoded) name.
    Entry(OsString),
    /// A whiteout for this user name.
    Whiteout(OsString),
    /// A whiteout whose user name is stored in the file (long names).
    HashedWhiteout,
    /// The opaque marker.
    Opaque,
    /// A reserved name with no meaning to readers (work dir, future use).
    Reserved,
}

fn cat(a: &[u8], b: &[u8]) -> OsString {
    let mut v = Vec::with_capacity(a.len() + b.len());
    v.extend_from_slice(a);
    v.extend_from_slice(b);
    OsString::from_vec(v)
}

/// The stored form of user name `name` in a layer.
pub fn encode(name: &OsStr) -> CoreResult<OsString> {
    let b = name.as_bytes();
    match b.strip_prefix(RESERVED_PREFIX) {
        None => Ok(name.to_os_string()),
        Some(rest) => {
            let stored = cat(ESCAPED, rest);
            if stored.len() > NAME_MAX {
                Err(CoreError::NameTooLong(format!(
                    "{} (names starting with {:?} are stored escaped and need {} more bytes)",
                    name.to_string_lossy(),
                    String::from_utf8_lossy(RESERVED_PREFIX),
                    ESCAPED.len() - RESERVED_PREFIX.len()
                )))
            } else {
                Ok(stored)
            }
        }
    }
}

/// The stored name of the whiteout for user name `name`, and whether it is
/// the hashed form (whose file content is `name`).
pub fn whiteout_name(name: &OsStr) -> (OsString, bool) {
    let b = name.as_bytes();
    if WHITEOUT.len() + b.len() <= NAME_MAX {
        (cat(WHITEOUT, b), false)
    } else {
        let hex = format!("{:032x}", fnv1a_128(b));
        (cat(HASHED_WHITEOUT, hex.as_bytes()), true)
    }
}

/// What the stored name `stored` stands for.
pub fn decode(stored: &OsStr) -> Decoded {
    let b = stored.as_bytes();
    let Some(rest) = b.strip_prefix(RESERVED_PREFIX) else {
        return Decoded::Entry(stored.to_os_string());
    };
    if let Some(user) = b.strip_prefix(ESCAPED) {
        Decoded::Entry(cat(RESERVED_PREFIX, user))
    } else if let Some(user) = b.strip_prefix(WHITEOUT) {
        if user.is_empty() {
            Decoded::Reserved
        } else {
            Decoded::Whiteout(OsStr::from_bytes(user).to_os_string())
        }
    } else if b.starts_with(HASHED_WHITEOUT) {
        Decoded::HashedWhiteout
    } else if rest == &OPAQUE_MARKER.as_bytes()[RESERVED_PREFIX.len()..] {
        Decoded::Opaque
    } else {
        Decoded::Reserved
    }
}

/// FNV-1a, 128-bit: a stable hash (it names files on disk, so it must
/// never change between versions).
pub fn fnv1a_128(data: &[u8]) -> u128 {
    const OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;
    data.iter()
        .fold(OFFSET, |h, &b| (h ^ u128::from(b)).wrapping_mul(PRIME))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn plain_names_are_stored_unchanged() {
        assert_eq!(encode(OsStr::new("main.rs")).unwrap(), "main.rs");
        assert_eq!(
            decode(OsStr::new("main.rs")),
            Decoded::Entry("main.rs".into())
        );
        assert_eq!(
            decode(OsStr::new(".agentfs")),
            Decoded::Entry(".agentfs".into())
        );
    }

    #[test]
    fn reserved_looking_user_names_are_escaped() {
        for user in [
            ".agentfs~wh.x",
            ".agentfs~opaque",
            ".agentfs~work",
            ".agentfs~",
        ] {
            let stored = encode(OsStr::new(user)).unwrap();
            assert!(stored.as_bytes().starts_with(ESCAPED), "{user}");
            assert_eq!(decode(&stored), Decoded::Entry(user.into()));
        }
    }

    #[test]
    fn markers_decode() {
        assert_eq!(decode(OsStr::new(OPAQUE_MARKER)), Decoded::Opaque);
        assert_eq!(decode(OsStr::new(WORK_DIR)), Decoded::Reserved);
        let (w, hashed) = whiteout_name(OsStr::new("a.txt"));
        assert!(!hashed);
        assert_eq!(decode(&w), Decoded::Whiteout("a.txt".into()));
        let (w, _) = whiteout_name(OsStr::new(".agentfs~wh.y"));
        assert_eq!(decode(&w), Decoded::Whiteout(".agentfs~wh.y".into()));
    }

    #[test]
    fn long_names_get_hashed_whiteouts_that_fit() {
        let long = "n".repeat(255);
        let (w, hashed) = whiteout_name(OsStr::new(&long));
        assert!(hashed && w.len() <= NAME_MAX);
        assert_eq!(decode(&w), Decoded::HashedWhiteout);
        let (w2, _) = whiteout_name(OsStr::new(&"m".repeat(255)));
        assert_ne!(w, w2);
    }

    #[test]
    fn escaping_that_does_not_fit_is_name_too_long() {
        let user = format!(".agentfs~{}", "z".repeat(244));
        assert_eq!(user.len(), 253);
        assert!(matches!(
            encode(OsStr::new(&user)).unwrap_err(),
            CoreError::NameTooLong(_)
        ));
    }

    #[test]
    fn fnv_is_the_reference_function() {
        // Reference values of FNV-1a 128.
        assert_eq!(fnv1a_128(b""), 0x6c62272e07bb014262b821756295c58d);
        assert_eq!(fnv1a_128(b"a"), 0xd228cb696f1a8caf78912b704e4a8964);
    }

    proptest! {
        #[test]
        fn encode_decode_round_trips(name in proptest::collection::vec(1u8..=255, 1..200)) {
            prop_assume!(!name.contains(&b'/') && name != b"." && name != b"..");
            let name = OsString::from_vec(name);
            if let Ok(stored) = encode(&name) {
                prop_assert_eq!(decode(&stored), Decoded::Entry(name.clone()));
                // A stored user name never looks like a whiteout or marker.
                let (w, _) = whiteout_name(&name);
                prop_assert_ne!(stored, w);
            }
        }
    }
}
