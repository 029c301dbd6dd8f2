//! System Integrity Protection and `agentfs run` on macOS: the kernel
//! strips every `DYLD_*` variable when it starts a protected program
//! (anything under `/usr` except `/usr/local`, `/bin`, `/sbin`, `/System`,
//! and a script whose `#!` interpreter is one of them), so the shim would
//! never load and the program would run on the base, outside the branch.
//! `agentfs run` refuses such a command with an explanation instead. The
//! checks are plain path logic, tested on every platform.

use std::{
    ffi::{OsStr, OsString},
    io::Read,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

/// Directories whose programs SIP protects (`/usr/local` is not).
const PROTECTED: &[&str] = &["/usr", "/bin", "/sbin", "/System"];

/// Whether `path` (absolute, symlinks resolved) is a SIP-protected location.
pub fn is_protected(path: &Path) -> bool {
    if path.starts_with("/usr/local") {
        return false;
    }
    PROTECTED.iter().any(|p| path.starts_with(p))
}

/// The interpreter of a `#!` line (its first word), if `head` starts with
/// one.
pub fn shebang(head: &[u8]) -> Option<PathBuf> {
    let rest = head.strip_prefix(b"#!")?;
    let line = rest.split(|&b| b == b'\n').next()?;
    let word = line
        .split(|&b| b == b' ' || b == b'\t')
        .find(|w| !w.is_empty())?;
    Some(PathBuf::from(OsStr::from_bytes(word)))
}

/// Finds `cmd` as `execvp` would: a name with a `/` as is, otherwise the
/// first executable file of that name in `path_var`.
pub fn locate(cmd: &OsStr, path_var: Option<&OsStr>, cwd: &Path) -> Option<PathBuf> {
    if cmd.as_bytes().contains(&b'/') {
        return Some(cwd.join(cmd));
    }
    let dirs = path_var.map_or_else(
        || OsString::from("/usr/bin:/bin:/usr/sbin:/sbin"),
        OsStr::to_os_string,
    );
    std::env::split_paths(&dirs)
        .map(|d| {
            if d.as_os_str().is_empty() {
                cwd.join(&d)
            } else {
                d
            }
        })
        .map(|d| d.join(cmd))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Why a command would lose the shim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stripped {
    /// The program itself is protected.
    Program(PathBuf),
    /// A script whose interpreter is protected.
    Interpreter {
        /// The script.
        script: PathBuf,
        /// Its `#!` interpreter.
        interpreter: PathBuf,
    },
}

impl std::fmt::Display for Stripped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stripped::Program(p) => write!(
                f,
                "{} is protected by System Integrity Protection: macOS removes DYLD_INSERT_LIBRARIES \
                 when it starts it, so it would run on the base, outside the branch. Run a copy \
                 outside /usr, /bin, /sbin and /System instead (Homebrew's, say: brew install \
                 bash coreutils git python)",
                p.display()
            ),
            Stripped::Interpreter {
                script,
                interpreter,
            } => write!(
                f,
                "{} is a script run by {}, which System Integrity Protection protects: macOS \
                 removes DYLD_INSERT_LIBRARIES when it starts it, so the script would run on the \
                 base, outside the branch. Run it with an interpreter outside /usr, /bin, /sbin \
                 and /System (agentfs run ... -- /opt/homebrew/bin/bash {}, say)",
                script.display(),
                interpreter.display(),
                script.display()
            ),
        }
    }
}

/// Checks the program `agentfs run` is about to start: `Some` when SIP
/// would strip the shim from it. A command that cannot be found is left
/// to fail when it is started (with the usual error).
pub fn check(cmd: &OsStr, path_var: Option<&OsStr>, cwd: &Path) -> Option<Stripped> {
    let found = locate(cmd, path_var, cwd)?;
    let real = std::fs::canonicalize(&found).unwrap_or(found);
    if is_protected(&real) {
        return Some(Stripped::Program(real));
    }
    let mut head = [0u8; 512];
    let n = std::fs::File::open(&real)
        .and_then(|mut f| f.read(&mut head))
        .unwrap_or(0);
    let interp = shebang(&head[..n])?;
    let interp_real = std::fs::canonicalize(&interp).unwrap_or(interp);
    is_protected(&interp_real).then_some(Stripped::Interpreter {
        script: real,
        interpreter: interp_real,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn protected_locations() {
        for p in [
            "/usr/bin/git",
            "/bin/sh",
            "/sbin/mount",
            "/usr/libexec/x",
            "/System/Library/x",
        ] {
            assert!(is_protected(Path::new(p)), "{p}");
        }
        for p in [
            "/usr/local/bin/git",
            "/opt/homebrew/bin/bash",
            "/Users/me/bin/tool",
            "/usrx/bin/a",
            "/binary",
        ] {
            assert!(!is_protected(Path::new(p)), "{p}");
        }
    }

    #[test]
    fn shebang_lines() {
        assert_eq!(shebang(b"#!/bin/sh\necho"), Some("/bin/sh".into()));
        assert_eq!(
            shebang(b"#! /usr/bin/env python3\n"),
            Some("/usr/bin/env".into())
        );
        assert_eq!(shebang(b"#!\t/opt/x -e"), Some("/opt/x".into()));
        assert_eq!(shebang(b"\x7fELF"), None);
        assert_eq!(shebang(b"#!\n"), None);
    }

    fn exe(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn scripts_are_judged_by_their_interpreter() {
        let t = tempfile::tempdir().unwrap();
        let ok_interp = exe(t.path(), "mybash", "\x7fELF");
        let good = exe(
            t.path(),
            "good.sh",
            &format!("#!{}\necho hi\n", ok_interp.display()),
        );
        let bad = exe(t.path(), "bad.sh", "#!/bin/sh\necho hi\n");
        assert_eq!(check(good.as_os_str(), None, t.path()), None);
        assert_eq!(check(ok_interp.as_os_str(), None, t.path()), None);
        let e = check(OsStr::new("./bad.sh"), None, t.path()).unwrap();
        let Stripped::Interpreter {
            script,
            interpreter,
        } = &e
        else {
            panic!("{e:?}")
        };
        assert_eq!(script, &bad.canonicalize().unwrap());
        assert!(interpreter.starts_with("/usr") || interpreter.starts_with("/bin"));
        assert!(e.to_string().contains("System Integrity Protection"));
    }

    #[test]
    fn commands_are_found_on_path_like_execvp() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("bin");
        std::fs::create_dir(&dir).unwrap();
        let tool = exe(&dir, "tool", "\x7fELF");
        std::fs::write(dir.join("plain"), "").unwrap(); // not executable
        let path = std::env::join_paths([Path::new("/nonexistent"), &dir]).unwrap();
        assert_eq!(
            locate(OsStr::new("tool"), Some(&path), t.path()),
            Some(tool)
        );
        assert_eq!(locate(OsStr::new("plain"), Some(&path), t.path()), None);
        assert_eq!(check(OsStr::new("missing"), Some(&path), t.path()), None);
        // A program found in a protected directory (sh is there on any
        // Unix) is refused.
        let sys = OsString::from("/bin:/usr/bin");
        match check(OsStr::new("sh"), Some(&sys), t.path()) {
            Some(Stripped::Program(p)) => assert!(is_protected(&p), "{}", p.display()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_symlink_into_a_protected_directory_is_protected() {
        let t = tempfile::tempdir().unwrap();
        let link = t.path().join("sh");
        std::os::unix::fs::symlink("/bin/sh", &link).unwrap();
        assert!(matches!(
            check(link.as_os_str(), None, t.path()),
            Some(Stripped::Program(_))
        ));
    }
}
