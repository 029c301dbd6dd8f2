//! Plugin discovery and loading. Libraries are never unloaded.

mod discovery;
mod handles;
mod load;
pub mod template;
mod validate;

pub use discovery::{
    candidate_files, exe_plugin_dirs, library_file_name, scan_dirs, SearchPath, PREFIX_PLUGIN_DIR,
};
pub use handles::{
    abi_event, first_plugin_panic, layer_error, LoadedBackstore, LoadedWatchProvider,
};
pub use load::{inspect, load_backstore, load_watch_provider, resolve, LoadError, PluginDetails};
pub use validate::{check_file, FileProblem, ALLOW_INSECURE_ENV};

/// The plugin ABI this host speaks, for people: `plugin ABI 1
/// (agentfs-plugin-api 1.0.0)`. A plugin loads when it was built for the
/// same ABI version and an agentfs-plugin-api of the same major version.
pub fn abi_line() -> String {
    format!(
        "plugin ABI {} (agentfs-plugin-api {})",
        agentfs_plugin_api::ABI_VERSION,
        agentfs_plugin_api::API_VERSION
    )
}

/// `agentfs --version`'s text: the host's version and the plugin ABI.
pub fn version_line() -> &'static str {
    static LINE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    LINE.get_or_init(|| format!("{}, {}", env!("CARGO_PKG_VERSION"), abi_line()))
}
