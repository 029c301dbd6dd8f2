//! `agentfs`: the AgentFS command-line host.

use std::{path::PathBuf, process::ExitCode};

use agentfs_host::{
    config::{Config, EMBEDDED_DEFAULT},
    plugins::{self, PluginDetails},
    units::human_bytes,
    Host,
};
use agentfs_plugin_api::{guard::path_from_bytes, PluginKind};
use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

/// AgentFS: copy-on-write branches of a real directory for AI agents.
#[derive(Parser, Debug)]
#[command(name = "agentfs", version, about, long_about = None)]
struct Cli {
    /// Configuration file (default: $AGENTFS_CONFIG, else the embedded default).
    #[arg(long, global = true, env = "AGENTFS_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Extra plugin directory, searched before the standard ones (repeatable).
    #[arg(long = "plugin-dir", global = true, value_name = "DIR")]
    plugin_dirs: Vec<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Inspect the plugins in the search path.
    #[command(subcommand)]
    Plugins(PluginsCmd),
    /// Show the configured backstore: fs type, capacity, used, capabilities.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show configuration.
    #[command(subcommand)]
    Config(ConfigCmd),
}

#[derive(Subcommand, Debug)]
enum PluginsCmd {
    /// List every plugin found: name, kind, version, ABI, platforms, capabilities, path.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Describe one plugin, by name or by path.
    Info {
        /// Plugin name (e.g. `hostfs`) or path to its library.
        plugin: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum ConfigCmd {
    /// Print the embedded default configuration.
    Default,
    /// Print where the configuration comes from and the plugin search path.
    Show,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("AGENTFS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("agentfs: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn host(cli: &Cli) -> Result<Host> {
    let config = Config::load(cli.config.as_deref())?;
    Ok(Host::new(config, &cli.plugin_dirs))
}

fn run(cli: Cli) -> Result<ExitCode> {
    match &cli.command {
        Command::Plugins(PluginsCmd::List { json }) => plugins_list(&host(&cli)?, *json),
        Command::Plugins(PluginsCmd::Info { plugin, json }) => {
            plugins_info(&host(&cli)?, plugin, *json)
        }
        Command::Status { json } => status(&host(&cli)?, *json),
        Command::Config(ConfigCmd::Default) => {
            print!("{EMBEDDED_DEFAULT}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Config(ConfigCmd::Show) => {
            let h = host(&cli)?;
            println!("config: {}", h.config.source);
            println!("backstore: {}", h.config.backstore.label());
            for w in &h.config.watch {
                println!("watch: {}", w.label());
            }
            println!("plugin search path:");
            for d in &h.search.0 {
                println!("  {}", d.display());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn plugins_list(h: &Host, json: bool) -> Result<ExitCode> {
    let mut found = Vec::new();
    let mut broken = Vec::new();
    for path in plugins::scan_dirs(&h.search) {
        match plugins::inspect(&path) {
            Ok(d) => found.push(d),
            Err(e) => broken.push(e.to_string()),
        }
    }
    if json {
        let v = serde_json::json!({ "plugins": found, "errors": broken });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        if found.is_empty() {
            println!("no plugins found in: {}", search_list(h));
        } else {
            let w = |f: &dyn Fn(&PluginDetails) -> usize, min: usize| {
                found.iter().map(f).max().unwrap_or(0).max(min)
            };
            let wn = w(&|d| d.name.len(), 4);
            let wv = w(&|d| d.version.len(), 7);
            let wp = w(&|d| d.platforms.len(), 9);
            let wc = w(&|d| caps_or_dash(&d.capabilities).len(), 12);
            println!(
                "{:<wn$}  {:<14}  {:<wv$}  {:<3}  {:<wp$}  {:<wc$}  PATH",
                "NAME", "KIND", "VERSION", "ABI", "PLATFORMS", "CAPABILITIES"
            );
            for d in &found {
                println!(
                    "{:<wn$}  {:<14}  {:<wv$}  {:<3}  {:<wp$}  {:<wc$}  {}",
                    d.name,
                    d.kind,
                    d.version,
                    d.abi_version,
                    d.platforms,
                    caps_or_dash(&d.capabilities),
                    d.path.display()
                );
            }
        }
        for e in &broken {
            eprintln!("agentfs: warning: {e}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn search_list(h: &Host) -> String {
    h.search
        .0
        .iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn caps_or_dash(c: &[String]) -> String {
    if c.is_empty() {
        "-".into()
    } else {
        c.join(", ")
    }
}

fn plugins_info(h: &Host, plugin: &str, json: bool) -> Result<ExitCode> {
    let path = if plugin.contains('/') || std::path::Path::new(plugin).is_file() {
        PathBuf::from(plugin)
    } else {
        plugins::candidate_files(&h.search, PluginKind::BACKSTORE, plugin)
            .into_iter()
            .next()
            .with_context(|| format!("plugin '{plugin}': not found in {}", search_list(h)))?
    };
    let d: PluginDetails = plugins::inspect(&path)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&d)?);
    } else {
        println!("name:         {}", d.name);
        println!("kind:         {}", d.kind);
        println!("version:      {}", d.version);
        println!("abi:          {}", d.abi_version);
        println!("platforms:    {}", d.platforms);
        println!("capabilities: {}", caps_or_dash(&d.capabilities));
        println!("description:  {}", d.description);
        println!("path:         {}", d.path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn status(h: &Host, json: bool) -> Result<ExitCode> {
    let b = h.backstore()?;
    let watch = h.watch_providers()?;
    let watch_names: Vec<String> = watch.iter().map(|w| w.details().name.clone()).collect();
    let st = b
        .status()
        .map_err(|e| anyhow::anyhow!("backstore '{}': status: {e}", b.details().name))?;
    let caps = b.capabilities().names();
    let root = path_from_bytes(&st.root).to_path_buf();
    if json {
        let v = serde_json::json!({
            "config": h.config.source.to_string(),
            "backstore": {
                "plugin": b.details().name,
                "version": b.details().version,
                "path": b.details().path,
                "root": root,
                "fs_type": st.fs_type.as_str(),
                "capacity_bytes": st.capacity_bytes,
                "used_bytes": st.used_bytes,
                "capabilities": caps,
            },
            "watch": watch_names,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let pct = (st.used_bytes as f64 * 100.0 / st.capacity_bytes.max(1) as f64).round();
        println!("config:       {}", h.config.source);
        println!(
            "backstore:    {} {} ({})",
            b.details().name,
            b.details().version,
            b.details().path.display()
        );
        println!("root:         {}", root.display());
        println!("fs type:      {}", st.fs_type);
        println!("capacity:     {}", human_bytes(st.capacity_bytes));
        println!("used:         {} ({pct}%)", human_bytes(st.used_bytes));
        println!(
            "capabilities: {}",
            if caps.is_empty() {
                "-".to_string()
            } else {
                caps.join(", ")
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}
