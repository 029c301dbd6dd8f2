//! Opening plugin libraries and turning every failure into one clear line.
//!
//! Order of checks: the file exists and is safe to open and map (a regular
//! file nobody else can replace, a well-formed library for this machine:
//! see `validate`); it is a loadable shared library; it exports
//! `AGENTFS_PLUGIN_DESCRIPTOR` with the right magic; its ABI version is
//! ours; it was not built with `panic = "abort"`; its kind is the role it is
//! configured for; abi_stable accepts its root module's version and layout;
//! its constructor succeeds without panicking.

use std::path::{Path, PathBuf};

use abi_stable::library::{lib_header_from_path, LibraryError};
use agentfs_plugin_api::{
    backstore::BackstorePluginRef, watch::WatchProviderPluginRef, ErrorCode, PluginBuild,
    PluginDescriptor, PluginError, PluginInfo, PluginKind, ABI_VERSION, BUILD_MAGIC, BUILD_SYMBOL,
    DESCRIPTOR_MAGIC, DESCRIPTOR_SYMBOL,
};
use serde::Serialize;

use super::{
    discovery::{candidate_files, library_file_name, SearchPath},
    handles::{LoadedBackstore, LoadedWatchProvider},
    validate::{check_file, FileProblem},
};
use crate::config::PluginEntry;

/// Why a plugin could not be loaded. Each renders as one line naming the
/// plugin and the cause.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// No file for the name anywhere in the search path.
    #[error("plugin '{name}': not found: no {file} in {searched}")]
    NotFound {
        /// Plugin label.
        name: String,
        /// The file name looked for.
        file: String,
        /// The directories searched.
        searched: String,
    },
    /// An explicit path that does not exist.
    #[error("plugin '{name}': {}: no such file", path.display())]
    MissingFile {
        /// Plugin label.
        name: String,
        /// The path.
        path: PathBuf,
    },
    /// The file cannot be opened safely (not a regular file, truncated,
    /// another architecture, replaceable by another user, ...).
    #[error("plugin '{name}': {} {problem}", path.display())]
    BadFile {
        /// Plugin label.
        name: String,
        /// The path.
        path: PathBuf,
        /// What is wrong with it.
        problem: FileProblem,
    },
    /// Built with `panic = "abort"`: its panics would kill the host.
    #[error("plugin '{name}': {} was built with panic = \"abort\": a panic in it would kill agentfs instead of becoming an error; build it with the default panic = \"unwind\" (check [profile.*] panic in its Cargo.toml)", path.display())]
    PanicAbort {
        /// Plugin label.
        name: String,
        /// The path.
        path: PathBuf,
    },
    /// The file is not a loadable shared library.
    #[error("plugin '{name}': {} is not a loadable shared library: {reason}", path.display())]
    NotSharedLibrary {
        /// Plugin label.
        name: String,
        /// The path.
        path: PathBuf,
        /// The loader's message.
        reason: String,
    },
    /// A shared library without the AgentFS descriptor.
    #[error("plugin '{name}': {} is a shared library but not an AgentFS plugin ({reason})", path.display())]
    NotAPlugin {
        /// Plugin label.
        name: String,
        /// The path.
        path: PathBuf,
        /// What was missing or wrong.
        reason: String,
    },
    /// Built against another plugin ABI version.
    #[error("plugin '{name}': {} was built for plugin ABI version {plugin_abi}, but this host speaks ABI version {host_abi}; rebuild the plugin against a matching agentfs-plugin-api", path.display())]
    AbiMismatch {
        /// Plugin label.
        name: String,
        /// The path.
        path: PathBuf,
        /// The plugin's ABI version.
        plugin_abi: u32,
        /// Ours.
        host_abi: u32,
    },
    /// A plugin of one kind configured in the role of another.
    #[error("plugin '{name}': {} is a {actual} plugin, but it is configured as a {expected}", path.display())]
    WrongKind {
        /// Plugin label.
        name: String,
        /// The path.
        path: PathBuf,
        /// What it is.
        actual: PluginKind,
        /// What the config wants.
        expected: PluginKind,
    },
    /// abi_stable rejected the root module (layout, version or symbol).
    #[error("plugin '{name}': {} {reason}", path.display())]
    Incompatible {
        /// Plugin label.
        name: String,
        /// The path.
        path: PathBuf,
        /// What differs, in one line.
        reason: String,
        /// abi_stable's full report (logged at debug level; `plugins info
        /// --verbose` prints it).
        report: String,
    },
    /// The constructor returned an error.
    #[error("plugin '{name}': failed to start: {error}")]
    Constructor {
        /// Plugin label.
        name: String,
        /// The plugin's error.
        error: PluginError,
    },
    /// The constructor panicked (caught at the boundary).
    #[error("plugin '{name}': constructor panicked: {message}")]
    ConstructorPanicked {
        /// Plugin label.
        name: String,
        /// The panic message.
        message: String,
    },
}

/// What `info()` said, plus where the library is. Serializable for `--json`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PluginDetails {
    /// Short name.
    pub name: String,
    /// Plugin version.
    pub version: String,
    /// `backstore` or `watch-provider`.
    pub kind: String,
    /// ABI version it was built against.
    pub abi_version: u32,
    /// One line for people.
    pub description: String,
    /// `any`, `linux` or `macos`.
    pub platforms: String,
    /// Declared capabilities.
    pub capabilities: Vec<String>,
    /// The library file.
    pub path: PathBuf,
}

impl PluginDetails {
    fn from_info(info: PluginInfo, path: &Path) -> Self {
        Self {
            name: info.name.into_string(),
            version: info.version.into_string(),
            kind: info.kind.name().to_string(),
            abi_version: info.abi_version,
            description: info.description.into_string(),
            platforms: info.platforms.into_string(),
            capabilities: info
                .capabilities
                .into_iter()
                .map(|c| c.into_string())
                .collect(),
            path: path.to_path_buf(),
        }
    }
}

impl LoadError {
    /// The full diagnostic behind a one-line error, when there is more to
    /// say (abi_stable's layout report).
    pub fn full_report(&self) -> Option<&str> {
        match self {
            Self::Incompatible { report, .. } => Some(report),
            _ => None,
        }
    }
}

fn first_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
        .to_string()
}

/// Reads the descriptor of the library at `path`, leaving it loaded.
fn read_descriptor(name: &str, path: &Path) -> Result<PluginDescriptor, LoadError> {
    // dlopen searches the library path for names without a slash: always
    // hand it an absolute path so the file the user named is the one opened.
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let path = abs.as_path();
    check_file(path).map_err(|problem| match problem {
        FileProblem::Missing => LoadError::MissingFile {
            name: name.into(),
            path: path.into(),
        },
        problem => LoadError::BadFile {
            name: name.into(),
            path: path.into(),
            problem,
        },
    })?;
    // SAFETY: loading a library runs its initialisers; the user chose this
    // file as a plugin and `check_file` found it well-formed and safe from
    // other users. It is leaked below and never unloaded.
    let lib =
        unsafe { libloading::Library::new(path) }.map_err(|e| LoadError::NotSharedLibrary {
            name: name.into(),
            path: path.into(),
            reason: first_line(&e.to_string()),
        })?;
    let desc = {
        // SAFETY: a plugin exports this symbol as a `PluginDescriptor`
        // static; we only take its address here.
        let sym = unsafe { lib.get::<*const PluginDescriptor>(DESCRIPTOR_SYMBOL) };
        match sym {
            // SAFETY: the symbol is the address of a 16-byte, 4-aligned
            // `#[repr(C)]` static whose layout is frozen (see plugin-api),
            // and the library stays loaded (leaked below).
            Ok(ptr) => unsafe { std::ptr::read_unaligned(*ptr) },
            Err(_) => {
                std::mem::forget(lib);
                return Err(LoadError::NotAPlugin {
                    name: name.into(),
                    path: path.into(),
                    reason: "no AGENTFS_PLUGIN_DESCRIPTOR symbol".into(),
                });
            }
        }
    };
    // A plugin built before the build record existed lacks the symbol.
    // SAFETY: as above, the address of a frozen `#[repr(C)]` static.
    let build = unsafe { lib.get::<*const PluginBuild>(BUILD_SYMBOL) }
        .ok()
        // SAFETY: a 16-byte `#[repr(C)]` static in a library kept loaded.
        .map(|ptr| unsafe { std::ptr::read_unaligned(*ptr) });
    std::mem::forget(lib);
    if desc.magic != DESCRIPTOR_MAGIC {
        return Err(LoadError::NotAPlugin {
            name: name.into(),
            path: path.into(),
            reason: "AGENTFS_PLUGIN_DESCRIPTOR has the wrong magic".into(),
        });
    }
    if desc.abi_version != ABI_VERSION {
        return Err(LoadError::AbiMismatch {
            name: name.into(),
            path: path.into(),
            plugin_abi: desc.abi_version,
            host_abi: ABI_VERSION,
        });
    }
    if build.is_some_and(|b| b.magic == BUILD_MAGIC && b.panic_aborts()) {
        return Err(LoadError::PanicAbort {
            name: name.into(),
            path: path.into(),
        });
    }
    Ok(desc)
}

fn incompatible(name: &str, path: &Path, e: LibraryError) -> LoadError {
    let report = e.to_string().trim().to_string();
    tracing::debug!(plugin = %name, path = %path.display(), "abi_stable refused the plugin:\n{report}");
    let reason = match &e {
        LibraryError::GetSymbolError { .. } => "has the AgentFS descriptor but no abi_stable \
             root module: build it with export_backstore! or export_watch_provider! (and do not \
             strip its dynamic symbols)"
            .to_string(),
        LibraryError::IncompatibleVersionNumber {
            expected_version,
            actual_version,
            ..
        } => format!(
            "was built against agentfs-plugin-api {actual_version}, but this host uses \
             {expected_version} (the major versions must match); rebuild the plugin"
        ),
        LibraryError::AbiInstability(_) => format!(
            "has an incompatible ABI layout: {} (AGENTFS_LOG=debug or `agentfs plugins info \
             --verbose` shows the full report)",
            first_difference(&report)
        ),
        LibraryError::InvalidAbiHeader(_) => {
            "was built with an incompatible abi_stable version".to_string()
        }
        LibraryError::RootModule { .. } => format!(
            "failed to initialise its root module: {}",
            first_line(&report)
        ),
        _ => format!("was refused by abi_stable: {}", first_line(&report)),
    };
    LoadError::Incompatible {
        name: name.into(),
        path: path.into(),
        reason,
        report,
    }
}

/// The first differing item of an abi_stable layout report, in one line:
/// the report lists, after "N error(s)inside:", the type where the layouts
/// part ways, then `Error:<what>`, `Expected:` and `Found:` blocks.
fn first_difference(report: &str) -> String {
    let lines: Vec<&str> = report.lines().map(str::trim).collect();
    let Some(err_at) = lines.iter().position(|l| l.starts_with("Error:")) else {
        return first_line(report);
    };
    let what = lines[err_at].trim_start_matches("Error:").trim();
    let block = |label: &str| -> String {
        let Some(i) = lines[err_at..].iter().position(|l| *l == label) else {
            return String::new();
        };
        lines[err_at + i + 1..]
            .iter()
            .take_while(|l| !l.ends_with(':') || l.contains(' '))
            .take_while(|l| **l != "Expected:" && **l != "Found:")
            .filter(|l| !l.is_empty())
            .map(|l| strip_ansi(l))
            .collect::<Vec<_>>()
            .join(" ")
    };
    // The innermost type named between "error(s)inside:" and the error.
    let start = lines[..err_at]
        .iter()
        .rposition(|l| l.contains("error(s)inside:"))
        .unwrap_or(0);
    let ty = lines[start..err_at]
        .iter()
        .find_map(|l| l.strip_prefix("type:"))
        .map(|t| format!(" in type {}", t.trim()))
        .unwrap_or_default();
    let field = lines[start..err_at]
        .iter()
        .find_map(|l| l.strip_prefix("field_name:"))
        .filter(|f| f.trim().parse::<u32>().is_err())
        .map(|f| format!(", field {}", f.trim()))
        .unwrap_or_default();
    format!(
        "{what}{ty}{field}: expected {}, found {}",
        block("Expected:"),
        block("Found:")
    )
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn backstore_module(name: &str, path: &Path) -> Result<BackstorePluginRef, LoadError> {
    let header = lib_header_from_path(path).map_err(|e| incompatible(name, path, e))?;
    match header.init_root_module::<BackstorePluginRef>() {
        Ok(m) => Ok(m),
        Err(e) if built_for_an_older_shape(header, &e) => {
            tracing::debug!(plugin = %name, "built for an older shape of the backstore ABI: methods appended since answer Unsupported");
            // SAFETY: the plugin's layout was just checked against the
            // first released shape, and the check against today's shape
            // found only fewer fields, i.e. a prefix of today's vtables.
            // Fields past the plugin's own are reached through abi_stable's
            // run-time accessibility check, never read blindly.
            unsafe { header.init_root_module_with_unchecked_layout::<BackstorePluginRef>() }
                .map_err(|e| incompatible(name, path, e))
        }
        Err(e) => Err(incompatible(name, path, e)),
    }
}

/// True when the library's root module failed today's layout check only
/// because its vtables have fewer fields, and passes the check against the
/// first released shape: a plugin built before methods were appended.
fn built_for_an_older_shape(header: &abi_stable::library::LibHeader, today: &LibraryError) -> bool {
    let LibraryError::AbiInstability(report) = today else {
        return false;
    };
    let report = report.to_string();
    let errors: Vec<&str> = report
        .lines()
        .filter(|l| l.trim_start().starts_with("Error:"))
        .collect();
    errors.len() == 1
        && errors[0].contains("too many fields")
        && header
            .ensure_layout::<agentfs_plugin_api::backstore::first_shape::BackstorePluginRef>()
            .is_ok()
}

fn watch_module(name: &str, path: &Path) -> Result<WatchProviderPluginRef, LoadError> {
    lib_header_from_path(path)
        .and_then(|h| h.init_root_module::<WatchProviderPluginRef>())
        .map_err(|e| incompatible(name, path, e))
}

/// Loads the library at `path` far enough to describe it (any kind).
pub fn inspect(path: &Path) -> Result<PluginDetails, LoadError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    let desc = read_descriptor(&name, path)?;
    let info = match PluginKind(desc.kind) {
        PluginKind::BACKSTORE => (backstore_module(&name, path)?.info())(),
        PluginKind::WATCH_PROVIDER => (watch_module(&name, path)?.info())(),
        other => {
            return Err(LoadError::NotAPlugin {
                name,
                path: path.into(),
                reason: format!("unknown plugin kind {}", other.0),
            })
        }
    };
    Ok(PluginDetails::from_info(info, path))
}

/// Finds the file for a config entry in the role `kind`.
pub fn resolve(
    entry: &PluginEntry,
    kind: PluginKind,
    search: &SearchPath,
) -> Result<PathBuf, LoadError> {
    if let Some(p) = &entry.path {
        return Ok(p.clone());
    }
    let name = entry.plugin.clone().unwrap_or_default();
    candidate_files(search, kind, &name)
        .into_iter()
        .next()
        .ok_or_else(|| LoadError::NotFound {
            file: library_file_name(kind, &name),
            searched: if search.0.is_empty() {
                "an empty search path".to_string()
            } else {
                search
                    .0
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            name,
        })
}

fn open_checked(
    entry: &PluginEntry,
    kind: PluginKind,
    search: &SearchPath,
) -> Result<(String, PathBuf), LoadError> {
    let name = entry.label();
    let path = resolve(entry, kind, search)?;
    let desc = read_descriptor(&name, &path)?;
    if PluginKind(desc.kind) != kind {
        return Err(LoadError::WrongKind {
            name,
            path,
            actual: PluginKind(desc.kind),
            expected: kind,
        });
    }
    Ok((name, path))
}

fn constructor_error(name: String, e: PluginError) -> LoadError {
    if e.code == ErrorCode::PANICKED {
        LoadError::ConstructorPanicked {
            name,
            message: e.message.into_string(),
        }
    } else {
        LoadError::Constructor { name, error: e }
    }
}

/// Loads and constructs the backstore a config entry names.
pub fn load_backstore(
    entry: &PluginEntry,
    search: &SearchPath,
) -> Result<LoadedBackstore, LoadError> {
    let (name, path) = open_checked(entry, PluginKind::BACKSTORE, search)?;
    let module = backstore_module(&name, &path)?;
    let details = PluginDetails::from_info((module.info())(), &path);
    tracing::debug!(plugin = %details.name, path = %path.display(), "constructing backstore");
    let options = entry.options_toml();
    match (module.create())(options.as_str().into()).into_result() {
        Ok(inner) => Ok(LoadedBackstore::new(details, inner)),
        Err(e) => Err(constructor_error(name, e)),
    }
}

/// Loads and constructs the watch provider a config entry names.
pub fn load_watch_provider(
    entry: &PluginEntry,
    search: &SearchPath,
) -> Result<LoadedWatchProvider, LoadError> {
    let (name, path) = open_checked(entry, PluginKind::WATCH_PROVIDER, search)?;
    let module = watch_module(&name, &path)?;
    let details = PluginDetails::from_info((module.info())(), &path);
    let options = entry.options_toml();
    match (module.create())(options.as_str().into()).into_result() {
        Ok(inner) => Ok(LoadedWatchProvider::new(details, inner)),
        Err(e) => Err(constructor_error(name, e)),
    }
}
