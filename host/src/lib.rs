//! The AgentFS host library: configuration, plugin discovery and loading,
//! and the core overlay. The `agentfs` binary is a thin CLI over it.

pub mod config;
pub mod core;
pub mod plugins;
pub mod units;

use std::path::PathBuf;

use config::Config;
use plugins::{Backstore, LoadError, SearchPath, WatchProvider};

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
    pub fn backstore(&self) -> Result<Backstore, LoadError> {
        plugins::load_backstore(&self.config.backstore, &self.search)
    }

    /// Loads and constructs every configured watch provider, in order.
    pub fn watch_providers(&self) -> Result<Vec<WatchProvider>, LoadError> {
        self.config
            .watch
            .iter()
            .map(|w| plugins::load_watch_provider(w, &self.search))
            .collect()
    }
}
