//! The host's TOML configuration: the plugin list and the plugin search path.
//!
//! ```toml
//! plugin_path = ["/usr/lib/agentfs/plugins"]   # optional, extra search dirs
//!
//! [backstore]
//! plugin = "hostfs"              # a name to discover, or `path = "..."`
//! options = { root = "/var/lib/agentfs" }
//!
//! [[watch]]
//! plugin = "inotify"
//! ```
//! Unknown keys and bad values are errors naming the file, the line and what
//! was expected. Relative paths in `plugin_path` and `path` are relative to
//! the config file's directory.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The configuration compiled into the binary, used when none is given.
pub const EMBEDDED_DEFAULT: &str = include_str!("default-config.toml");

/// Where the effective configuration came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// The embedded default.
    Embedded,
    /// A file given with `--config` or `AGENTFS_CONFIG`.
    File(PathBuf),
}

impl std::fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Embedded => f.write_str("<embedded default config>"),
            Self::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// A configuration error: file, line and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config {path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A backstore setting from the command line or environment is wrong.
    #[error("{what}: {message}")]
    Override {
        /// The flag or variable.
        what: String,
        /// What was wrong.
        message: String,
    },
    /// The file is not valid TOML or does not match the schema.
    #[error("config {source_name}:{line}: {message}")]
    Invalid {
        /// The file (or the embedded default).
        source_name: ConfigSource,
        /// 1-based line of the offending item (0 when unknown).
        line: usize,
        /// What was wrong and what was expected.
        message: String,
    },
}

/// Backstore settings from the command line or the environment, which win
/// over the configuration file: a plugin name
/// or library path, a TOML table of options, and `KEY=VALUE` options.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BackstoreOverride {
    /// `--backstore` / `AGENTFS_BACKSTORE`: a plugin name, or a path to its
    /// library (anything with a `/`).
    pub plugin: Option<String>,
    /// `AGENTFS_BACKSTORE_OPTIONS`: options as a TOML table body, e.g.
    /// `ramdisk = { size_mb = 512 }`.
    pub options_toml: Option<String>,
    /// `--backstore-option KEY=VALUE` (repeatable): dotted keys reach into
    /// tables (`ramdisk.size_mb=512`); a value that parses as TOML is taken
    /// as such (`512`, `true`, `"x"`, `{ a = 1 }`), anything else as a string.
    pub options: Vec<String>,
}

impl BackstoreOverride {
    /// True when it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.plugin.is_none() && self.options_toml.is_none() && self.options.is_empty()
    }
}

/// Parses one `KEY=VALUE` backstore option into its key path and value.
pub fn parse_option_assignment(text: &str) -> Result<(Vec<String>, toml::Value), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected KEY=VALUE"))?;
    let path: Vec<String> = key
        .trim()
        .split('.')
        .map(|k| k.trim().to_string())
        .collect();
    if path.iter().any(|k| k.is_empty()) {
        return Err(format!("{text:?}: empty key"));
    }
    let value = value.trim();
    let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"));
    Ok((
        path,
        parsed.unwrap_or_else(|| toml::Value::String(value.to_string())),
    ))
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let (last, parents) = path.split_last().expect("a key has at least one part");
    let mut t = table;
    for p in parents {
        let entry = t
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        t = entry
            .as_table_mut()
            .ok_or_else(|| format!("{}: {p} is not a table", path.join(".")))?;
    }
    t.insert(last.clone(), value);
    Ok(())
}

/// One plugin entry: a name to discover or an explicit path, plus options.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PluginEntry {
    /// Name to discover (`mock`, `hostfs`, ...).
    pub plugin: Option<String>,
    /// Explicit path to the plugin library.
    pub path: Option<PathBuf>,
    /// The plugin's own options, handed to it as TOML.
    #[serde(default)]
    pub options: toml::Table,
}

impl PluginEntry {
    /// An entry naming a plugin with no options.
    pub fn named(name: &str) -> Self {
        Self {
            plugin: Some(name.to_string()),
            path: None,
            options: toml::Table::new(),
        }
    }

    /// A label for messages: the name, else the path.
    pub fn label(&self) -> String {
        match (&self.plugin, &self.path) {
            (Some(n), _) => n.clone(),
            (None, Some(p)) => p.display().to_string(),
            (None, None) => "<unnamed>".to_string(),
        }
    }

    /// The options as TOML text for the plugin's constructor.
    pub fn options_toml(&self) -> String {
        toml::to_string(&self.options).unwrap_or_default()
    }
}

/// The host configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Extra directories searched for plugins, after the executable's
    /// directory, its `../lib/agentfs/plugins` and `AGENTFS_PLUGIN_PATH`.
    #[serde(default)]
    pub plugin_path: Vec<PathBuf>,
    /// The one backstore.
    pub backstore: PluginEntry,
    /// Any number of watch providers.
    #[serde(default)]
    pub watch: Vec<PluginEntry>,
    /// Where the configuration came from.
    #[serde(skip, default = "embedded")]
    pub source: ConfigSource,
    /// Where each entry's options were written, for messages about them.
    #[serde(skip)]
    pub options_lines: OptionsLines,
}

/// The 1-based lines of the config text where the backstore's and each
/// watch provider's `options` are written (the `options =` key or the
/// `[backstore.options]` / `[watch.options]` header), `None` when absent
/// or, for the backstore, when the command line or environment set them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OptionsLines {
    /// The backstore's options.
    pub backstore: Option<usize>,
    /// Each `[[watch]]` entry's options, in order.
    pub watch: Vec<Option<usize>>,
}

impl OptionsLines {
    /// Finds the lines by scanning the text section by section.
    fn scan(text: &str) -> Self {
        #[derive(PartialEq)]
        enum Section {
            Backstore,
            Watch,
            Other,
        }
        let mut out = Self::default();
        let mut section = Section::Other;
        for (i, line) in text.lines().enumerate() {
            let l = line.trim_start();
            let n = i + 1;
            if l.starts_with('[') {
                let header: String = l.chars().filter(|c| !c.is_whitespace()).collect();
                section = Section::Other;
                if header.starts_with("[[watch]]") {
                    out.watch.push(None);
                    section = Section::Watch;
                } else if header.starts_with("[backstore.options]") {
                    out.backstore.get_or_insert(n);
                } else if header.starts_with("[watch.options]") {
                    if let Some(w) = out.watch.last_mut() {
                        w.get_or_insert(n);
                    }
                } else if header.starts_with("[backstore]") {
                    section = Section::Backstore;
                }
                continue;
            }
            let is_options = l
                .strip_prefix("options")
                .is_some_and(|r| r.trim_start().starts_with('='));
            if !is_options {
                continue;
            }
            match section {
                Section::Backstore => {
                    out.backstore.get_or_insert(n);
                }
                Section::Watch => {
                    if let Some(w) = out.watch.last_mut() {
                        w.get_or_insert(n);
                    }
                }
                Section::Other => {}
            }
        }
        out
    }
}

fn embedded() -> ConfigSource {
    ConfigSource::Embedded
}

impl Config {
    /// Parses configuration text; `source` is used in messages and to
    /// resolve relative paths.
    pub fn parse(text: &str, source: ConfigSource) -> Result<Self, ConfigError> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
                .unwrap_or(0);
            ConfigError::Invalid {
                source_name: source.clone(),
                line,
                message: e.message().trim().replace('\n', " "),
            }
        })?;
        cfg.source = source;
        cfg.options_lines = OptionsLines::scan(text);
        cfg.validate(text)?;
        cfg.resolve_relative_paths();
        Ok(cfg)
    }

    /// Loads the file, or the embedded default when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        match path {
            None => Self::parse(EMBEDDED_DEFAULT, ConfigSource::Embedded),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_path_buf(),
                    source,
                })?;
                Self::parse(&text, ConfigSource::File(p.to_path_buf()))
            }
        }
    }

    /// Applies backstore settings from the command line or environment:
    /// a different plugin starts from no options; then the TOML options,
    /// then each `KEY=VALUE`, are merged in.
    pub fn apply_backstore_override(&mut self, o: &BackstoreOverride) -> Result<(), ConfigError> {
        if let Some(p) = &o.plugin {
            let entry = if p.contains('/') {
                PluginEntry {
                    plugin: None,
                    path: Some(PathBuf::from(p)),
                    options: toml::Table::new(),
                }
            } else if p.is_empty() {
                return Err(ConfigError::Override {
                    what: "--backstore".into(),
                    message: "empty plugin name".into(),
                });
            } else {
                PluginEntry::named(p)
            };
            if entry.plugin != self.backstore.plugin || entry.path != self.backstore.path {
                self.backstore = entry;
            }
        }
        if o.plugin.is_some() || o.options_toml.is_some() || !o.options.is_empty() {
            // Options from the command line or the environment: no line.
            self.options_lines.backstore = None;
        }
        if let Some(text) = &o.options_toml {
            let t: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Override {
                what: "AGENTFS_BACKSTORE_OPTIONS".into(),
                message: format!(
                    "not a TOML table ({}); e.g. root = \"/srv/agentfs\"",
                    e.message().trim()
                ),
            })?;
            for (k, v) in t {
                self.backstore.options.insert(k, v);
            }
        }
        for a in &o.options {
            let bad = |message: String| ConfigError::Override {
                what: "--backstore-option".into(),
                message,
            };
            let (path, value) = parse_option_assignment(a).map_err(bad)?;
            set_path(&mut self.backstore.options, &path, value).map_err(bad)?;
        }
        Ok(())
    }

    /// Where the options of the backstore (`None`) or of watch entry
    /// `Some(i)` were written: `FILE:LINE`, for messages.
    pub fn options_location(&self, watch: Option<usize>) -> Option<String> {
        let line = match watch {
            None => self.options_lines.backstore,
            Some(i) => self.options_lines.watch.get(i).copied().flatten(),
        }?;
        Some(format!("{}:{line}", self.source))
    }

    fn validate(&self, text: &str) -> Result<(), ConfigError> {
        let line_of = |needle: &str| {
            text.lines()
                .position(|l| l.trim_start().starts_with(needle))
                .map(|i| i + 1)
                .unwrap_or(0)
        };
        let check = |e: &PluginEntry, section: &str| -> Result<(), ConfigError> {
            let msg = match (&e.plugin, &e.path) {
                (None, None) => "expected `plugin = \"NAME\"` or `path = \"FILE\"`",
                (Some(_), Some(_)) => "give either `plugin` or `path`, not both",
                (Some(n), None) if n.is_empty() || n.contains('/') => {
                    "`plugin` must be a plain name (use `path` for a file)"
                }
                _ => return Ok(()),
            };
            Err(ConfigError::Invalid {
                source_name: self.source.clone(),
                line: line_of(section),
                message: format!("[{}]: {msg}", section.trim_matches(['[', ']'])),
            })
        };
        check(&self.backstore, "[backstore")?;
        for w in &self.watch {
            check(w, "[[watch")?;
        }
        Ok(())
    }

    fn resolve_relative_paths(&mut self) {
        let ConfigSource::File(file) = &self.source else {
            return;
        };
        let Some(dir) = file.parent() else { return };
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        };
        self.plugin_path.iter_mut().for_each(fix);
        if let Some(p) = self.backstore.path.as_mut() {
            fix(p)
        }
        for w in &mut self.watch {
            if let Some(p) = w.path.as_mut() {
                fix(p)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> ConfigSource {
        ConfigSource::File(PathBuf::from("/etc/agentfs/test.toml"))
    }

    #[test]
    fn embedded_default_parses() {
        let c = Config::load(None).unwrap();
        assert_eq!(c.backstore.plugin.as_deref(), Some("hostfs"));
        assert_eq!(c.source, ConfigSource::Embedded);
    }

    #[test]
    fn unknown_keys_name_file_line_and_expected() {
        let text = "[backstore]\nplugin = \"mock\"\nplguin_path = []\n";
        let e = Config::parse(text, file()).unwrap_err().to_string();
        assert!(e.starts_with("config /etc/agentfs/test.toml:3: "), "{e}");
        assert!(e.contains("plguin_path") && e.contains("expected"), "{e}");
    }

    #[test]
    fn bad_values_are_rejected_with_the_line() {
        let text = "plugin_path = 7\n[backstore]\nplugin = \"mock\"\n";
        let e = Config::parse(text, file()).unwrap_err().to_string();
        assert!(e.contains(":1: ") && e.contains("expected"), "{e}");
        let text = "[backstore]\nplugin = \"mock\"\npath = \"x.so\"\n";
        let e = Config::parse(text, file()).unwrap_err().to_string();
        assert!(e.contains(":1: ") && e.contains("not both"), "{e}");
        let e = Config::parse("[[watch]]\nplugin='x'\n", file())
            .unwrap_err()
            .to_string();
        assert!(e.contains("backstore"), "{e}");
    }

    #[test]
    fn relative_paths_resolve_against_the_config_dir() {
        let text = "plugin_path = [\"p\"]\n[backstore]\npath = \"lib/x.so\"\n";
        let c = Config::parse(text, file()).unwrap();
        assert_eq!(c.plugin_path, vec![PathBuf::from("/etc/agentfs/p")]);
        assert_eq!(
            c.backstore.path.unwrap(),
            PathBuf::from("/etc/agentfs/lib/x.so")
        );
    }

    #[test]
    fn daemon_backstore_config_parsing() {
        let text = "[backstore]\nplugin = \"hostfs\"\noptions = { root = \"/srv/a\" }\n";
        // Options for the same plugin merge into the file's.
        let mut c = Config::parse(text, file()).unwrap();
        c.apply_backstore_override(&BackstoreOverride {
            plugin: Some("hostfs".into()),
            options_toml: Some("extra = 1".into()),
            options: vec!["root=/srv/b".into()],
        })
        .unwrap();
        assert_eq!(c.backstore.plugin.as_deref(), Some("hostfs"));
        assert_eq!(c.backstore.options["root"].as_str(), Some("/srv/b"));
        assert_eq!(c.backstore.options["extra"].as_integer(), Some(1));
        // Another plugin starts from its own options only; values are typed.
        let mut c = Config::parse(text, file()).unwrap();
        c.apply_backstore_override(&BackstoreOverride {
            plugin: Some("btrfs".into()),
            options_toml: None,
            options: vec!["ramdisk.size_mb=512".into(), "flag = true".into()],
        })
        .unwrap();
        assert_eq!(
            c.backstore.options_toml(),
            "flag = true\n\n[ramdisk]\nsize_mb = 512\n"
        );
        // A path.
        c.apply_backstore_override(&BackstoreOverride {
            plugin: Some("./lib/libagentfs_backstore_x.so".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.backstore.plugin, None);
        assert!(c.backstore.options.is_empty());
        // Mistakes are named.
        for (o, needle) in [
            (
                BackstoreOverride {
                    options: vec!["novalue".into()],
                    ..Default::default()
                },
                "expected KEY=VALUE",
            ),
            (
                BackstoreOverride {
                    options: vec!["a..b=1".into()],
                    ..Default::default()
                },
                "empty key",
            ),
            (
                BackstoreOverride {
                    options: vec!["root=/x".into(), "root.sub=1".into()],
                    ..Default::default()
                },
                "not a table",
            ),
            (
                BackstoreOverride {
                    options_toml: Some("root = ".into()),
                    ..Default::default()
                },
                "AGENTFS_BACKSTORE_OPTIONS: not a TOML table",
            ),
        ] {
            let mut c = Config::parse(text, file()).unwrap();
            let e = c.apply_backstore_override(&o).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
    }

    #[test]
    fn options_are_passed_through_as_toml() {
        let text = "[backstore]\nplugin = \"hostfs\"\noptions = { root = \"/srv/a\" }\n";
        let c = Config::parse(text, file()).unwrap();
        assert_eq!(c.backstore.options_toml().trim(), "root = \"/srv/a\"");
    }
}
