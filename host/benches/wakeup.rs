//! One-way wake-up latency: a file changes, how long until a watcher's
//! blocking `read` returns, through the daemon and through the kernel's own
//! inotify, in the same run. p50 and p99 of `AGENTFS_BENCH_SAMPLES`
//! samples (default 2,000) each.
//!
//! Two processes per path: this one mutates, a child (this binary again)
//! watches. Just before each write the mutator stamps `CLOCK_MONOTONIC`
//! into a page both processes map; the watcher reads the clock as soon as
//! its blocking `read` returns and stores the difference. No round trip is
//! measured. Before each sample the mutator waits until the watcher has
//! finished the previous one and then gives it 200 us to block again, so
//! every sample is an idle-to-wake.
//!
//! - kernel: `pwrite` on a real file; the watcher blocks in `read` on an
//!   inotify fd watching it (`IN_MODIFY`).
//! - daemon: `Fs Write` through a real `agentfs serve` (mock store); the
//!   watcher does what the shim does for an app's inotify instance: an
//!   inotify watch registered with the daemon, a socket pair whose one end
//!   is the doorbell the daemon writes records into, a blocking `read` on
//!   the other end, and an `Ack` after each read.
//! - relay floor: what any design with a process between the two costs at
//!   least: the mutator writes a byte into a socket, a relay thread of
//!   another process blocked in `read` on it writes it into the socket the
//!   watcher blocks on (two idle-to-wake hops, no work).
//!
//! Run: `cargo build --release -p agentfs-host -p agentfs-backstore-mock
//! -p agentfs-watch-inotify -p agentfs-watch-kqueue -p agentfs-watch-fsevents
//! && cargo bench -p agentfs-host --bench wakeup`. `AGENTFS_WAKEUP_DAEMON`
//! names another build's `agentfs` (its plugins next to it) to run as the
//! daemon.
//!
//! Linux only: it compares with the kernel's inotify.

#[cfg(target_os = "linux")]
#[path = "wakeup/linux.rs"]
mod linux;

#[cfg(target_os = "linux")]
fn main() {
    linux::main()
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("the wake-up bench compares with the kernel's inotify: Linux only");
}
