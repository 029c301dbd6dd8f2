//! `agentfs plugin new` and the verbose report of `plugins info`.

use std::{path::PathBuf, process::ExitCode};

use agentfs_host::loader::{
    template::{self, ApiSource, TemplateKind},
    LoadError,
};
use anyhow::{Context, Result};

/// Which kind of plugin `plugin new` writes.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Kind {
    /// Stores branch data (layers as directories under a root).
    Backstore,
    /// Translates core events into a native watch API's records.
    WatchProvider,
}

/// Arguments of `agentfs plugin new`.
#[derive(clap::Args, Debug)]
pub struct NewArgs {
    /// The plugin's name (lowercase letters, digits, dashes).
    name: String,
    /// The kind of plugin.
    #[arg(long, value_enum)]
    kind: Kind,
    /// The crate directory to create (default: ./agentfs-<kind>-<name>).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// An AgentFS checkout to take agentfs-plugin-api from by path
    /// (default: the checkout this agentfs was built from, if present).
    #[arg(long, value_name = "DIR", conflicts_with = "api_git")]
    api_path: Option<PathBuf>,
    /// A git URL of the AgentFS repository to take agentfs-plugin-api from.
    #[arg(long, value_name = "URL")]
    api_git: Option<String>,
}

/// Writes the plugin crate and says how to build and certify it.
pub fn new(a: NewArgs) -> Result<ExitCode> {
    let kind = match a.kind {
        Kind::Backstore => TemplateKind::Backstore,
        Kind::WatchProvider => TemplateKind::WatchProvider,
    };
    let api = match (a.api_path, a.api_git) {
        (Some(p), _) => ApiSource::Checkout(std::path::absolute(&p)?),
        (None, Some(url)) => ApiSource::Git(url),
        (None, None) => ApiSource::build_checkout().context(
            "the AgentFS checkout this agentfs was built from is gone: \
             pass --api-path DIR (a checkout) or --api-git URL",
        )?,
    };
    let dir = a
        .dir
        .unwrap_or_else(|| PathBuf::from(template::package_name(kind, &a.name)));
    let files = template::generate(kind, &a.name, &dir, &api)?;
    for f in &files {
        println!("wrote {}", f.display());
    }
    println!(
        "next: cd {} && cargo build && agentfs-conformance target/debug/<library> --options conformance-options.toml",
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// With `verbose`, prints the loader's full report of a refused plugin.
pub fn with_report(r: Result<ExitCode>, verbose: bool) -> Result<ExitCode> {
    if let Err(e) = &r {
        if let Some(report) = e
            .downcast_ref::<LoadError>()
            .and_then(LoadError::full_report)
            .filter(|_| verbose)
        {
            eprintln!("{report}");
        }
    }
    r
}
