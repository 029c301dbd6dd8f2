//! `agentfs`: the AgentFS command-line host.

// The clap doc comments here are `--help` text (and man pages), where
// `<name>` is how a placeholder is written; they are not rustdoc HTML.
#![allow(rustdoc::invalid_html_tags)]

mod cli;
mod demo;
mod output;

use std::{path::PathBuf, process::ExitCode};

use agentfs_core::{InitOptions, LockWait};
use agentfs_host::{
    config::{BackstoreOverride, Config, EMBEDDED_DEFAULT},
    daemon::{self, ServeOptions},
    loader::{self, PluginDetails},
    units::human_bytes,
    Host,
};
use agentfs_plugin_api::{guard::path_from_bytes, PluginKind};
use anyhow::{Context, Result};
use clap::{CommandFactory, Parser, Subcommand};
use cli::backend::{Backend, DaemonClient};

/// AgentFS: copy-on-write branches of a real directory for AI agents.
#[derive(Parser, Debug)]
#[command(name = "agentfs", version = loader::version_line(), about, long_about = None)]
struct Cli {
    /// Configuration file (default: $AGENTFS_CONFIG, else the embedded default).
    #[arg(long, global = true, env = "AGENTFS_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Extra plugin directory, searched before the standard ones (repeatable).
    #[arg(long = "plugin-dir", global = true, value_name = "DIR")]
    plugin_dirs: Vec<PathBuf>,
    /// Fail with "store busy" (exit status 75) instead of waiting when
    /// another agentfs process holds the store.
    #[arg(long, global = true)]
    no_wait: bool,
    /// The daemon's socket (default: $XDG_RUNTIME_DIR/agentfs/agentfs.sock,
    /// else $TMPDIR/agentfs-<uid>/agentfs.sock). The branch, snapshot, fs
    /// and status commands go through the daemon when one serves there.
    #[arg(long, global = true, env = "AGENTFS_SOCKET", value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Use the store directly even when a daemon serves on the socket.
    #[arg(long, global = true)]
    direct: bool,
    /// Backstore plugin (a name, or a library path) instead of the
    /// configuration's.
    #[arg(
        long,
        global = true,
        env = "AGENTFS_BACKSTORE",
        value_name = "NAME|PATH"
    )]
    backstore: Option<String>,
    /// A backstore option, KEY=VALUE (repeatable): dotted keys reach into
    /// tables (ramdisk.size_mb=512); values are TOML when they parse as
    /// TOML, else strings. $AGENTFS_BACKSTORE_OPTIONS may hold a TOML table
    /// of options, applied first.
    #[arg(long = "backstore-option", global = true, value_name = "KEY=VALUE")]
    backstore_options: Vec<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Inspect the plugins in the search path; write a new plugin crate.
    #[command(subcommand, alias = "plugin")]
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
    /// Create the store in the configured backstore.
    Init {
        /// Default base directory of new branches (none: branches start
        /// empty unless given --base or --from).
        #[arg(long, value_name = "DIR")]
        base: Option<PathBuf>,
        /// Compact a branch's chain when a snapshot makes it deeper than
        /// this many committed layers (default 8).
        #[arg(long, value_name = "N")]
        compact_threshold: Option<u32>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Create, list, delete and compact branches.
    #[command(subcommand)]
    Branch(cli::branch::BranchCmd),
    /// Create, list and delete snapshots.
    #[command(subcommand)]
    Snapshot(cli::snapshot::SnapshotCmd),
    /// File operations in a branch (or, for reading, a snapshot).
    #[command(subcommand)]
    Fs(cli::fs::FsCmd),
    /// List what a branch added, modified and deleted, against its base or
    /// a snapshot.
    Diff {
        /// The branch.
        #[arg(long)]
        branch: String,
        /// Compare against this snapshot instead of the base.
        #[arg(long, value_name = "SNAPSHOT")]
        from: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Serve the store on a UNIX socket (mode 0600, this user only) until
    /// SIGTERM or SIGINT: the daemon. Prints one line when ready.
    Serve {
        /// Create the store if the backstore has none (e.g. a RAM backstore).
        #[arg(long)]
        init: bool,
        /// With --init: default base directory of new branches.
        #[arg(long, value_name = "DIR", requires = "init")]
        base: Option<PathBuf>,
        /// Seconds a clean shutdown may take after SIGTERM or SIGINT before
        /// the daemon exits anyway (a second signal exits at once).
        #[arg(long, value_name = "SECS", default_value_t = daemon::DEFAULT_SHUTDOWN_TIMEOUT.as_secs_f64())]
        shutdown_timeout: f64,
        /// At most this many connections per uid at once; more are refused
        /// with an error frame and a log line.
        #[arg(long, value_name = "N", default_value_t = daemon::limits::DEFAULT_MAX_CONNECTIONS_PER_UID)]
        max_connections_per_uid: usize,
        /// Stop when the last client disconnects (how `agentfs run` starts
        /// a private daemon: it lives as long as some process uses it).
        #[arg(long)]
        exit_when_idle: bool,
    },
    /// Print a branch's file events as they happen, through the daemon.
    Watch {
        /// The branch.
        #[arg(long)]
        branch: String,
        /// Only events at or under this path (default: the whole branch).
        #[arg(default_value = "")]
        path: String,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// Register a native watch on PATH with this provider and print its
        /// records (as a process using that API would get them) instead of
        /// core events.
        #[arg(long, value_enum, value_name = "API")]
        native: Option<cli::watch::NativeApi>,
    },
    /// Run a program inside a branch: the branch appears at the base's own
    /// path (or --at DIR), reads come from the branch, writes land in it.
    Run(cli::run::RunArgs),
    /// Mount a branch as a real filesystem (FUSE, Linux) until `agentfs unmount`.
    Mount(cli::mount::MountArgs),
    /// Unmount a branch mounted with `agentfs mount`.
    Unmount(cli::mount::UnmountArgs),
    /// Run the main job step by step on the configured backstore: a branch
    /// over a directory, a change, a snapshot, a diff, the base untouched.
    Demo {
        /// The directory to branch (default: a temporary sample project).
        #[arg(long, value_name = "DIR")]
        base: Option<PathBuf>,
    },
    /// Install this binary, the plugins it finds, man pages and shell
    /// completions under a prefix (DIR/bin, DIR/lib/agentfs/plugins, DIR/share).
    Install(cli::install::InstallArgs),
    /// Print the shell completion script for SHELL.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the agentfs(1) man page (roff), or write every page to a directory.
    Man(cli::install::ManArgs),
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
        /// When the plugin is refused, print the loader's full report.
        #[arg(long)]
        verbose: bool,
    },
    /// Write a new plugin crate that builds and certifies as generated.
    New(cli::plugins::NewArgs),
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
        .with_ansi(output::log_colours())
        .init();
    // Before parsing: `--help` output may meet a closed pipe too.
    output::default_sigpipe();
    let cli = Cli::parse();
    if matches!(cli.command, Command::Serve { .. }) {
        output::ignore_sigpipe();
    }
    match run(cli) {
        // A plugin panic some caller could carry on from is still a failure.
        Ok(_) if loader::first_plugin_panic().is_some() => {
            eprintln!(
                "agentfs: error: {}",
                loader::first_plugin_panic().unwrap_or_default()
            );
            ExitCode::from(1)
        }
        Ok(code) => code,
        Err(e) => {
            eprintln!("agentfs: error: {}", output::error_line(&e));
            cli::store::exit_code_for(&e)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let wait = if cli.no_wait {
        LockWait::Fail
    } else {
        LockWait::Block
    };
    if let Command::Config(ConfigCmd::Default) = cli.command {
        // Needs no configuration: it prints the default one.
        print!("{EMBEDDED_DEFAULT}");
        return Ok(ExitCode::SUCCESS);
    }
    let globals = cli::run::global_args(
        cli.config.as_deref(),
        &cli.plugin_dirs,
        cli.backstore.as_deref(),
        &cli.backstore_options,
    );
    match cli.command {
        Command::Completions { shell } => return cli::install::completions(Cli::command(), shell),
        Command::Man(args) => return cli::install::man(Cli::command(), args),
        _ => {}
    }
    let socket = cli
        .socket
        .clone()
        .unwrap_or_else(daemon::default_socket_path);
    let make_host = || -> Result<Host> {
        let mut config = Config::load(cli.config.as_deref())?;
        let o = BackstoreOverride {
            plugin: cli.backstore.clone(),
            options_toml: std::env::var("AGENTFS_BACKSTORE_OPTIONS").ok(),
            options: cli.backstore_options.clone(),
        };
        config.apply_backstore_override(&o)?;
        Ok(Host::new(config, &cli.plugin_dirs))
    };
    // The commands that may go through the daemon connect first: with a
    // daemon running they need no configuration.
    let backend = || Backend::choose(&socket, cli.direct, make_host, wait);
    match cli.command {
        Command::Branch(cmd) => return cli::branch::run(&mut backend()?, cmd),
        Command::Snapshot(cmd) => return cli::snapshot::run(&mut backend()?, cmd),
        Command::Fs(cmd) => return cli::fs::run(&mut backend()?, cmd),
        Command::Status { json } if !cli.direct => {
            if let Some(d) = cli::backend::connect_daemon(&socket)? {
                return status_daemon(d, json);
            }
        }
        Command::Watch {
            branch,
            path,
            json,
            native,
        } => return cli::watch::run(&socket, &branch, &path, json, native),
        Command::Run(args) if args.frontend == cli::run_fuse::Frontend::Fuse => {
            return cli::run_fuse::run(make_host, wait, args)
        }
        Command::Run(args) => {
            let exists = || Ok(agentfs_core::Store::exists(&make_host()?.backstore()?)?);
            return cli::run::run(&socket, &globals, exists, args);
        }
        Command::Mount(args) => return cli::mount::mount(&socket, &globals, make_host, wait, args),
        Command::Unmount(args) => return cli::mount::unmount(&socket, args),
        _ => {}
    }
    let h = make_host()?;
    let open = || cli::store::open_store(&h, wait);
    match cli.command {
        Command::Init {
            base,
            compact_threshold,
            json,
        } => cli::store::init(&h, wait, base, compact_threshold, json),
        Command::Serve {
            init,
            base,
            shutdown_timeout,
            max_connections_per_uid,
            exit_when_idle,
        } => {
            let opts = ServeOptions {
                socket,
                init: init.then_some(InitOptions {
                    default_base: base,
                    compact_threshold: None,
                }),
                wait,
                shutdown_timeout: std::time::Duration::try_from_secs_f64(shutdown_timeout)
                    .context("--shutdown-timeout: give a number of seconds")?,
                max_connections_per_uid,
                exit_when_idle,
            };
            serve(&h, opts)
        }
        Command::Branch(_)
        | Command::Snapshot(_)
        | Command::Fs(_)
        | Command::Watch { .. }
        | Command::Run(_)
        | Command::Mount(_)
        | Command::Unmount(_) => {
            unreachable!("handled above")
        }
        Command::Diff { branch, from, json } => {
            cli::store::diff(&open()?, &branch, from.as_deref(), json)
        }
        Command::Demo { base } => demo::run(&h, wait, base),
        Command::Install(args) => cli::install::install(&h, Cli::command(), args),
        Command::Completions { .. } | Command::Man(_) => unreachable!("handled above"),
        Command::Plugins(PluginsCmd::List { json }) => plugins_list(&h, json),
        Command::Plugins(PluginsCmd::Info {
            plugin,
            json,
            verbose,
        }) => cli::plugins::with_report(plugins_info(&h, &plugin, json), verbose),
        Command::Plugins(PluginsCmd::New(args)) => cli::plugins::new(args),
        Command::Status { json } => status(&h, json, &socket),
        Command::Config(ConfigCmd::Default) => unreachable!("handled above"),
        Command::Config(ConfigCmd::Show) => {
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
    for path in loader::scan_dirs(&h.search) {
        match loader::inspect(&path) {
            Ok(d) => found.push(d),
            Err(e) => broken.push(e.to_string()),
        }
    }
    if json {
        let v = serde_json::json!({
            "abi_version": agentfs_plugin_api::ABI_VERSION,
            "api_version": agentfs_plugin_api::API_VERSION,
            "plugins": found,
            "errors": broken,
        });
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
        // Last, so the table's header stays the first line.
        println!(
            "host: agentfs {}, {}",
            env!("CARGO_PKG_VERSION"),
            loader::abi_line()
        );
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
        loader::candidate_files(&h.search, PluginKind::BACKSTORE, plugin)
            .into_iter()
            .next()
            .with_context(|| format!("plugin '{plugin}': not found in {}", search_list(h)))?
    };
    let d: PluginDetails = loader::inspect(&path)?;
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

fn serve(h: &Host, opts: ServeOptions) -> Result<ExitCode> {
    daemon::serve(h, opts, |path| {
        // The readiness line scripts and tests wait for.
        output::say(&format!(
            "agentfs serve: ready on {} (pid {})",
            path.display(),
            std::process::id()
        ));
    })?;
    output::say("agentfs serve: stopped");
    Ok(ExitCode::SUCCESS)
}

/// `agentfs status` through the daemon.
fn status_daemon(mut d: DaemonClient, json: bool) -> Result<ExitCode> {
    let st = match d.client.request(agentfs_proto::Request::Status)? {
        agentfs_proto::Response::Status(st) => *st,
        other => anyhow::bail!("unexpected answer from the daemon: {other:?}"),
    };
    let b = &st.backstore;
    if json {
        let v = serde_json::json!({
            "via": "daemon",
            "config": st.config,
            "socket": d.socket,
            "daemon": {
                "version": st.daemon,
                "pid": st.pid,
                "protocol": st.protocol,
                "clients": st.clients,
                "watches": st.watches,
                "open_fds": st.open_fds,
                "subscriptions": st.subscriptions,
                "doorbells": st.doorbells,
                "last_seq": st.last_seq,
            },
            "base": st.base,
            "branches": st.branches,
            "snapshots": st.snapshots,
            "backstore": {
                "plugin": b.plugin,
                "root": b.root,
                "fs_type": b.fs_type,
                "capacity_bytes": b.capacity,
                "used_bytes": b.used,
                "capabilities": b.capabilities,
            },
            "watch": st.watch_providers,
            "read_only_fds": st.read_only_fds,
            "mounts": cli::mount::status_json(&d.socket),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let pct = (b.used as f64 * 100.0 / b.capacity.max(1) as f64).round();
        println!(
            "daemon:       {} (pid {}) on {}",
            st.daemon,
            st.pid,
            d.socket.display()
        );
        println!("config:       {}", st.config);
        println!("backstore:    {}", b.plugin);
        println!("root:         {}", b.root);
        println!("fs type:      {}", b.fs_type);
        println!("capacity:     {}", human_bytes(b.capacity));
        println!("used:         {} ({pct}%)", human_bytes(b.used));
        println!("capabilities: {}", caps_or_dash(&b.capabilities));
        println!(
            "store:        {} branches, {} snapshots",
            st.branches, st.snapshots
        );
        println!(
            "clients:      {} connected, {} watches, {} open fds, {} subscriptions",
            st.clients, st.watches, st.open_fds, st.subscriptions
        );
        println!("watch:        {}", caps_or_dash(&st.watch_providers));
        println!(
            "read fds:     {}",
            if st.read_only_fds {
                "from read-only mounts"
            } else {
                "not protected (no read-only mounts here)"
            }
        );
        cli::mount::print_status(&d.socket);
    }
    Ok(ExitCode::SUCCESS)
}

fn status(h: &Host, json: bool, socket: &std::path::Path) -> Result<ExitCode> {
    let b = h.backstore()?;
    let watch = h.watch_providers()?;
    let watch_names: Vec<String> = watch.iter().map(|w| w.details().name.clone()).collect();
    let st = b
        .status()
        .map_err(|e| anyhow::anyhow!("backstore '{}': status: {e}", b.details().name))?;
    let caps = b.capabilities().names();
    let reclaimed = b
        .reclaimed()
        .map_err(|e| anyhow::anyhow!("backstore: {e}"))?;
    let root = path_from_bytes(&st.root).to_path_buf();
    if json {
        let v = serde_json::json!({
            "via": "store",
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
                "reclaimed": reclaimed,
            },
            "watch": watch_names,
            "mounts": cli::mount::status_json(socket),
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
        for line in &reclaimed {
            println!("reclaimed:    {line}");
        }
        cli::mount::print_status(socket);
    }
    Ok(ExitCode::SUCCESS)
}
