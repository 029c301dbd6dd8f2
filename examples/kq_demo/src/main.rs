//! `kq_demo [--count N] PATH...`: watches each path with kqueue
//! `EVFILT_VNODE` (`EV_CLEAR`, every `NOTE_*`), says `ready` on stderr once
//! the watches are registered, then prints one line per event on stdout:
//! the path as given and the fflags by name (`src/lib.rs write|extend`).
//! With `--count N` it exits after N events. Run it natively and under
//! `agentfs run`: for the same change, the lines are the same.

/// The `NOTE_*` fflags and their names, in the order they are printed.
#[cfg_attr(not(target_os = "macos"), allow(dead_code))]
const NOTES: [(u32, &str); 7] = [
    (0x01, "delete"),
    (0x02, "write"),
    (0x04, "extend"),
    (0x08, "attrib"),
    (0x10, "link"),
    (0x20, "rename"),
    (0x40, "revoke"),
];

/// The names of the flags set in `fflags`, joined by `|`.
#[cfg_attr(not(target_os = "macos"), allow(dead_code))]
fn names(fflags: u32) -> String {
    let v: Vec<&str> = NOTES
        .iter()
        .filter(|(bit, _)| fflags & bit != 0)
        .map(|(_, n)| *n)
        .collect();
    v.join("|")
}

/// `--count N` and the paths.
fn args() -> Result<(Option<u64>, Vec<String>), String> {
    let mut count = None;
    let mut paths = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--count" => {
                let n = it.next().ok_or("--count needs a number")?;
                count = Some(
                    n.parse()
                        .map_err(|_| format!("--count: {n:?} is not a number"))?,
                );
            }
            "-h" | "--help" => return Err(String::new()),
            _ => paths.push(a),
        }
    }
    if paths.is_empty() {
        return Err("no path to watch".into());
    }
    Ok((count, paths))
}

#[cfg(target_os = "macos")]
fn run(count: Option<u64>, paths: &[String]) -> Result<(), String> {
    use std::{ffi::CString, io::Write};
    // SAFETY: no arguments.
    let kq = unsafe { libc::kqueue() };
    if kq < 0 {
        return Err(format!("kqueue: {}", std::io::Error::last_os_error()));
    }
    let mut changes = Vec::new();
    for (i, p) in paths.iter().enumerate() {
        let c = CString::new(p.as_str()).map_err(|_| format!("{p}: NUL in path"))?;
        // SAFETY: a valid C string.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_EVTONLY) };
        if fd < 0 {
            return Err(format!("{p}: {}", std::io::Error::last_os_error()));
        }
        changes.push(libc::kevent {
            ident: fd as usize,
            filter: libc::EVFILT_VNODE,
            flags: libc::EV_ADD | libc::EV_CLEAR,
            fflags: NOTES.iter().map(|(b, _)| b).sum(),
            data: 0,
            udata: i as *mut libc::c_void,
        });
    }
    // SAFETY: a valid changelist, no event list.
    let r = unsafe {
        libc::kevent(
            kq,
            changes.as_ptr(),
            changes.len() as i32,
            std::ptr::null_mut(),
            0,
            std::ptr::null(),
        )
    };
    if r < 0 {
        return Err(format!("kevent: {}", std::io::Error::last_os_error()));
    }
    eprintln!("ready");
    let mut seen = 0u64;
    let mut out = std::io::stdout().lock();
    while count.is_none_or(|c| seen < c) {
        // SAFETY: kevent is plain data.
        let mut ev: [libc::kevent; 8] = unsafe { std::mem::zeroed() };
        // SAFETY: an event list of 8 entries, no timeout.
        let n = unsafe {
            libc::kevent(
                kq,
                std::ptr::null(),
                0,
                ev.as_mut_ptr(),
                8,
                std::ptr::null(),
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("kevent: {e}"));
        }
        for e in &ev[..n as usize] {
            let path = &paths[e.udata as usize];
            writeln!(out, "{path} {}", names(e.fflags)).map_err(|e| e.to_string())?;
            out.flush().map_err(|e| e.to_string())?;
            seen += 1;
        }
    }
    Ok(())
}

#[cfg(not(target_os = "macos"))]
fn run(_count: Option<u64>, _paths: &[String]) -> Result<(), String> {
    Err("kq_demo needs kqueue EVFILT_VNODE: run it on macOS".into())
}

fn main() -> std::process::ExitCode {
    let r = args().and_then(|(count, paths)| run(count, &paths));
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if e.is_empty() => {
            println!("usage: kq_demo [--count N] PATH...");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kq_demo: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn flags_are_named_in_a_fixed_order() {
        assert_eq!(super::names(0x06), "write|extend");
        assert_eq!(super::names(0x01), "delete");
        assert_eq!(super::names(0), "");
    }
}
