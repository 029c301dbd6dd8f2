//! Loop devices through the kernel's ioctls (`LOOP_CTL_GET_FREE`,
//! `LOOP_CONFIGURE`, falling back to `LOOP_SET_FD` + `LOOP_SET_STATUS64` on
//! kernels older than 5.8, and `LOOP_CLR_FD`), and the sysfs view of which
//! file backs which device. Layouts and numbers are those of `linux/loop.h`.

use std::{
    fs::{self, File, OpenOptions},
    io,
    os::{
        fd::AsRawFd,
        unix::{ffi::OsStrExt, fs::OpenOptionsExt},
    },
    path::{Path, PathBuf},
};

/// `LO_FLAGS_AUTOCLEAR`: the device detaches itself when its last user goes.
const LO_FLAGS_AUTOCLEAR: u32 = 4;
/// `LO_NAME_SIZE`.
const LO_NAME_SIZE: usize = 64;

/// `struct loop_info64` (232 bytes).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; LO_NAME_SIZE],
    lo_crypt_name: [u8; LO_NAME_SIZE],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config` (304 bytes).
#[repr(C)]
pub struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

const _: () = assert!(std::mem::size_of::<LoopInfo64>() == 232);
const _: () = assert!(std::mem::size_of::<LoopConfig>() == 304);

mod ioctls {
    use super::{LoopConfig, LoopInfo64};
    nix::ioctl_write_int_bad!(loop_set_fd, 0x4C00);
    nix::ioctl_none_bad!(loop_clr_fd, 0x4C01);
    nix::ioctl_write_ptr_bad!(loop_set_status64, 0x4C04, LoopInfo64);
    nix::ioctl_write_ptr_bad!(loop_configure, 0x4C0A, LoopConfig);
    nix::ioctl_none_bad!(loop_ctl_get_free, 0x4C82);
}

/// An attached loop device. Set up with autoclear: once nothing holds it
/// (this handle dropped and its filesystem unmounted), the kernel detaches
/// it; [`LoopDevice::detach`] asks for that explicitly.
#[derive(Debug)]
pub struct LoopDevice {
    number: u32,
    path: PathBuf,
    file: File,
}

fn open_rw(p: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(p)
}

/// Makes `/dev/loopN` when the kernel created the device but nothing (no
/// udev, as in many containers) made its node.
fn ensure_node(number: u32) -> io::Result<PathBuf> {
    let path = PathBuf::from(format!("/dev/loop{number}"));
    if path.exists() {
        return Ok(path);
    }
    let dev = fs::read_to_string(format!("/sys/block/loop{number}/dev"))?;
    let (major, minor) = dev
        .trim()
        .split_once(':')
        .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)))
        .ok_or_else(|| io::Error::other(format!("bad device number {dev:?} for loop{number}")))?;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: `c` is a valid NUL-terminated path; mknod has no memory effects.
    let rc = unsafe {
        libc::mknod(
            c.as_ptr(),
            libc::S_IFBLK | 0o660,
            libc::makedev(major, minor),
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::AlreadyExists {
            return Err(e);
        }
    }
    Ok(path)
}

fn file_name_field(image: &Path) -> [u8; LO_NAME_SIZE] {
    let mut out = [0u8; LO_NAME_SIZE];
    let b = image.as_os_str().as_bytes();
    let n = b.len().min(LO_NAME_SIZE - 1);
    out[..n].copy_from_slice(&b[..n]);
    out
}

impl LoopDevice {
    /// Attaches the file `image` to a free loop device (read-write, autoclear).
    pub fn attach(image: &Path) -> io::Result<Self> {
        let ctl = open_rw(Path::new("/dev/loop-control")).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("open /dev/loop-control (is the loop driver loaded?): {e}"),
            )
        })?;
        let backing = open_rw(image)?;
        // SAFETY: all-zero is a valid loop_info64 (plain integers and bytes).
        let mut info: LoopInfo64 = unsafe { std::mem::zeroed() };
        info.lo_flags = LO_FLAGS_AUTOCLEAR;
        info.lo_file_name = file_name_field(image);
        let mut last = io::Error::other("no free loop device");
        // Another process may take the free device between asking and
        // configuring it: EBUSY then, and we ask again.
        for _ in 0..32 {
            // SAFETY: `ctl` is /dev/loop-control; this ioctl takes no argument.
            let number = unsafe { ioctls::loop_ctl_get_free(ctl.as_raw_fd()) }? as u32;
            let path = ensure_node(number)?;
            let file = open_rw(&path)?;
            let config = LoopConfig {
                fd: backing.as_raw_fd() as u32,
                block_size: 0,
                info,
                reserved: [0; 8],
            };
            // SAFETY: `file` is the loop device, `config` a valid loop_config
            // naming the open backing fd; both outlive the call.
            match unsafe { ioctls::loop_configure(file.as_raw_fd(), &config) } {
                Ok(_) => return Ok(Self { number, path, file }),
                Err(nix::errno::Errno::EBUSY) => last = io::Error::other("loop device taken"),
                Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOTTY) => {
                    // Kernel older than 5.8: the two-step setup.
                    // SAFETY: `file` is the loop device and the argument the
                    // open backing fd.
                    match unsafe { ioctls::loop_set_fd(file.as_raw_fd(), backing.as_raw_fd()) } {
                        Ok(_) => {}
                        Err(nix::errno::Errno::EBUSY) => continue,
                        Err(e) => return Err(e.into()),
                    }
                    // SAFETY: `info` is a valid loop_info64 for the call.
                    if let Err(e) = unsafe { ioctls::loop_set_status64(file.as_raw_fd(), &info) } {
                        // SAFETY: undoes the LOOP_SET_FD above on the same fd.
                        let _ = unsafe { ioctls::loop_clr_fd(file.as_raw_fd()) };
                        return Err(e.into());
                    }
                    return Ok(Self { number, path, file });
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(last)
    }

    /// The device node (`/dev/loopN`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The device number N.
    pub fn number(&self) -> u32 {
        self.number
    }

    /// Detaches the device (at once, or as soon as its last user closes it).
    pub fn detach(self) -> io::Result<()> {
        clear_fd(&self.file)
    }
}

fn clear_fd(file: &File) -> io::Result<()> {
    // SAFETY: `file` is an open loop device; LOOP_CLR_FD takes no argument.
    match unsafe { ioctls::loop_clr_fd(file.as_raw_fd()) } {
        Ok(_) | Err(nix::errno::Errno::ENXIO) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Detaches loop device number `number`, whoever attached it.
pub fn detach_number(number: u32) -> io::Result<()> {
    clear_fd(&open_rw(Path::new(&format!("/dev/loop{number}")))?)
}

/// Every attached loop device: its number and the path of its backing file
/// as the kernel reports it (without a trailing ` (deleted)`).
pub fn attached() -> Vec<(u32, PathBuf)> {
    let Ok(rd) = fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for ent in rd.flatten() {
        let name = ent.file_name();
        let Some(number) = name
            .to_str()
            .and_then(|n| n.strip_prefix("loop"))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if let Ok(raw) = fs::read(ent.path().join("loop/backing_file")) {
            out.push((number, backing_path(&raw)));
        }
    }
    out.sort();
    out
}

/// Parses a sysfs `backing_file` value.
pub fn backing_path(raw: &[u8]) -> PathBuf {
    let mut b = raw.strip_suffix(b"\n").unwrap_or(raw);
    b = b.strip_suffix(b" (deleted)").unwrap_or(b);
    PathBuf::from(std::ffi::OsStr::from_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backing_paths_drop_newline_and_deleted_marker() {
        assert_eq!(
            backing_path(b"/dev/shm/x.img\n"),
            PathBuf::from("/dev/shm/x.img")
        );
        assert_eq!(
            backing_path(b"/dev/shm/x.img (deleted)\n"),
            PathBuf::from("/dev/shm/x.img")
        );
    }

    #[test]
    fn long_image_names_are_truncated_with_a_nul() {
        let long = PathBuf::from(format!("/{}", "a".repeat(100)));
        let f = file_name_field(&long);
        assert_eq!(f[LO_NAME_SIZE - 1], 0);
        assert_eq!(&f[..2], b"/a");
    }
}
