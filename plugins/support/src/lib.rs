//! Helpers shared by the in-tree AgentFS plugins (shared helpers live here,
//! not copied into each plugin): a directory-per-layer store, the platform
//! reflink call with exact error mapping, a software clone, the filesystem
//! probe used for `status` and the reaping of dead processes' leftovers;
//! for the watch providers, the native watch-API constants and the path
//! matching rules.

pub mod dir_layers;
pub mod fsinfo;
pub mod leftovers;
pub mod native;
pub mod reflink;
pub mod softclone;
pub mod watch_paths;

pub use dir_layers::{validate_layer_id, DirLayerStore};

/// The plugin API, for the paths in this crate's macros.
#[doc(hidden)]
pub use agentfs_plugin_api as __plugin_api;
pub use fsinfo::{fs_type_of, status_of};
pub use reflink::reflink_file;
