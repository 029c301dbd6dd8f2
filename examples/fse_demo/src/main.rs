//! `fse_demo [--count N] [--queue] [--cf] DIR`: watches DIR with an
//! FSEvents stream (`FileEvents`; `UseCFTypes` with `--cf`), on the main
//! run loop or, with `--queue`, on a dispatch queue. It says `ready` on
//! stderr once the stream is started, then prints one line per event on
//! stdout: the path relative to DIR and the item flags by name
//! (`new.txt created|file`). With `--count N` it exits after N events.
//! Run it natively and under `agentfs run`: for the same change, the lines
//! are the same.

/// The event flags and their names, in the order they are printed.
#[cfg_attr(not(target_os = "macos"), allow(dead_code))]
const FLAGS: [(u32, &str); 12] = [
    (0x0000_0001, "must_scan_sub_dirs"),
    (0x0000_0010, "history_done"),
    (0x0000_0020, "root_changed"),
    (0x0000_0100, "created"),
    (0x0000_0200, "removed"),
    (0x0000_0400, "inode_meta_mod"),
    (0x0000_0800, "renamed"),
    (0x0000_1000, "modified"),
    (0x0000_8000, "xattr_mod"),
    (0x0001_0000, "file"),
    (0x0002_0000, "dir"),
    (0x0004_0000, "symlink"),
];

/// The names of the flags set in `flags`, joined by `|`.
#[cfg_attr(not(target_os = "macos"), allow(dead_code))]
fn names(flags: u32) -> String {
    let v: Vec<&str> = FLAGS
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, n)| *n)
        .collect();
    v.join("|")
}

/// `path` relative to `dir` (or as it is when not under it).
#[cfg_attr(not(target_os = "macos"), allow(dead_code))]
fn relative(dir: &str, path: &str) -> String {
    match path.strip_prefix(dir) {
        Some("") | Some("/") => ".".into(),
        Some(rest) if rest.starts_with('/') => rest.trim_start_matches('/').into(),
        _ => path.into(),
    }
}

/// Options.
#[cfg_attr(not(target_os = "macos"), allow(dead_code))]
struct Args {
    count: Option<u64>,
    queue: bool,
    cf: bool,
    dir: String,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        count: None,
        queue: false,
        cf: false,
        dir: String::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        match x.as_str() {
            "--count" => {
                let n = it.next().ok_or("--count needs a number")?;
                a.count = Some(
                    n.parse()
                        .map_err(|_| format!("--count: {n:?} is not a number"))?,
                );
            }
            "--queue" => a.queue = true,
            "--cf" => a.cf = true,
            "-h" | "--help" => return Err(String::new()),
            _ if a.dir.is_empty() => a.dir = x,
            _ => return Err(format!("one directory only (got {x:?} too)")),
        }
    }
    if a.dir.is_empty() {
        return Err("no directory to watch".into());
    }
    Ok(a)
}

#[cfg(target_os = "macos")]
mod mac {
    use std::{
        ffi::{c_void, CStr},
        io::Write,
        sync::atomic::{AtomicU64, Ordering},
    };

    use core_foundation::{array::CFArray, base::TCFType, string::CFString};
    use fsevent_sys as fs;

    static SEEN: AtomicU64 = AtomicU64::new(0);
    static mut STATE: Option<(String, Option<u64>, bool)> = None;

    extern "C" {
        fn dispatch_queue_create(label: *const i8, attr: *const c_void) -> *mut c_void;
    }
    #[link(name = "CoreServices", kind = "framework")]
    extern "C" {
        fn FSEventStreamSetDispatchQueue(stream: fs::FSEventStreamRef, queue: *mut c_void);
    }

    extern "C" fn callback(
        _stream: fs::FSEventStreamRef,
        _info: *mut c_void,
        n: usize,
        paths: *mut c_void,
        flags: *const u32,
        _ids: *const u64,
    ) {
        // SAFETY: set before the stream starts, read-only after.
        let Some((dir, count, cf)) = (unsafe { (*std::ptr::addr_of!(STATE)).as_ref() }) else {
            return;
        };
        let mut out = std::io::stdout().lock();
        for i in 0..n {
            let path = if *cf {
                // SAFETY: with UseCFTypes, a CFArray of CFString (get rule).
                let a: CFArray<CFString> = unsafe { CFArray::wrap_under_get_rule(paths as _) };
                a.get(i as isize).map(|s| s.to_string()).unwrap_or_default()
            } else {
                // SAFETY: without it, `n` C strings.
                unsafe { CStr::from_ptr(*(paths as *const *const i8).add(i)) }
                    .to_string_lossy()
                    .into_owned()
            };
            // SAFETY: `n` flags.
            let f = unsafe { *flags.add(i) };
            let _ = writeln!(out, "{} {}", super::relative(dir, &path), super::names(f));
            let _ = out.flush();
            let seen = SEEN.fetch_add(1, Ordering::SeqCst) + 1;
            if count.is_some_and(|c| seen >= c) {
                std::process::exit(0);
            }
        }
    }

    pub fn run(a: super::Args) -> Result<(), String> {
        let dir = std::fs::canonicalize(&a.dir).map_err(|e| format!("{}: {e}", a.dir))?;
        let dir = dir.to_string_lossy().into_owned();
        // SAFETY: before any callback can run.
        unsafe { *std::ptr::addr_of_mut!(STATE) = Some((dir.clone(), a.count, a.cf)) };
        let paths = CFArray::from_CFTypes(&[CFString::new(&dir)]);
        let mut flags = fs::kFSEventStreamCreateFlagFileEvents;
        if a.cf {
            flags |= fs::kFSEventStreamCreateFlagUseCFTypes;
        }
        let ctx = fs::FSEventStreamContext {
            version: 0,
            info: std::ptr::null_mut(),
            retain: None,
            release: None,
            copy_description: None,
        };
        // SAFETY: a valid callback, context and paths array.
        let stream = unsafe {
            fs::FSEventStreamCreate(
                std::ptr::null_mut(),
                callback,
                &ctx,
                paths.as_concrete_TypeRef() as _,
                fs::kFSEventStreamEventIdSinceNow,
                0.1,
                flags,
            )
        };
        if stream.is_null() {
            return Err("FSEventStreamCreate failed".into());
        }
        // SAFETY: our stream; the main run loop or a new serial queue.
        unsafe {
            if a.queue {
                let q = dispatch_queue_create(c"fse_demo".as_ptr(), std::ptr::null());
                FSEventStreamSetDispatchQueue(stream, q);
            } else {
                fs::FSEventStreamScheduleWithRunLoop(
                    stream,
                    fs::core_foundation::CFRunLoopGetCurrent(),
                    fs::core_foundation::kCFRunLoopDefaultMode,
                );
            }
            if fs::FSEventStreamStart(stream) == 0 {
                return Err("FSEventStreamStart failed".into());
            }
        }
        eprintln!("ready");
        if a.queue {
            loop {
                std::thread::park();
            }
        }
        // SAFETY: runs the main run loop until the callback exits.
        unsafe { fs::core_foundation::CFRunLoopRun() };
        Ok(())
    }
}

#[cfg(target_os = "macos")]
fn run(a: Args) -> Result<(), String> {
    mac::run(a)
}

#[cfg(not(target_os = "macos"))]
fn run(_a: Args) -> Result<(), String> {
    Err("fse_demo needs FSEvents: run it on macOS".into())
}

fn main() -> std::process::ExitCode {
    match args().and_then(run) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if e.is_empty() => {
            println!("usage: fse_demo [--count N] [--queue] [--cf] DIR");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fse_demo: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn flags_are_named_in_a_fixed_order() {
        assert_eq!(super::names(0x0001_0100), "created|file");
        assert_eq!(super::names(0x0002_0200), "removed|dir");
    }

    #[test]
    fn paths_are_shown_relative_to_the_directory() {
        assert_eq!(super::relative("/p/d", "/p/d/a/b.txt"), "a/b.txt");
        assert_eq!(super::relative("/p/d", "/p/d"), ".");
        assert_eq!(super::relative("/p/d", "/p/dx/a"), "/p/dx/a");
    }
}
