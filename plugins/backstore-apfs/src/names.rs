//! Names handed to `diskutil`: snapshot names (sanitised) and RAM disk
//! volume names (which carry the owner's pid so leftovers can be found).

use std::sync::atomic::{AtomicU32, Ordering};

use agentfs_plugin_api::{PluginError, PluginResult};

/// Longest APFS snapshot or volume name, in UTF-8 bytes.
pub const MAX_NAME_BYTES: usize = 255;

/// Prefix of every RAM disk volume this plugin creates.
pub const VOLUME_PREFIX: &str = "AgentFS-";

/// ASCII characters kept as they are; every other ASCII character becomes
/// `_`. Non-ASCII characters are kept unless they are whitespace or control
/// characters (APFS names are UTF-8).
fn keep_ascii(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+' | b'@')
}

/// Makes `raw` a safe APFS snapshot name:
/// - whitespace, control characters and ASCII punctuation other than
///   `. _ - + @` become `_` (a run of them becomes one `_`);
/// - letters of any script are kept (`Schnappschüsse`, `快照`);
/// - leading `-`, `.` and `_` are dropped, so the name is never taken for
///   an option of `diskutil` nor hidden;
/// - it is cut to at most 255 bytes on a character boundary, then trailing
///   `_` are dropped.
///
/// Sanitising a sanitised name changes nothing. A name with nothing usable
/// left is an `InvalidArgument` error.
pub fn sanitize_snapshot_name(raw: &str) -> PluginResult<String> {
    let mut mapped = String::with_capacity(raw.len());
    let mut replaced_last = false;
    for c in raw.chars() {
        let keep = if c.is_ascii() {
            keep_ascii(c as u8)
        } else {
            !(c.is_whitespace() || c.is_control())
        };
        if keep {
            mapped.push(c);
            replaced_last = false;
        } else if !replaced_last {
            mapped.push('_');
            replaced_last = true;
        }
    }
    let trimmed = mapped.trim_start_matches(['-', '.', '_']);
    let mut end = trimmed.len().min(MAX_NAME_BYTES);
    while !trimmed.is_char_boundary(end) {
        end -= 1;
    }
    let out = trimmed[..end].trim_end_matches('_');
    if out.is_empty() {
        return Err(PluginError::invalid(format!(
            "snapshot name {raw:?} has no usable characters (use letters, digits, '.', '_', '-')"
        )));
    }
    Ok(out.to_string())
}

/// A fresh RAM disk volume name owned by process `pid`:
/// `AgentFS-<pid>-<8 hex digits>`.
pub fn volume_name(pid: u32) -> String {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32).rotate_left(16))
        .unwrap_or(0);
    let tag = nanos
        ^ SEQ
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9);
    format!("{VOLUME_PREFIX}{pid}-{tag:08x}")
}

/// The owner pid of a volume this plugin named, from its name or from its
/// mount point's last component (macOS mounts a second volume of the same
/// name at `<name> 1`). `None` for any other name.
pub fn volume_owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(VOLUME_PREFIX)?;
    let (pid, rest) = rest.split_once('-')?;
    let tag = rest.split(' ').next()?;
    let tail = &rest[tag.len()..];
    let tail_ok = tail.is_empty()
        || tail
            .strip_prefix(' ')
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    let pid_ok = !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit());
    let tag_ok = tag.len() == 8 && tag.bytes().all(|b| b.is_ascii_hexdigit());
    if pid_ok && tag_ok && tail_ok {
        pid.parse().ok()
    } else {
        None
    }
}

pub use agentfs_plugin_support::leftovers::process_alive;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn examples_of_sanitising() {
        let s = |x: &str| sanitize_snapshot_name(x).unwrap();
        assert_eq!(s("before refactor"), "before_refactor");
        assert_eq!(s("  two   spaces\tand\ttabs  "), "two_spaces_and_tabs");
        assert_eq!(s("Schnappschüsse vom März"), "Schnappschüsse_vom_März");
        assert_eq!(s("快照 一"), "快照_一");
        assert_eq!(s("-readonly"), "readonly");
        assert_eq!(s("../../etc/passwd"), "etc_passwd");
        assert_eq!(s("a/b:c;d$(rm -rf)"), "a_b_c_d_rm_-rf");
        assert_eq!(
            s("com.apple.TimeMachine.2024-01-01-101010.local"),
            "com.apple.TimeMachine.2024-01-01-101010.local"
        );
        assert_eq!(s("line\nbreak\u{7}bell"), "line_break_bell");
        assert_eq!(s("nbsp\u{a0}here"), "nbsp_here");
        for empty in ["", "   ", "---", "/", "\n\t", "._-"] {
            assert!(sanitize_snapshot_name(empty).is_err(), "{empty:?}");
        }
    }

    #[test]
    fn long_names_are_cut_on_a_character_boundary() {
        let s = sanitize_snapshot_name(&"ü".repeat(200)).unwrap();
        assert_eq!(s.len(), 254, "127 two-byte characters fit in 255 bytes");
        let s = sanitize_snapshot_name(&"x".repeat(300)).unwrap();
        assert_eq!(s.len(), 255);
        // A cut that ends on a replaced character drops it.
        let s = sanitize_snapshot_name(&format!("{} tail", "y".repeat(254))).unwrap();
        assert_eq!(s, "y".repeat(254));
    }

    #[test]
    fn volume_names_carry_the_pid_and_are_unique() {
        let a = volume_name(4242);
        let b = volume_name(4242);
        assert_ne!(a, b);
        assert!(a.starts_with("AgentFS-4242-") && a.len() == "AgentFS-4242-".len() + 8);
        assert_eq!(volume_owner(&a), Some(4242));
        assert_eq!(volume_owner(&format!("{a} 1")), Some(4242));
        for other in [
            "Scratch",
            "AgentFS-",
            "AgentFS-12",
            "AgentFS-x-0badc0de",
            "AgentFS-12-0badc0d",
            "AgentFS-12-0badc0dex",
            "AgentFS-12-0badc0de 1x",
            "AgentFS-12-0badc0de ",
            "agentfs-12-0badc0de",
        ] {
            assert_eq!(volume_owner(other), None, "{other}");
        }
    }

    #[test]
    fn liveness_of_this_process_and_of_a_reaped_child() {
        assert!(process_alive(std::process::id()));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(
            !process_alive(pid),
            "a reaped child's pid must read as dead"
        );
        assert!(!process_alive(0));
        assert!(!process_alive(u32::MAX));
    }

    fn assert_safe(out: &str) {
        assert!(!out.is_empty() && out.len() <= MAX_NAME_BYTES, "{out:?}");
        assert!(!out.starts_with(['-', '.', '_']), "{out:?}");
        assert!(!out.ends_with('_'), "{out:?}");
        for c in out.chars() {
            assert!(!c.is_whitespace() && !c.is_control(), "{out:?}");
            if c.is_ascii() {
                assert!(keep_ascii(c as u8), "{out:?} has {c:?}");
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn sanitised_names_are_safe_and_stable(raw in "\\PC{0,300}|[ -~]{0,300}|(\\s|[a-zé快])*") {
            if let Ok(out) = sanitize_snapshot_name(&raw) {
                assert_safe(&out);
                prop_assert_eq!(sanitize_snapshot_name(&out).unwrap(), out.clone());
                // Nothing is invented: kept characters appear in the input, in order.
                let mut it = raw.chars();
                for c in out.chars().filter(|&c| c != '_') {
                    prop_assert!(it.any(|r| r == c), "{:?} not from {:?}", out, raw);
                }
            } else {
                prop_assert!(!raw.chars().any(|c| c.is_alphanumeric() || (!c.is_ascii() && !c.is_whitespace() && !c.is_control())),
                    "{:?} was refused but has usable characters", raw);
            }
        }

        #[test]
        fn safe_names_pass_unchanged(raw in "[A-Za-z0-9ßü@+][A-Za-z0-9.+@ßü_-]{0,120}[A-Za-z0-9]") {
            prop_assert_eq!(sanitize_snapshot_name(&raw).unwrap(), raw);
        }

        #[test]
        fn any_utf8_is_cut_to_255_bytes_at_most(raw in "\\PC{200,400}") {
            if let Ok(out) = sanitize_snapshot_name(&raw) {
                prop_assert!(out.len() <= 255);
            }
        }
    }
}
