//! The AgentFS host library: configuration, plugin discovery and loading,
//! the core overlay, and the daemon. The `agentfs` binary is a thin CLI
//! over it.

pub mod config;
pub mod daemon;
pub mod handler;
pub mod loader;
pub mod units;

use std::path::PathBuf;

use config::Config;
use loader::{LoadError, LoadedBackstore, LoadedWatchProvider, SearchPath};

/// The host: a configuration and the plugin search path derived from it.
#[derive(Debug, Clone)]
pub struct Host {
    /// The effective configuration.
    pub config: Config,
    /// Where plugins are looked for, in order.
    pub search: SearchPath,
}

impl Host {
    /// A host over `config`, with the standard search path plus `extra_dirs`
    /// searched first.
    pub fn new(config: Config, extra_dirs: &[PathBuf]) -> Self {
        let mut search = SearchPath::standard(&config);
        let mut dirs = extra_dirs.to_vec();
        dirs.append(&mut search.0);
        Self {
            config,
            search: SearchPath(dirs),
        }
    }

    /// Loads and constructs the configured backstore.
    pub fn backstore(&self) -> Result<LoadedBackstore, LoadError> {
        loader::load_backstore(&self.config.backstore, &self.search)
            .map_err(|e| self.locate_options_error(e, None))
    }

    /// Points an options error of a plugin's constructor at the config
    /// file's own line (the plugin only saw the options as TOML text).
    fn locate_options_error(&self, e: LoadError, watch: Option<usize>) -> LoadError {
        match e {
            LoadError::Constructor { name, error }
                if error.code == agentfs_plugin_api::ErrorCode::INVALID_ARGUMENT =>
            {
                let Some(at) = self.config.options_location(watch) else {
                    return LoadError::Constructor { name, error };
                };
                let error = agentfs_plugin_api::PluginError {
                    message: format!("{} (options at {at})", error.message()).into(),
                    ..error
                };
                LoadError::Constructor { name, error }
            }
            other => other,
        }
    }

    /// Loads and constructs every configured watch provider, in order.
    /// With the embedded default configuration (which lists all three),
    /// a provider whose library is not installed is skipped; a configured
    /// one that cannot be found is an error.
    pub fn watch_providers(&self) -> Result<Vec<LoadedWatchProvider>, LoadError> {
        let mut out = Vec::new();
        for (i, w) in self.config.watch.iter().enumerate() {
            match loader::load_watch_provider(w, &self.search)
                .map_err(|e| self.locate_options_error(e, Some(i)))
            {
                Ok(p) => out.push(p),
                Err(LoadError::NotFound { name, .. })
                    if self.config.source == config::ConfigSource::Embedded =>
                {
                    tracing::info!(plugin = %name, "watch provider of the default configuration not installed; skipped");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}
