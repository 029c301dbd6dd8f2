//! Every message of the protocol. Paths are branch-relative; file paths
//! are [`WirePath`]s (bytes, a string on the wire when UTF-8), names of
//! branches and snapshots are UTF-8; `branch: None` means the branch the
//! connection asked for in its [`Hello`].

use serde::{Deserialize, Serialize};

use crate::{WireError, WirePath};

/// First frame of a connection, client to daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Always [`crate::MAGIC`].
    pub magic: String,
    /// Oldest protocol version the client speaks.
    pub min_version: u32,
    /// Newest protocol version the client speaks.
    pub max_version: u32,
    /// Who is talking (`agentfs-shim 0.1.0`, `agentfs 0.1.0`).
    pub client: String,
    /// Client process id.
    pub pid: u32,
    /// Its parent's pid.
    pub ppid: u32,
    /// Its uid (the daemon checks it against the socket's peer credentials).
    pub uid: u32,
    /// Its executable's path.
    pub executable: String,
    /// The branch it works in; `None` for the daemon's default.
    pub branch: Option<String>,
}

/// The daemon's answer to a good [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The protocol version both will speak.
    pub version: u32,
    /// The daemon's name and version.
    pub daemon: String,
    /// The branch the connection works in (resolved default), if any.
    pub branch: Option<String>,
    /// Connection id, unique per daemon run (for logs and re-registration).
    pub session: u64,
}

/// A frame from a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ClientFrame {
    /// The handshake; first and only once.
    Hello(Hello),
    /// A request; the response carries the same `id`.
    Request {
        /// Chosen by the client.
        id: u64,
        /// What to do.
        request: Request,
    },
    /// The client has consumed an [`DaemonFrame::Events`] delivery (or,
    /// with a doorbell, the app has read what the daemon wrote): the daemon
    /// may deliver that watcher's next batch. No response. Until then the
    /// daemon keeps at most one delivery per watcher outstanding and
    /// coalesces what arrives meanwhile, as a kernel queue merges events
    /// the app has not read yet.
    Ack(Ack),
    /// The client closed a file it opened with
    /// [`Request::FdOpenWithWriter`] (and the writer registration that
    /// came with it): the daemon drops the record and publishes `Modified`
    /// if the file changed through it. No response (protocol 2).
    FdClosed {
        /// [`FdOpened::record`].
        record: u64,
    },
}

/// Acknowledges one watcher's outstanding delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The API (`WatchApi` value), as in [`EventDelivery::api`].
    pub api: u32,
    /// The watcher, as in [`EventDelivery::instance`].
    pub instance: u64,
}

impl ClientFrame {
    /// True when this frame travels with one fd in `SCM_RIGHTS`.
    pub fn carries_fd(&self) -> bool {
        matches!(
            self,
            ClientFrame::Request {
                request: Request::Doorbell(_),
                ..
            }
        )
    }
}

/// A frame from the daemon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DaemonFrame {
    /// Handshake accepted.
    Welcome(Welcome),
    /// Handshake refused (version mismatch, wrong uid, bad magic), or a
    /// frame after it that cannot be answered by a request id (a second
    /// `Hello`, a request without a usable id, a frame over the size
    /// limit); the daemon closes the connection after it.
    Refused(WireError),
    /// The answer to request `id`.
    Response {
        /// The request's id.
        id: u64,
        /// Its outcome.
        result: Result<Response, WireError>,
    },
    /// Native records for watches this connection registered.
    Events(EventDelivery),
    /// Core events for a [`Request::Subscribe`] subscription.
    CoreEvents(CoreEventBatch),
}

impl DaemonFrame {
    /// True when this frame travels with fds in `SCM_RIGHTS`.
    pub fn carries_fd(&self) -> bool {
        self.fds_carried() > 0
    }

    /// How many fds travel with this frame: the file's for `FdOpened`, and
    /// after it the writer registration's when [`FdOpened::writer`] says
    /// so.
    pub fn fds_carried(&self) -> usize {
        match self {
            DaemonFrame::Response {
                result: Ok(Response::FdOpened(o)),
                ..
            } => 1 + usize::from(o.writer),
            _ => 0,
        }
    }
}

/// What a client can ask.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Liveness check.
    Ping,
    /// Daemon and backstore status.
    Status,
    /// A new branch over the store's default base, or over `base`.
    BranchCreate {
        /// Its name.
        name: String,
        /// Absolute path of the directory to branch instead of the store's
        /// default base.
        #[serde(default)]
        base: Option<String>,
    },
    /// A new branch over a snapshot.
    BranchFromSnapshot {
        /// The snapshot.
        snapshot: String,
        /// The new branch's name.
        name: String,
    },
    /// Every branch.
    BranchList,
    /// Deletes a branch.
    BranchDelete {
        /// Its name.
        name: String,
    },
    /// Merges a branch's committed layers into one; answered with
    /// [`Response::Compacted`].
    BranchCompact {
        /// Its name.
        name: String,
    },
    /// Freezes a branch into a snapshot.
    SnapshotCreate {
        /// The branch.
        branch: String,
        /// The snapshot's name; `None` lets the daemon choose.
        name: Option<String>,
    },
    /// Every snapshot.
    SnapshotList,
    /// Deletes a snapshot (`busy` while something depends on it).
    SnapshotDelete {
        /// Its name.
        name: String,
    },
    /// A file operation in a branch (or, for reading, a snapshot).
    Fs {
        /// The branch; `None` for the connection's.
        branch: Option<String>,
        /// Read from this snapshot instead of a branch (read-only
        /// operations only; `branch` is then ignored).
        #[serde(default)]
        snapshot: Option<String>,
        /// The operation.
        op: FsOp,
    },
    /// Registers a native watch; answered with [`Response::WatchRegistered`].
    WatchRegister(WatchRegistration),
    /// Removes a watch this connection registered.
    WatchUnregister {
        /// The id [`Response::WatchRegistered`] gave.
        watch_id: u64,
    },
    /// Hands the daemon a doorbell (the fd travels in `SCM_RIGHTS`).
    Doorbell(Doorbell),
    /// Streams core events under `path` as [`DaemonFrame::CoreEvents`].
    Subscribe {
        /// The branch; `None` for the connection's.
        branch: Option<String>,
        /// Branch-relative prefix (`""` for everything).
        path: WirePath,
    },
    /// Ends a subscription.
    Unsubscribe {
        /// The id [`Response::Subscribed`] gave.
        subscription: u64,
    },
    /// Opens a branch file and passes back a real fd (copy-up first when
    /// writing).
    FdOpen(FdOpen),
    /// [`Request::FdOpen`], and for an open for writing the branch's
    /// writer registration handed over as a second fd (protocol 2): it is
    /// a shared `flock` that the kernel releases when the last copy of
    /// that fd is closed, so the client's own `close` ends the
    /// registration, and the close needs no round trip
    /// ([`ClientFrame::FdClosed`] tells the daemon, without a response).
    FdOpenWithWriter(FdOpen),
    /// The client closed an fd opened for writing: the daemon drops the
    /// record and publishes `Modified` if the file changed through it.
    FdClose {
        /// [`FdOpened::record`].
        record: u64,
    },
    /// The directories a branch reads through, for a client that resolves
    /// reads itself (the shim); answered with [`Response::Chain`].
    BranchChain {
        /// The branch; `None` for the connection's.
        branch: Option<String>,
    },
    /// Core events another process made in the daemon's store (a FUSE
    /// mount server's): the daemon hands them to its watchers and
    /// subscribers as if it had made the changes; answered with
    /// [`Response::Done`].
    PublishEvents {
        /// The events, in the order they happened (their `seq` is
        /// replaced by the daemon's).
        events: Vec<WireCoreEvent>,
    },
}

/// A file operation; every path is branch-relative.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsOp {
    /// `lstat`, or `stat` with `follow`.
    Stat {
        /// Path.
        path: WirePath,
        /// Follow a final symlink (`stat` rather than `lstat`).
        #[serde(default)]
        follow: bool,
    },
    /// The canonical path of an existing entry (symlinks resolved within
    /// the branch; a final one only with `follow`), as a `Target`.
    Canonical {
        /// Path.
        path: WirePath,
        /// Resolve a final symlink too.
        follow: bool,
    },
    /// An extended attribute's value, as `Data` (`not-found` when absent).
    GetXattr {
        /// Path.
        path: WirePath,
        /// Attribute name.
        name: String,
    },
    /// Extended attribute names, as `Names`.
    ListXattr {
        /// Path.
        path: WirePath,
    },
    /// Directory listing.
    ReadDir {
        /// Path.
        path: WirePath,
    },
    /// Reads up to `len` bytes at `offset`.
    Read {
        /// Path.
        path: WirePath,
        /// Offset.
        offset: u64,
        /// Maximum length.
        len: u64,
    },
    /// Writes `data` at `offset` (copy-up first).
    Write {
        /// Path.
        path: WirePath,
        /// Offset.
        offset: u64,
        /// The bytes.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Creates a regular file.
    Create {
        /// Path.
        path: WirePath,
        /// Permission bits.
        mode: u32,
        /// Fail if it exists.
        exclusive: bool,
    },
    /// Creates a directory.
    Mkdir {
        /// Path.
        path: WirePath,
        /// Permission bits.
        mode: u32,
    },
    /// Removes an empty directory.
    Rmdir {
        /// Path.
        path: WirePath,
    },
    /// Removes a non-directory.
    Unlink {
        /// Path.
        path: WirePath,
    },
    /// Renames, replacing the destination.
    Rename {
        /// Source.
        from: WirePath,
        /// Destination.
        to: WirePath,
    },
    /// Sets the size.
    Truncate {
        /// Path.
        path: WirePath,
        /// New size.
        size: u64,
    },
    /// Creates a symlink at `path` pointing to `target` (stored verbatim).
    Symlink {
        /// Link contents.
        target: WirePath,
        /// Where the link goes.
        path: WirePath,
    },
    /// Reads a symlink.
    Readlink {
        /// Path.
        path: WirePath,
    },
    /// Sets permission bits.
    Chmod {
        /// Path.
        path: WirePath,
        /// Permission bits.
        mode: u32,
    },
    /// Replaces a regular file's whole content (keeping its mode), creating
    /// it with mode 0644 if missing.
    WriteFile {
        /// Path.
        path: WirePath,
        /// The new content.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Sets access and/or modification times (`None` leaves one as is).
    SetTimes {
        /// Path.
        path: WirePath,
        /// Access time, nanoseconds since the epoch.
        atime_ns: Option<i64>,
        /// Modification time, nanoseconds since the epoch.
        mtime_ns: Option<i64>,
    },
    /// Sets an extended attribute.
    SetXattr {
        /// Path.
        path: WirePath,
        /// Attribute name.
        name: String,
        /// Its value.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// Removes an extended attribute.
    RemoveXattr {
        /// Path.
        path: WirePath,
        /// Attribute name.
        name: String,
    },
    /// Creates a directory and its missing parents (existing ones are fine).
    MkdirAll {
        /// Path.
        path: WirePath,
    },
    /// Removes an entry and, for a directory, everything under it.
    RemoveAll {
        /// Path.
        path: WirePath,
    },
}

/// What a successful request returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// Answer to [`Request::Ping`].
    Pong,
    /// Success without data.
    Done,
    /// Answer to [`Request::Status`].
    Status(Box<DaemonStatus>),
    /// A branch (created).
    Branch(BranchInfo),
    /// Every branch.
    Branches(Vec<BranchInfo>),
    /// A snapshot (created).
    Snapshot(SnapshotInfo),
    /// Every snapshot.
    Snapshots(Vec<SnapshotInfo>),
    /// Answer to [`Request::Fs`].
    Fs(FsReply),
    /// The watch is registered (or updated: inotify `IN_MASK_ADD`, kqueue
    /// re-`EV_ADD`), under this id and native handle.
    WatchRegistered {
        /// Daemon-wide watch id.
        watch_id: u64,
        /// The native handle in effect (an existing wd when merged).
        handle: u64,
    },
    /// A subscription started.
    Subscribed {
        /// Its id.
        subscription: u64,
    },
    /// The file is open; its fd travels with this frame in `SCM_RIGHTS`.
    FdOpened(FdOpened),
    /// Answer to [`Request::BranchCompact`]: true when layers were merged.
    Compacted(bool),
    /// Answer to [`Request::BranchChain`].
    Chain(BranchChain),
}

/// The directories of a branch's chain, top first. Layer names follow the
/// store's reserved-name scheme (whiteouts, opaque markers, escaping); the
/// base's names are literal. A reader keeps the chain while the identity
/// (`st_dev`, `st_ino`) of `graph_file` stays the same, and asks again
/// when it changes.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct BranchChain {
    /// Absolute paths of the layer roots, top (the active layer) first.
    pub layers: Vec<String>,
    /// Absolute path of the base, under every layer, if the branch has one.
    #[serde(default)]
    pub base: Option<String>,
    /// The store file whose identity changes on every change of any chain.
    #[serde(default)]
    pub graph_file: String,
    /// The store's shared change counters: native-endian 64-bit atomics,
    /// graph changes in slot 0 and this branch's namespace changes in slot
    /// `namespace_slot`. A reader maps the file read-only: while the graph
    /// counter stays, the chain is current; while the namespace counter
    /// stays, cached lookups are.
    #[serde(default)]
    pub generation_file: String,
    /// The slot (index of 64-bit words) of the branch's namespace counter
    /// in `generation_file`; `None` from a daemon without one.
    #[serde(default)]
    pub namespace_slot: Option<u32>,
    /// The graph counter (slot 0 of `generation_file`) this chain is
    /// current for, read before the chain was made (a graph change after
    /// it moves the counter); `None` from a daemon that does not say.
    #[serde(default)]
    pub graph: Option<u64>,
}

/// The result of an [`FsOp`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsReply {
    /// Success without data.
    Done,
    /// Metadata.
    Stat(FileStat),
    /// Directory entries, sorted by name.
    Entries(Vec<DirEntry>),
    /// Bytes read (shorter than asked at end of file).
    Data(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Bytes written.
    Written(u64),
    /// A symlink's contents, or a canonical path.
    Target(WirePath),
    /// Extended attribute names.
    Names(Vec<String>),
}

/// Kind of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileKind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// Anything else (fifo, socket, device).
    Other,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What an [`FileKind::Other`] entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SpecialKind {
    /// A named pipe.
    Fifo,
    /// A UNIX socket.
    Socket,
    /// A character device node.
    CharDevice,
    /// A block device node.
    BlockDevice,
}

/// File metadata as the branch shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStat {
    /// Kind.
    pub kind: FileKind,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// Link count.
    pub nlink: u64,
    /// Owner.
    #[serde(default)]
    pub uid: u32,
    /// Group.
    #[serde(default)]
    pub gid: u32,
    /// Inode number in the layer holding the entry (changes on copy-up).
    #[serde(default)]
    pub ino: u64,
    /// Device of the layer holding the entry.
    #[serde(default)]
    pub dev: u64,
    /// Access time, nanoseconds since the epoch.
    #[serde(default)]
    pub atime_ns: i64,
    /// The layer the entry comes from, when known.
    #[serde(default)]
    pub origin: Option<FileOrigin>,
    /// For [`FileKind::Other`]: which special file it is (`None` from an
    /// older daemon). Sent only when set, as `rdev`: a regular file's
    /// frame is what it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub special: Option<SpecialKind>,
    /// The device a device node stands for (else 0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rdev: u64,
}

/// Which layer of a branch an entry comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileOrigin {
    /// The branch's own writable layer.
    Active,
    /// A committed layer (its id).
    Committed(String),
    /// The base directory.
    Base,
}

/// One directory entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    /// Name (with U+FFFD for bytes that are not UTF-8: see `name_bytes`).
    pub name: String,
    /// Kind.
    pub kind: FileKind,
    /// The name's exact bytes, when they are not UTF-8 (absent otherwise;
    /// peers that do not know the field ignore it).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "serde_bytes")]
    pub name_bytes: Option<Vec<u8>>,
}

/// A branch.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct BranchInfo {
    /// Name.
    pub name: String,
    /// The snapshot it was created from; `None` when over the base.
    pub from_snapshot: Option<String>,
    /// Its active layer.
    #[serde(default)]
    pub layer: String,
    /// Number of committed layers under it.
    #[serde(default)]
    pub depth: u64,
    /// The base directory under its chain.
    #[serde(default)]
    pub base: Option<String>,
    /// Creation time, seconds since the epoch.
    #[serde(default)]
    pub created: u64,
}

/// A snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SnapshotInfo {
    /// Name.
    pub name: String,
    /// The branch it froze.
    pub branch: String,
    /// True when the backstore made it natively (O(1), flat chain).
    pub native: bool,
    /// Its committed layer.
    #[serde(default)]
    pub layer: String,
    /// The base directory under its chain.
    #[serde(default)]
    pub base: Option<String>,
    /// Creation time, seconds since the epoch.
    #[serde(default)]
    pub created: u64,
}

/// The backstore's status (as `agentfs status` shows it).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct BackstoreInfo {
    /// Plugin name.
    pub plugin: String,
    /// Filesystem type (`btrfs`, `apfs`, `tmpfs`, ...).
    pub fs_type: String,
    /// Capacity in bytes.
    pub capacity: u64,
    /// Used bytes.
    pub used: u64,
    /// Capabilities (`native_reflink`, `native_snapshots`, `ram_backed`, `persistent`).
    pub capabilities: Vec<String>,
    /// Root directory of the store.
    pub root: String,
}

/// Answer to [`Request::Status`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DaemonStatus {
    /// Daemon name and version.
    pub daemon: String,
    /// Protocol version of this connection.
    pub protocol: u32,
    /// The base directory.
    pub base: String,
    /// The backstore.
    pub backstore: BackstoreInfo,
    /// Number of branches.
    pub branches: u64,
    /// Number of snapshots.
    pub snapshots: u64,
    /// Registered watches (all connections).
    pub watches: u64,
    /// Connected clients.
    pub clients: u64,
    /// Files open for writing through `fd_open` and not yet closed (all
    /// connections).
    #[serde(default)]
    pub open_fds: u64,
    /// Core-event subscriptions (all connections).
    #[serde(default)]
    pub subscriptions: u64,
    /// Doorbells held (all connections).
    #[serde(default)]
    pub doorbells: u64,
    /// Sequence number of the last core event the daemon published (0
    /// before the first): a client that mutated and then asks for the
    /// status knows which `seq` ends its changes.
    #[serde(default)]
    pub last_seq: u64,
    /// The daemon's process id.
    #[serde(default)]
    pub pid: u32,
    /// Where the daemon's configuration came from.
    #[serde(default)]
    pub config: String,
    /// The socket it serves on.
    #[serde(default)]
    pub socket: String,
    /// The watch providers loaded (plugin names).
    #[serde(default)]
    pub watch_providers: Vec<String>,
    /// Fds handed out for reading come from read-only mounts (bases and
    /// snapshots cannot be written through them); false where that is not
    /// possible (not Linux, or no privilege to clone mounts).
    #[serde(default)]
    pub read_only_fds: bool,
}

/// A native watch registration. `path` is branch-relative (the shim
/// translates what the process passed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WatchRegistration {
    /// kqueue `EVFILT_VNODE` on an fd.
    Kqueue {
        /// Process.
        pid: u32,
        /// The shim's id for the process's kqueue.
        kqueue_id: u64,
        /// The watched fd (the kevent ident).
        fd: i32,
        /// Requested `NOTE_*` fflags.
        vnode_flags: u32,
        /// What the fd refers to.
        path: WirePath,
        /// The branch; `None` for the connection's.
        branch: Option<String>,
    },
    /// An FSEvents stream.
    FsEvents {
        /// Process.
        pid: u32,
        /// The shim's id for the stream.
        stream_id: u64,
        /// Branch-relative path prefixes.
        path_prefixes: Vec<String>,
        /// `FSEventStreamCreateFlags`.
        flags: u32,
        /// The stream's latency in seconds (the coalescing window).
        latency: f64,
        /// Absolute path at which the process sees the branch root.
        visible_root: String,
        /// The branch; `None` for the connection's.
        branch: Option<String>,
    },
    /// An inotify watch.
    Inotify {
        /// Process.
        pid: u32,
        /// The shim's id for the inotify instance.
        instance: u64,
        /// The wd the process was given.
        wd: i32,
        /// Watched path.
        path: WirePath,
        /// `IN_*` mask (with `IN_MASK_ADD`, `IN_ONLYDIR`, ...).
        mask: u32,
        /// The branch; `None` for the connection's.
        branch: Option<String>,
    },
}

impl WatchRegistration {
    /// The watch API this registration is for (`agentfs_vocab::api`).
    pub fn api(&self) -> u32 {
        match self {
            Self::Kqueue { .. } => agentfs_vocab::api::KQUEUE,
            Self::FsEvents { .. } => agentfs_vocab::api::FSEVENTS,
            Self::Inotify { .. } => agentfs_vocab::api::INOTIFY,
        }
    }
}

/// How the daemon wakes a process (the fd travels in `SCM_RIGHTS`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Doorbell {
    /// Process.
    pub pid: u32,
    /// The kqueue id / inotify instance the doorbell serves.
    pub instance: u64,
    /// The mechanism.
    pub kind: DoorbellKind,
}

/// Doorbell mechanisms. Each fd is one end of a socket pair whose other
/// end the shim keeps; the daemon writes each delivery's encoded records
/// into it (instead of sending an `Events` frame), in order, and the shim
/// acknowledges (`Ack`) once it has read them. (A kqueue fd cannot be
/// sent in `SCM_RIGHTS`: XNU refuses it with `EINVAL`, so the kqueue stays
/// in the process and the shim registers its end of the socket in it.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DoorbellKind {
    /// macOS: the shim registered its end in the app's kqueue as
    /// `EVFILT_READ`; the daemon writes 32-byte `struct kevent` records
    /// (`EVFILT_VNODE`, ident = the watched fd), which wake `kevent()`.
    KqueueSocket,
    /// macOS: the shim reads the encoded FSEvents events on the stream's
    /// run loop or dispatch queue.
    FsEventsSocket,
    /// Linux: the shim gave its end to the app as its inotify fd; the
    /// daemon writes `struct inotify_event` records in the kernel's layout.
    InotifySocket,
}

/// Native records for one watcher (kqueue, inotify instance or stream),
/// after coalescing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventDelivery {
    /// The API (`WatchApi` value: 1 kqueue, 2 FSEvents, 3 inotify).
    pub api: u32,
    /// kqueue id / inotify instance / stream id.
    pub instance: u64,
    /// The records.
    pub records: Vec<WireRecord>,
    /// The same records in the native byte layout (the provider's `encode`).
    #[serde(with = "serde_bytes")]
    pub encoded: Vec<u8>,
}

/// A native record (the plugin ABI's `NativeRecord`) on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireRecord {
    /// Watch id.
    pub watch_id: u64,
    /// Native handle.
    pub handle: u64,
    /// Core event sequence number.
    pub seq: u64,
    /// Native flags.
    pub flags: u64,
    /// inotify cookie.
    pub cookie: u32,
    /// Name or path.
    pub name: String,
    /// The watch is gone after this record.
    pub retire_watch: bool,
}

/// Core events for one subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoreEventBatch {
    /// The subscription.
    pub subscription: u64,
    /// The events, in order.
    pub events: Vec<WireCoreEvent>,
    /// Events dropped before this batch because the subscriber fell too
    /// far behind (0 normally).
    #[serde(default)]
    pub dropped: u64,
}

/// Kind of a core event on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireEventKind {
    /// Created.
    Created,
    /// Removed.
    Removed,
    /// Content modified.
    Modified,
    /// Renamed to `to`.
    Renamed,
    /// Mode, times or xattrs changed.
    AttributesChanged,
    /// A branch was created.
    BranchCreated,
    /// A snapshot was created.
    SnapshotCreated,
    /// A kind newer than this protocol.
    Other(u32),
}

/// A core event (the plugin ABI's `CoreEvent`) on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireCoreEvent {
    /// Sequence number.
    pub seq: u64,
    /// Process that caused it, or 0.
    pub pid: u32,
    /// Kind.
    pub kind: WireEventKind,
    /// Branch.
    pub branch: String,
    /// Path (rename source).
    pub path: WirePath,
    /// Rename destination or snapshot name.
    pub to: WirePath,
    /// The entry is a directory.
    pub is_dir: bool,
    /// Size before, `u64::MAX` when unknown.
    pub size_before: u64,
    /// Size after, `u64::MAX` when unknown.
    pub size_after: u64,
}

/// Portable open flags (the `O_*` values differ between Linux and macOS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OpenFlags(pub u32);

impl OpenFlags {
    /// Open for reading.
    pub const READ: Self = Self(1);
    /// Open for writing (copy-up first).
    pub const WRITE: Self = Self(2);
    /// Create if missing.
    pub const CREATE: Self = Self(4);
    /// With `CREATE`: fail if it exists.
    pub const EXCL: Self = Self(8);
    /// Truncate to 0.
    pub const TRUNCATE: Self = Self(16);
    /// Append.
    pub const APPEND: Self = Self(32);
    /// Fail unless a directory.
    pub const DIRECTORY: Self = Self(64);
    /// Fail on a symlink.
    pub const NOFOLLOW: Self = Self(128);

    const NATIVE: [(Self, i32); 6] = [
        (Self::CREATE, libc::O_CREAT),
        (Self::EXCL, libc::O_EXCL),
        (Self::TRUNCATE, libc::O_TRUNC),
        (Self::APPEND, libc::O_APPEND),
        (Self::DIRECTORY, libc::O_DIRECTORY),
        (Self::NOFOLLOW, libc::O_NOFOLLOW),
    ];

    /// True when every bit of `other` is set.
    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// The union.
    pub fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// From this platform's `open(2)` flags (unknown bits are dropped).
    pub fn from_native(flags: i32) -> Self {
        let access = match flags & libc::O_ACCMODE {
            libc::O_WRONLY => Self::WRITE,
            libc::O_RDWR => Self::READ.union(Self::WRITE),
            _ => Self::READ,
        };
        Self::NATIVE
            .iter()
            .filter(|(_, n)| flags & n != 0)
            .fold(access, |a, (f, _)| a.union(*f))
    }

    /// To this platform's `open(2)` flags.
    pub fn to_native(self) -> i32 {
        let access = match (self.contains(Self::READ), self.contains(Self::WRITE)) {
            (true, true) => libc::O_RDWR,
            (false, true) => libc::O_WRONLY,
            _ => libc::O_RDONLY,
        };
        Self::NATIVE
            .iter()
            .filter(|(f, _)| self.contains(*f))
            .fold(access, |a, (_, n)| a | n)
    }
}

/// `fd_open`: open `path` in a branch and receive a real fd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FdOpen {
    /// The branch; `None` for the connection's.
    pub branch: Option<String>,
    /// Branch-relative path.
    pub path: WirePath,
    /// Portable flags.
    pub flags: OpenFlags,
    /// Permission bits for `CREATE`.
    pub mode: u32,
}

/// Answer to [`FdOpen`]; the fd travels with the frame.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FdOpened {
    /// The file was copied up into the branch's layer first.
    pub copied_up: bool,
    /// The copy-up was a reflink (no data copied).
    pub reflinked: bool,
    /// The file was created.
    pub created: bool,
    /// For an fd open for writing: the daemon's record of it, to pass to
    /// [`Request::FdClose`] (0 for read-only opens, which leave no record).
    /// A connection's records are closed when it ends.
    #[serde(default)]
    pub record: u64,
    /// A second fd came with the file's: the branch's writer registration
    /// (only for [`Request::FdOpenWithWriter`] opens for writing). Close
    /// it when the file is closed (after the last copy of the file's fd),
    /// then send [`ClientFrame::FdClosed`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub writer: bool,
}
