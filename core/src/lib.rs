//! The core overlay: a base directory plus layers from the
//! configured backstore plugin, turned into branches and snapshots. The
//! host owns the semantics; the plugin only stores layer directories.
//!
//! - [`Store`] holds the graph (branches, snapshots, layer chains) in the
//!   backstore's metadata directory and is the entry point;
//! - [`Tree`] is the file tree of one branch (read-write) or snapshot
//!   (read-only);
//! - [`Event`]s describe every change, one per mutation.
//!
//! See `docs/architecture.md` for the model: layers, whiteouts and opaque
//! directories, copy-up, rename, snapshots, persistence, locking and path
//! safety.

mod beneath;
mod compact;
mod copy_up;
mod diff;
mod dir_store;
mod error;
mod events;
pub mod fault;
mod generation;
mod graph;
mod graph_db;
mod layer_gc;
mod layer_names;
mod layer_store;
mod metadata;
mod open_file;
mod path;
mod persist;
mod read_cache;
mod store;
mod view;
mod write_handles;
mod write_ops;
mod xattrs;

pub use diff::{ChangeType, DiffEntry};
pub use dir_store::DirLayerStore;
pub use error::{CoreError, CoreResult};
pub use events::{acting_for, Change, Event, EventKind, Subscription, SubscriptionId};
pub use generation::{
    namespace_slot, Generation, LoggedChanges, MountSeat, GENERATION_FILE, MOUNTS,
};
pub use graph::DEFAULT_COMPACT_THRESHOLD;
pub use graph_db::{GRAPH_FILE, LEGACY_GRAPH_FILE};
pub use layer_names::{
    decode as decode_name, encode as encode_name, whiteout_name, Decoded, OPAQUE_MARKER,
    RESERVED_PREFIX, WORK_DIR,
};
pub use layer_store::{
    LayerCaps, LayerError, LayerErrorKind, LayerResult, LayerStore, LayerStoreStatus,
};
pub use metadata::{DirEntry, FileKind, Origin, Special, Stat};
pub use open_file::{OpenOptions, OpenedFile};
pub use path::{validate_name, BranchPath};
pub use persist::{LockWait, WriterLock, BRANCH_LOCK_DIR, LOCK_FILE, SESSION_DIR, WRITER_LOCK_DIR};
pub use store::{
    overlap, AsBranchPath, BranchChain, BranchInfo, InitOptions, SnapshotInfo, Store, StoreInfo,
    Tree,
};
