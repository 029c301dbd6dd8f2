//! The AgentFS conformance suite: one set of named checks that certifies
//! every plugin, ours and third parties'. It loads a plugin by name or path,
//! runs every check that applies to its kind and declared capabilities, and
//! reports each as passed, failed or skipped with its reason.

mod backstore_checks;
mod overlay_checks;
mod report;
mod watch_checks;
pub mod watch_tables;

use std::{
    panic::{catch_unwind, AssertUnwindSafe},
    path::{Path, PathBuf},
    time::Instant,
};

use agentfs_host::{
    config::PluginEntry,
    loader::{self, SearchPath},
};
use agentfs_plugin_api::PluginKind;

pub use report::{CheckResult, Outcome, Report};
pub use watch_checks::BURST;

/// What to certify: a plugin by name or path, with its options.
#[derive(Debug, Clone)]
pub struct Target {
    entry: PluginEntry,
    options_text: String,
    search: SearchPath,
}

impl Target {
    /// A plugin library at `path`.
    pub fn path(path: impl Into<PathBuf>) -> Self {
        Self {
            entry: PluginEntry {
                plugin: None,
                path: Some(path.into()),
                options: toml::Table::new(),
            },
            options_text: String::new(),
            search: default_search(),
        }
    }

    /// A plugin found by name in the search path (the target dir of this
    /// build, `AGENTFS_PLUGIN_PATH`, the executable's directory).
    pub fn name(name: &str) -> Self {
        Self {
            entry: PluginEntry::named(name),
            options_text: String::new(),
            search: default_search(),
        }
    }

    /// Sets the plugin's options (a TOML table as text).
    pub fn with_options(mut self, toml_text: &str) -> Self {
        self.options_text = toml_text.to_string();
        self
    }

    /// Searches these directories first when resolving a name.
    pub fn with_search_dirs(mut self, dirs: &[PathBuf]) -> Self {
        let mut d = dirs.to_vec();
        d.append(&mut self.search.0);
        self.search = SearchPath(d);
        self
    }

    /// The label used in messages.
    pub fn label(&self) -> String {
        self.entry.label()
    }
}

fn default_search() -> SearchPath {
    let mut dirs = vec![target_dir()];
    if let Some(v) = std::env::var_os("AGENTFS_PLUGIN_PATH") {
        dirs.extend(std::env::split_paths(&v).filter(|p| !p.as_os_str().is_empty()));
    }
    SearchPath(dirs)
}

/// The cargo target directory holding the built plugins (`target/debug`):
/// the executable's directory, or its parent when it lives in `deps/`.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().map(Path::to_path_buf).unwrap_or(dir)
    } else {
        dir
    }
}

/// A named check on a context `C`: whether it applies (`None`) or why it
/// is skipped, and its body.
pub(crate) struct Check<C> {
    pub(crate) name: &'static str,
    pub(crate) skip_unless: fn(&C) -> Option<String>,
    pub(crate) run: fn(&C) -> Result<(), String>,
}

/// Runs every check on `ctx`, skipping those that do not apply.
pub(crate) fn run_checks<C>(report: &mut Report, checks: &[Check<C>], ctx: &C) {
    for c in checks {
        if let Some(why) = (c.skip_unless)(ctx) {
            report.push(c.name, Outcome::Skipped(why), Default::default());
            continue;
        }
        timed(report, c.name, || match (c.run)(ctx) {
            Ok(()) => Outcome::Passed,
            Err(e) => Outcome::Failed(e),
        });
    }
}

/// Records every check as skipped for `why`.
pub(crate) fn skip_checks<C>(report: &mut Report, checks: &[Check<C>], why: &str) {
    for c in checks {
        report.push(
            c.name,
            Outcome::Skipped(why.to_string()),
            Default::default(),
        );
    }
}

/// Runs a check body, turning a panic in the check itself into a failure.
pub(crate) fn timed(report: &mut Report, name: &str, f: impl FnOnce() -> Outcome) {
    let t = Instant::now();
    let outcome = catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let msg = agentfs_plugin_api::guard::panic_message(p.as_ref());
        Outcome::Failed(format!("check panicked: {msg}"))
    });
    report.push(name, outcome, t.elapsed());
}

/// Loads the target and runs every applicable check.
pub fn run(target: &Target) -> Report {
    let mut report = Report {
        target: target.label(),
        ..Report::default()
    };
    let mut entry = target.entry.clone();
    entry.options = match toml::from_str::<toml::Table>(&target.options_text) {
        Ok(t) => t,
        Err(e) => {
            report.push(
                "load.options",
                Outcome::Failed(format!("options are not a TOML table: {}", e.message())),
                Default::default(),
            );
            return report;
        }
    };
    // Which kind is it? Resolve and inspect first.
    let path = match loader::resolve(&entry, PluginKind::BACKSTORE, &target.search)
        .or_else(|_| loader::resolve(&entry, PluginKind::WATCH_PROVIDER, &target.search))
    {
        Ok(p) => p,
        Err(e) => {
            report.push(
                "load.info",
                Outcome::Failed(e.to_string()),
                Default::default(),
            );
            return report;
        }
    };
    let details = match loader::inspect(&path) {
        Ok(d) => d,
        Err(e) => {
            report.push(
                "load.info",
                Outcome::Failed(e.to_string()),
                Default::default(),
            );
            return report;
        }
    };
    report.plugin = Some(details.clone());
    timed(&mut report, "load.info", || info_sanity(&details));
    entry.path = Some(path);
    entry.plugin = None;
    match details.kind.as_str() {
        "backstore" => {
            backstore_checks::run_all(&mut report, &entry, &target.search);
            overlay_checks::run_all(&mut report, &entry, &target.search);
        }
        "watch-provider" => watch_checks::run_all(&mut report, &entry, &target.search),
        other => report.push(
            "load.kind",
            Outcome::Failed(format!("unknown plugin kind {other}")),
            Default::default(),
        ),
    }
    report
}

fn info_sanity(d: &loader::PluginDetails) -> Outcome {
    if d.name.is_empty() || d.name.contains(['/', ' ']) {
        return Outcome::Failed(format!("name {:?} must be a non-empty plain word", d.name));
    }
    if d.version.is_empty() {
        return Outcome::Failed("version is empty".into());
    }
    if d.abi_version != agentfs_plugin_api::ABI_VERSION {
        return Outcome::Failed(format!(
            "info() says ABI {}, descriptor says {}",
            d.abi_version,
            agentfs_plugin_api::ABI_VERSION
        ));
    }
    if !["any", "linux", "macos"].contains(&d.platforms.as_str()) {
        return Outcome::Failed(format!(
            "platforms {:?} is not any, linux or macos",
            d.platforms
        ));
    }
    Outcome::Passed
}
