//! [`WirePath`]: a path as the protocol carries it. Names on Unix are bytes,
//! not text, so a path is a byte string end to end. On the wire it is a
//! MessagePack `str` when its bytes are UTF-8 (what every peer of protocol
//! version 1 sent and expects) and a `bin` otherwise; a receiver accepts
//! either, so old and new peers interoperate on every name they could
//! both express before.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A path (or a symlink's target) as raw bytes: a `str` on the wire when
/// UTF-8, a `bin` otherwise.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WirePath(OsString);

impl WirePath {
    /// The empty path (the branch root, in branch-relative fields).
    pub fn new() -> Self {
        Self::default()
    }

    /// The path's exact bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// The path as an `OsStr`.
    pub fn as_os_str(&self) -> &OsStr {
        &self.0
    }

    /// The path as a `Path`.
    pub fn as_path(&self) -> &Path {
        Path::new(&self.0)
    }

    /// The path as text, when its bytes are UTF-8.
    pub fn to_str(&self) -> Option<&str> {
        self.0.to_str()
    }

    /// The path as text, with U+FFFD for bytes that are not UTF-8 (for
    /// messages, never for addressing a file).
    pub fn to_string_lossy(&self) -> std::borrow::Cow<'_, str> {
        self.0.to_string_lossy()
    }

    /// True for the empty path.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The owned bytes.
    pub fn into_os_string(self) -> OsString {
        self.0
    }
}

impl fmt::Debug for WirePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// Shows the path lossily (U+FFFD for bytes that are not UTF-8).
impl fmt::Display for WirePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.to_string_lossy())
    }
}

impl AsRef<OsStr> for WirePath {
    fn as_ref(&self) -> &OsStr {
        &self.0
    }
}

impl AsRef<Path> for WirePath {
    fn as_ref(&self) -> &Path {
        Path::new(&self.0)
    }
}

impl From<&str> for WirePath {
    fn from(s: &str) -> Self {
        Self(s.into())
    }
}

impl From<String> for WirePath {
    fn from(s: String) -> Self {
        Self(s.into())
    }
}

impl From<&String> for WirePath {
    fn from(s: &String) -> Self {
        Self(s.into())
    }
}

impl From<&OsStr> for WirePath {
    fn from(s: &OsStr) -> Self {
        Self(s.to_owned())
    }
}

impl From<OsString> for WirePath {
    fn from(s: OsString) -> Self {
        Self(s)
    }
}

impl From<&Path> for WirePath {
    fn from(p: &Path) -> Self {
        Self(p.as_os_str().to_owned())
    }
}

impl From<PathBuf> for WirePath {
    fn from(p: PathBuf) -> Self {
        Self(p.into_os_string())
    }
}

impl From<Vec<u8>> for WirePath {
    fn from(b: Vec<u8>) -> Self {
        Self(OsString::from_vec(b))
    }
}

impl From<&[u8]> for WirePath {
    fn from(b: &[u8]) -> Self {
        Self(OsStr::from_bytes(b).to_owned())
    }
}

impl PartialEq<str> for WirePath {
    fn eq(&self, other: &str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<&str> for WirePath {
    fn eq(&self, other: &&str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Serialize for WirePath {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.to_str() {
            Some(text) => s.serialize_str(text),
            None => s.serialize_bytes(self.as_bytes()),
        }
    }
}

impl<'de> Deserialize<'de> for WirePath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(PathVisitor)
    }
}

struct PathVisitor;

impl<'de> Visitor<'de> for PathVisitor {
    type Value = WirePath;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a path as a string or as bytes")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<WirePath, E> {
        Ok(v.into())
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<WirePath, E> {
        Ok(v.into())
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<WirePath, E> {
        Ok(v.into())
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<WirePath, E> {
        Ok(v.into())
    }

    /// Bytes as a sequence of integers (how JSON spells `bin`).
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<WirePath, A::Error> {
        let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(b) = seq.next_element::<u8>()? {
            bytes.push(b);
        }
        Ok(bytes.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(p: &WirePath) -> WirePath {
        rmp_serde::from_slice(&rmp_serde::to_vec_named(p).unwrap()).unwrap()
    }

    #[test]
    fn utf8_paths_travel_as_msgpack_strings() {
        let p = WirePath::from("dir/file.txt");
        let body = rmp_serde::to_vec_named(&p).unwrap();
        // fixstr marker: what a version-1 peer sends and expects.
        assert_eq!(body[0] & 0xe0, 0xa0);
        let old: String = rmp_serde::from_slice(&body).unwrap();
        assert_eq!(old, "dir/file.txt");
        assert_eq!(round_trip(&p), p);
    }

    #[test]
    fn other_bytes_travel_as_bin_and_come_back_exact() {
        let p = WirePath::from(b"dir/caf\xe9\n".to_vec());
        let body = rmp_serde::to_vec_named(&p).unwrap();
        assert_eq!(body[0], 0xc4, "bin8 marker");
        assert_eq!(round_trip(&p).as_bytes(), b"dir/caf\xe9\n");
    }

    #[test]
    fn a_string_from_an_old_peer_is_a_path() {
        let body = rmp_serde::to_vec_named(&"a/b").unwrap();
        let p: WirePath = rmp_serde::from_slice(&body).unwrap();
        assert_eq!(p, "a/b");
    }

    #[test]
    fn a_sequence_of_byte_values_is_a_path() {
        // How a self-describing text format (JSON) spells bytes.
        use serde::de::value::{Error, SeqDeserializer};
        let seq = SeqDeserializer::<_, Error>::new([0xffu8, 0xfe].into_iter());
        assert_eq!(WirePath::deserialize(seq).unwrap().as_bytes(), b"\xff\xfe");
    }

    #[test]
    fn integers_are_not_paths() {
        let body = rmp_serde::to_vec_named(&7u32).unwrap();
        let err = rmp_serde::from_slice::<WirePath>(&body).unwrap_err();
        assert!(err.to_string().contains("invalid type"), "{err}");
    }

    #[test]
    fn display_is_lossy_and_bytes_are_not() {
        let p = WirePath::from(b"x\xffy".to_vec());
        assert_eq!(p.to_string(), "x\u{fffd}y");
        assert_eq!(p.as_path().as_os_str().as_bytes(), b"x\xffy");
        assert_eq!(p.to_str(), None);
    }
}
