//! Helpers shared by the macOS tests and the benchmarks.

use std::{fs, io::Write, path::Path};

/// One MiB.
pub const MIB: u64 = 1024 * 1024;

/// A real byte copy. (`std::fs::copy` clones on APFS, so it cannot serve
/// as the copy to compare a clone with.)
pub fn byte_copy(src: &Path, dst: &Path) {
    use std::io::Read;
    let mut r = fs::File::open(src).unwrap();
    let mut w = fs::File::create(dst).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        w.write_all(&buf[..n]).unwrap();
    }
    w.sync_all().unwrap();
}

/// Writes `bytes` (whole MiB) of a non-repeating pattern and syncs.
pub fn write_pattern(p: &Path, bytes: u64) {
    let mut f = fs::File::create(p).unwrap();
    let mut block = vec![0u8; MIB as usize];
    for i in 0..bytes / MIB {
        for (j, b) in block.iter_mut().enumerate() {
            *b = (i as usize * 31 + j * 7) as u8;
        }
        f.write_all(&block).unwrap();
    }
    f.sync_all().unwrap();
}
