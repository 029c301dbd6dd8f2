//! Plugin discovery and loading. Libraries are never unloaded.

mod discovery;
mod handles;
mod load;

pub use discovery::{candidate_files, library_file_name, scan_dirs, SearchPath};
pub use handles::{abi_event, layer_error, LoadedBackstore, LoadedWatchProvider};
pub use load::{inspect, load_backstore, load_watch_provider, resolve, LoadError, PluginDetails};
