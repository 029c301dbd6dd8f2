//! Checks on a plugin file before `dlopen` maps it and runs its code.
//!
//! Policy: `dlopen` blocks on a FIFO, dies with SIGBUS on a truncated
//! library (mapped pages past the end of the file), says "No such file or
//! directory" for a library of another architecture, and runs whatever code
//! the file holds at the moment it is opened. So before opening, a plugin
//! file must be:
//! - a regular file (symlinks are followed; a loop is named as such);
//! - a well-formed shared library for this machine: the ELF (or Mach-O)
//!   header's class, byte order and machine are ours, and the program and
//!   section header tables and every loaded segment lie inside the file;
//! - replaceable by nobody but the caller and root: neither the file nor a
//!   directory on its path (as given and after resolving symlinks) is
//!   writable by group or others, or owned by another user; a directory
//!   writable by others with the sticky bit (`/tmp`) is accepted, since
//!   others cannot replace what they do not own in it (the rules `sudo` and
//!   `ssh` apply). `AGENTFS_ALLOW_INSECURE_PLUGINS=1` turns this last rule
//!   into a warning, for development only.

use std::{
    fs::{self, File},
    io::{self, Read},
    os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

/// The environment variable that accepts plugins other users could replace.
pub const ALLOW_INSECURE_ENV: &str = "AGENTFS_ALLOW_INSECURE_PLUGINS";

/// What is wrong with a plugin file, as the end of one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileProblem {
    /// Nothing at the path (or a dangling symlink).
    #[error("no such file")]
    Missing,
    /// Resolving the path met a symlink loop.
    #[error("cannot be resolved: too many levels of symbolic links (a symlink loop)")]
    SymlinkLoop,
    /// Not a regular file.
    #[error("is not a regular file (it is a {0}); a plugin is a shared library file")]
    NotRegular(&'static str),
    /// The file could not be read.
    #[error("cannot be read: {0}")]
    Unreadable(String),
    /// Not a shared library at all (no ELF or Mach-O header).
    #[error("is not a loadable shared library: {0}")]
    NotALibrary(String),
    /// A library for another machine.
    #[error("is a library for {found}, but this agentfs runs on {expected}")]
    WrongArchitecture {
        /// What the header says.
        found: String,
        /// What this process is.
        expected: String,
    },
    /// Headers or segments point past the end of the file.
    #[error("is a truncated or corrupt shared library: {0}")]
    Truncated(String),
    /// The file or a directory on its path can be replaced by someone else.
    #[error("is refused: {0}; fix the permissions, or set {ALLOW_INSECURE_ENV}=1 to load it anyway (development only)")]
    Insecure(String),
}

/// Runs every check on `path` (absolute). `Ok` means `dlopen` may open it.
pub fn check_file(path: &Path) -> Result<(), FileProblem> {
    let md = fs::metadata(path).map_err(|e| stat_problem(&e))?;
    if !md.is_file() {
        return Err(FileProblem::NotRegular(file_type_name(&md.file_type())));
    }
    if let Err(problem) = check_ownership(path) {
        if std::env::var_os(ALLOW_INSECURE_ENV).is_some_and(|v| v == "1") {
            tracing::warn!(path = %path.display(), "{problem} ({ALLOW_INSECURE_ENV}=1: loading it anyway)");
        } else {
            return Err(FileProblem::Insecure(problem));
        }
    }
    // O_NONBLOCK: should the file have been swapped for a FIFO since the
    // stat above, the open still returns at once; fstat then refuses it.
    let mut f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| stat_problem(&e))?;
    let md = f
        .metadata()
        .map_err(|e| FileProblem::Unreadable(e.to_string()))?;
    if !md.is_file() {
        return Err(FileProblem::NotRegular(file_type_name(&md.file_type())));
    }
    check_image(&mut f, md.len())
}

fn stat_problem(e: &io::Error) -> FileProblem {
    match e.raw_os_error() {
        Some(libc::ENOENT) => FileProblem::Missing,
        Some(libc::ELOOP) => FileProblem::SymlinkLoop,
        _ => FileProblem::Unreadable(e.to_string()),
    }
}

fn file_type_name(t: &fs::FileType) -> &'static str {
    if t.is_dir() {
        "directory"
    } else if t.is_fifo() {
        "FIFO"
    } else if t.is_socket() {
        "socket"
    } else if t.is_char_device() {
        "character device"
    } else if t.is_block_device() {
        "block device"
    } else {
        "special file"
    }
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The file and every directory above it, as given and after resolving
/// symlinks, must be writable and owned only by the caller or root.
fn check_ownership(path: &Path) -> Result<(), String> {
    let me = euid();
    let real = fs::canonicalize(path).map_err(|e| format!("cannot resolve: {e}"))?;
    let md = fs::metadata(&real).map_err(|e| e.to_string())?;
    check_one(&real, &md, me, false)?;
    let mut dirs: Vec<PathBuf> = Vec::new();
    for p in [path, real.as_path()] {
        dirs.extend(p.ancestors().skip(1).map(Path::to_path_buf));
    }
    dirs.sort();
    dirs.dedup();
    for d in dirs.iter().filter(|d| !d.as_os_str().is_empty()) {
        // `symlink_metadata`: a symlinked directory is judged by the link's
        // own directory (above) and by its target (on the resolved path).
        let md = fs::symlink_metadata(d).map_err(|e| format!("{}: {e}", d.display()))?;
        if md.file_type().is_symlink() {
            continue;
        }
        check_one(d, &md, me, true)?;
    }
    Ok(())
}

fn check_one(p: &Path, md: &fs::Metadata, me: u32, is_dir: bool) -> Result<(), String> {
    let mode = md.mode() & 0o7777;
    let what = if is_dir { "directory" } else { "file" };
    let sticky = is_dir && mode & 0o1000 != 0;
    if mode & 0o022 != 0 && !sticky {
        let who = if mode & 0o002 != 0 {
            "other users"
        } else {
            "its group"
        };
        return Err(format!(
            "{what} {} is writable by {who} (mode {mode:04o})",
            p.display()
        ));
    }
    if md.uid() != me && md.uid() != 0 {
        return Err(format!(
            "{what} {} is owned by uid {}, neither you (uid {me}) nor root",
            p.display(),
            md.uid()
        ));
    }
    Ok(())
}

/// Reads `n` bytes at `off`, or says the file ends first.
fn read_at(f: &mut File, len: u64, off: u64, n: usize, what: &str) -> Result<Vec<u8>, FileProblem> {
    use std::io::{Seek, SeekFrom};
    if off.saturating_add(n as u64) > len {
        return Err(FileProblem::Truncated(format!(
            "{what} ends at byte {} but the file has {len} bytes",
            off.saturating_add(n as u64)
        )));
    }
    let mut buf = vec![0; n];
    f.seek(SeekFrom::Start(off))
        .and_then(|_| f.read_exact(&mut buf))
        .map_err(|e| FileProblem::Unreadable(e.to_string()))?;
    Ok(buf)
}

/// Checks the image format header and its tables against the file size.
fn check_image(f: &mut File, len: u64) -> Result<(), FileProblem> {
    let mut magic = [0u8; 4];
    let n = f
        .read(&mut magic)
        .map_err(|e| FileProblem::Unreadable(e.to_string()))?;
    if n < 4 {
        return Err(FileProblem::NotALibrary(format!(
            "the file has only {len} bytes"
        )));
    }
    if magic == *b"\x7fELF" {
        return elf::check(f, len);
    }
    if macho::is_macho(magic) {
        return macho::check(f, len, magic);
    }
    Err(FileProblem::NotALibrary(
        "no ELF or Mach-O header".to_string(),
    ))
}

mod elf {
    //! ELF: the identification bytes, `e_machine`, and bounds of the
    //! program headers, the section headers and every `PT_LOAD` segment.

    use super::{read_at, FileProblem};
    use std::fs::File;

    const PT_LOAD: u32 = 1;

    /// Reads little- or big-endian unsigned integers of 2, 4 or 8 bytes.
    struct Reader<'a> {
        b: &'a [u8],
        le: bool,
    }

    impl Reader<'_> {
        fn uint(&self, off: usize, n: usize) -> u64 {
            let bytes = &self.b[off..off + n];
            let mut v = 0u64;
            for i in 0..n {
                let byte = if self.le { bytes[n - 1 - i] } else { bytes[i] };
                v = (v << 8) | u64::from(byte);
            }
            v
        }
    }

    /// The name of an ELF `e_machine` value.
    pub(super) fn machine_name(m: u16) -> String {
        match m {
            3 => "x86".into(),
            8 => "mips".into(),
            20 => "powerpc".into(),
            21 => "powerpc64".into(),
            22 => "s390x".into(),
            40 => "arm".into(),
            62 => "x86_64".into(),
            183 => "aarch64".into(),
            243 => "riscv".into(),
            258 => "loongarch".into(),
            other => format!("machine {other}"),
        }
    }

    /// This process's `e_machine`, where known.
    fn host_machine() -> Option<u16> {
        Some(match std::env::consts::ARCH {
            "x86" => 3,
            "x86_64" => 62,
            "aarch64" => 183,
            "arm" => 40,
            "riscv64" | "riscv32" => 243,
            "powerpc64" => 21,
            "s390x" => 22,
            "loongarch64" => 258,
            _ => return None,
        })
    }

    pub(super) fn check(f: &mut File, len: u64) -> Result<(), FileProblem> {
        let ident = read_at(f, len, 0, 16, "the ELF identification")?;
        let is64 = match ident[4] {
            1 => false,
            2 => true,
            c => {
                return Err(FileProblem::NotALibrary(format!(
                    "ELF class {c} is unknown"
                )))
            }
        };
        let le = match ident[5] {
            1 => true,
            2 => false,
            d => {
                return Err(FileProblem::NotALibrary(format!(
                    "ELF data encoding {d} is unknown"
                )))
            }
        };
        let ours64 = cfg!(target_pointer_width = "64");
        let ours_le = cfg!(target_endian = "little");
        let hsize = if is64 { 64 } else { 52 };
        let h = read_at(f, len, 0, hsize, "the ELF header")?;
        let r = Reader { b: &h, le };
        let machine = r.uint(18, 2) as u16;
        let bits = |b: bool| if b { "64-bit" } else { "32-bit" };
        let order = |b: bool| if b { "little-endian" } else { "big-endian" };
        if is64 != ours64 || le != ours_le || host_machine().is_some_and(|m| m != machine) {
            return Err(FileProblem::WrongArchitecture {
                found: format!("{} ({}, {})", machine_name(machine), bits(is64), order(le)),
                expected: format!(
                    "{} ({}, {})",
                    std::env::consts::ARCH,
                    bits(ours64),
                    order(ours_le)
                ),
            });
        }
        let e_type = r.uint(16, 2);
        if e_type != 3 {
            return Err(FileProblem::NotALibrary(format!(
                "ELF type {e_type} is not a shared object"
            )));
        }
        let (phoff, shoff, phentsize, phnum, shentsize, shnum) = if is64 {
            (
                r.uint(32, 8),
                r.uint(40, 8),
                r.uint(54, 2),
                r.uint(56, 2),
                r.uint(58, 2),
                r.uint(60, 2),
            )
        } else {
            (
                r.uint(28, 4),
                r.uint(32, 4),
                r.uint(42, 2),
                r.uint(44, 2),
                r.uint(46, 2),
                r.uint(48, 2),
            )
        };
        let table = |off: u64, entsize: u64, num: u64, what: &str| -> Result<(), FileProblem> {
            let end = entsize
                .checked_mul(num)
                .and_then(|s| s.checked_add(off))
                .unwrap_or(u64::MAX);
            if num > 0 && end > len {
                return Err(FileProblem::Truncated(format!(
                    "its {what} end at byte {end} but the file has {len} bytes"
                )));
            }
            Ok(())
        };
        table(phoff, phentsize, phnum, "program headers")?;
        table(shoff, shentsize, shnum, "section headers")?;
        let min_ph = if is64 { 56 } else { 32 };
        if phnum > 0 && phentsize < min_ph {
            return Err(FileProblem::NotALibrary(format!(
                "program header size {phentsize} is too small"
            )));
        }
        let phdrs = read_at(
            f,
            len,
            phoff,
            (phentsize * phnum) as usize,
            "the program headers",
        )?;
        for i in 0..phnum as usize {
            let e = Reader {
                b: &phdrs[i * phentsize as usize..(i + 1) * phentsize as usize],
                le,
            };
            if e.uint(0, 4) as u32 != PT_LOAD {
                continue;
            }
            let (offset, filesz) = if is64 {
                (e.uint(8, 8), e.uint(32, 8))
            } else {
                (e.uint(4, 4), e.uint(16, 4))
            };
            let end = offset.saturating_add(filesz);
            if end > len {
                return Err(FileProblem::Truncated(format!(
                    "loadable segment {i} ends at byte {end} but the file has {len} bytes"
                )));
            }
        }
        Ok(())
    }
}

mod macho {
    //! Mach-O: the magic, the CPU type and the load commands' bounds.
    //! (A universal binary is left to dyld, which checks its slices.)

    use super::{read_at, FileProblem};
    use std::fs::File;

    const MH_MAGIC_64: u32 = 0xfeed_facf;
    const MH_MAGIC: u32 = 0xfeed_face;
    const FAT_MAGIC: u32 = 0xcafe_babe;

    pub(super) fn is_macho(m: [u8; 4]) -> bool {
        let le = u32::from_le_bytes(m);
        let be = u32::from_be_bytes(m);
        [MH_MAGIC_64, MH_MAGIC].contains(&le) || be == FAT_MAGIC
    }

    fn cpu_name(c: u32) -> String {
        match c {
            0x0100_0007 => "x86_64".into(),
            0x0100_000c => "aarch64".into(),
            7 => "x86".into(),
            12 => "arm".into(),
            other => format!("cpu type {other:#x}"),
        }
    }

    pub(super) fn check(f: &mut File, len: u64, magic: [u8; 4]) -> Result<(), FileProblem> {
        if u32::from_be_bytes(magic) == FAT_MAGIC {
            return Ok(());
        }
        let is64 = u32::from_le_bytes(magic) == MH_MAGIC_64;
        let hsize = if is64 { 32 } else { 28 };
        let h = read_at(f, len, 0, hsize, "the Mach-O header")?;
        let word = |o: usize| u32::from_le_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
        let cpu = word(4);
        let ours = match std::env::consts::ARCH {
            "x86_64" => Some(0x0100_0007),
            "aarch64" => Some(0x0100_000c),
            _ => None,
        };
        if ours.is_some_and(|o| o != cpu) {
            return Err(FileProblem::WrongArchitecture {
                found: cpu_name(cpu),
                expected: std::env::consts::ARCH.to_string(),
            });
        }
        let sizeofcmds = u64::from(word(20));
        if hsize as u64 + sizeofcmds > len {
            return Err(FileProblem::Truncated(format!(
                "its load commands end at byte {} but the file has {len} bytes",
                hsize as u64 + sizeofcmds
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_or_world_writable_and_foreign_owners_are_named() {
        let t = tempfile::tempdir().unwrap();
        let md = |p: &Path| fs::metadata(p).unwrap();
        let f = t.path().join("f");
        fs::write(&f, b"x").unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&f, fs::Permissions::from_mode(0o666)).unwrap();
        let e = check_one(&f, &md(&f), euid(), false).unwrap_err();
        assert!(e.contains("writable by other users (mode 0666)"), "{e}");
        fs::set_permissions(&f, fs::Permissions::from_mode(0o664)).unwrap();
        let e = check_one(&f, &md(&f), euid(), false).unwrap_err();
        assert!(e.contains("writable by its group (mode 0664)"), "{e}");
        fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
        check_one(&f, &md(&f), euid(), false).unwrap();
        // Owned by someone who is neither us nor root.
        let e = check_one(&f, &md(&f), u32::MAX - 1, false);
        if euid() == 0 {
            e.unwrap();
        } else {
            assert!(e.unwrap_err().contains("is owned by uid"));
        }
        // A sticky world-writable directory (like /tmp) is accepted.
        let d = t.path().join("d");
        fs::create_dir(&d).unwrap();
        fs::set_permissions(&d, fs::Permissions::from_mode(0o1777)).unwrap();
        check_one(&d, &md(&d), euid(), true).unwrap();
        fs::set_permissions(&d, fs::Permissions::from_mode(0o777)).unwrap();
        assert!(check_one(&d, &md(&d), euid(), true).is_err());
    }

    #[test]
    fn machine_names_are_readable() {
        assert_eq!(elf::machine_name(62), "x86_64");
        assert_eq!(elf::machine_name(183), "aarch64");
        assert_eq!(elf::machine_name(9999), "machine 9999");
    }
}
