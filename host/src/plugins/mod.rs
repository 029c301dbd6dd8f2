//! Plugin discovery and loading (DESIGN §4). Libraries are never unloaded.

mod discovery;
mod loader;
mod wrappers;

pub use discovery::{candidate_files, library_file_name, scan_dirs, SearchPath};
pub use loader::{inspect, load_backstore, load_watch_provider, resolve, LoadError, PluginDetails};
pub use wrappers::{Backstore, WatchProvider};
