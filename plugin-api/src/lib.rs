//! The AgentFS plugin ABI: the stable contract between the `agentfs` host
//! and backstore and watch-provider plugins.
//!
//! Every plugin library exports three things:
//! - [`PluginDescriptor`] under the C symbol `AGENTFS_PLUGIN_DESCRIPTOR`
//!   (magic, ABI version, kind), which the host reads before anything else so
//!   that a non-plugin, a plugin of the wrong kind or of another ABI version is
//!   refused with a precise message;
//! - [`PluginBuild`] under `AGENTFS_PLUGIN_BUILD`: how the library was built
//!   (its panic strategy), so a plugin whose panics would abort the host is
//!   refused before any of its entry points is called;
//! - an abi_stable root module of its kind ([`backstore::BackstorePluginRef`]
//!   or [`watch::WatchProviderPluginRef`]), whose layout abi_stable checks.
//!
//! All come from one line: [`export_backstore!`] or [`export_watch_provider!`].
//! Plugin libraries are never unloaded (abi_stable leaks them by design).
//!
//! # Versions
//!
//! [`ABI_VERSION`] is what the host compares exactly; it changes only for an
//! incompatible change. The crate's own version (independent of the host's)
//! is what abi_stable compares: same major version loads, and appending a
//! method with a default body bumps the minor version. The compatibility
//! policy is written out in `docs/plugin-authoring.md`.

pub mod backstore;
mod error;
pub mod guard;
pub mod watch;

pub use abi_stable;
pub use error::{ErrorCode, PluginError, PluginResult};

use abi_stable::{
    std_types::{RString, RVec},
    StableAbi,
};

/// The ABI version this crate speaks. Bumped on any incompatible change
/// (a removed or reordered method or field, a changed signature or type);
/// never for an appended method with a default body.
pub const ABI_VERSION: u32 = 1;

/// This crate's version, which abi_stable compares when a plugin loads.
pub const API_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Magic bytes at the start of [`PluginDescriptor`].
pub const DESCRIPTOR_MAGIC: [u8; 8] = *b"AGENTFS\0";

/// Name of the exported descriptor symbol, NUL-terminated for `dlsym`.
pub const DESCRIPTOR_SYMBOL: &[u8] = b"AGENTFS_PLUGIN_DESCRIPTOR\0";

/// The kind of a plugin. Extensible: unknown values are carried through.
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct PluginKind(pub u32);

impl PluginKind {
    /// Stores branch data.
    pub const BACKSTORE: Self = Self(1);
    /// Translates core events into a native watch API's records.
    pub const WATCH_PROVIDER: Self = Self(2);

    /// The kind's name as used in config and output.
    pub fn name(self) -> &'static str {
        match self {
            Self::BACKSTORE => "backstore",
            Self::WATCH_PROVIDER => "watch-provider",
            _ => "unknown",
        }
    }
}

impl std::fmt::Display for PluginKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.name() {
            "unknown" => write!(f, "unknown kind {}", self.0),
            n => f.write_str(n),
        }
    }
}

/// Plain-C descriptor every plugin exports as `AGENTFS_PLUGIN_DESCRIPTOR`.
/// Its layout is frozen forever: magic, then ABI version, then kind.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PluginDescriptor {
    /// Always [`DESCRIPTOR_MAGIC`].
    pub magic: [u8; 8],
    /// The [`ABI_VERSION`] the plugin was built against.
    pub abi_version: u32,
    /// The plugin's [`PluginKind`] value.
    pub kind: u32,
}

impl PluginDescriptor {
    /// The descriptor for a plugin of `kind` built against this crate.
    pub const fn new(kind: PluginKind) -> Self {
        Self {
            magic: DESCRIPTOR_MAGIC,
            abi_version: ABI_VERSION,
            kind: kind.0,
        }
    }
}

/// Name of the exported build-information symbol, NUL-terminated for `dlsym`.
pub const BUILD_SYMBOL: &[u8] = b"AGENTFS_PLUGIN_BUILD\0";

/// Magic bytes at the start of [`PluginBuild`].
pub const BUILD_MAGIC: [u8; 8] = *b"AFSBUILD";

/// How a plugin library was built, exported as `AGENTFS_PLUGIN_BUILD` by the
/// export macros and read by the host before the library's code runs. A
/// separate symbol, because [`PluginDescriptor`]'s layout is frozen; a
/// plugin built before it existed simply lacks it. Layout frozen too:
/// magic, then flags; new facts take new flag bits.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PluginBuild {
    /// Always [`BUILD_MAGIC`].
    pub magic: [u8; 8],
    /// [`PluginBuild::PANIC_ABORT`] and future flags.
    pub flags: u64,
}

impl PluginBuild {
    /// The library was built with `panic = "abort"`: a panic in it kills
    /// the host instead of becoming a `Panicked` error.
    pub const PANIC_ABORT: u64 = 1 << 0;

    /// The record for a library built with the given panic strategy (the
    /// export macros pass `cfg!(panic = "abort")`, evaluated in the plugin).
    pub const fn new(panic_abort: bool) -> Self {
        Self {
            magic: BUILD_MAGIC,
            flags: if panic_abort { Self::PANIC_ABORT } else { 0 },
        }
    }

    /// True when panics in the library abort the process.
    pub const fn panic_aborts(&self) -> bool {
        self.flags & Self::PANIC_ABORT != 0
    }
}

/// Static description of a plugin, returned by the root module's `info()`.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq, Eq)]
pub struct PluginInfo {
    /// Short name used in config (`mock`, `hostfs`, `btrfs`, ...).
    pub name: RString,
    /// The plugin's own version.
    pub version: RString,
    /// Its kind.
    pub kind: PluginKind,
    /// The ABI version it was built against.
    pub abi_version: u32,
    /// One line for people.
    pub description: RString,
    /// Platforms it runs on: `any`, `linux`, `macos`.
    pub platforms: RString,
    /// Capabilities it may offer (an instance reports its actual ones).
    pub capabilities: RVec<RString>,
}

/// Rust-side, `const`-friendly form of [`PluginInfo`] for plugin authors.
#[derive(Clone, Copy, Debug)]
pub struct PluginMeta {
    /// Short name used in config.
    pub name: &'static str,
    /// The plugin's own version (use `env!("CARGO_PKG_VERSION")`).
    pub version: &'static str,
    /// One line for people.
    pub description: &'static str,
    /// `any`, `linux` or `macos`.
    pub platforms: &'static str,
    /// Capabilities it may offer.
    pub capabilities: &'static [&'static str],
}

impl PluginMeta {
    /// Converts to the ABI form.
    pub fn to_info(&self, kind: PluginKind) -> PluginInfo {
        PluginInfo {
            name: self.name.into(),
            version: self.version.into(),
            kind,
            abi_version: ABI_VERSION,
            description: self.description.into(),
            platforms: self.platforms.into(),
            capabilities: self
                .capabilities
                .iter()
                .map(|c| RString::from(*c))
                .collect(),
        }
    }
}

/// Parses a plugin's TOML options into `T`. Give `T`
/// `#[serde(deny_unknown_fields)]` so a misspelt key is a clear error.
///
/// The options arrive as TOML text the host wrote from the `options` table
/// of the plugin's config entry, so a position in that text means nothing
/// to the user: the message names the offending key instead, and the host
/// adds the config file's own line.
pub fn parse_options<T: serde::de::DeserializeOwned>(
    plugin: &str,
    options: &str,
) -> PluginResult<T> {
    toml::from_str(options).map_err(|e| {
        // The line of the options text the error is about (`root = 5`).
        let at = e
            .span()
            .and_then(|r| options.get(..r.start))
            .map(|before| {
                let start = before.rfind('\n').map_or(0, |i| i + 1);
                let end = options[start..]
                    .find('\n')
                    .map_or(options.len(), |i| start + i);
                options[start..end].trim()
            })
            .filter(|l| !l.is_empty())
            .map(|l| format!(" (at `{l}`)"))
            .unwrap_or_default();
        PluginError::invalid(format!(
            "invalid options for plugin '{plugin}': {}{at}",
            e.message().trim_end().replace('\n', " ")
        ))
    })
}

/// Exports a backstore plugin: `export_backstore!(MyPluginDef);` where
/// `MyPluginDef: BackstorePluginDef`. The crate must depend on `abi_stable`.
#[macro_export]
macro_rules! export_backstore {
    ($def:ty) => {
        /// AgentFS plugin descriptor (read by the host before loading).
        #[no_mangle]
        pub static AGENTFS_PLUGIN_DESCRIPTOR: $crate::PluginDescriptor =
            $crate::PluginDescriptor::new($crate::PluginKind::BACKSTORE);

        /// How this library was built (its panic strategy), read by the host.
        #[no_mangle]
        pub static AGENTFS_PLUGIN_BUILD: $crate::PluginBuild =
            $crate::PluginBuild::new(cfg!(panic = "abort"));

        /// abi_stable root module of this backstore plugin.
        #[::abi_stable::export_root_module]
        pub fn agentfs_backstore_root_module() -> $crate::backstore::BackstorePluginRef {
            $crate::backstore::root_module::<$def>()
        }
    };
}

/// Exports a watch-provider plugin: `export_watch_provider!(MyPluginDef);`
/// where `MyPluginDef: WatchProviderPluginDef`. The crate must depend on `abi_stable`.
#[macro_export]
macro_rules! export_watch_provider {
    ($def:ty) => {
        /// AgentFS plugin descriptor (read by the host before loading).
        #[no_mangle]
        pub static AGENTFS_PLUGIN_DESCRIPTOR: $crate::PluginDescriptor =
            $crate::PluginDescriptor::new($crate::PluginKind::WATCH_PROVIDER);

        /// How this library was built (its panic strategy), read by the host.
        #[no_mangle]
        pub static AGENTFS_PLUGIN_BUILD: $crate::PluginBuild =
            $crate::PluginBuild::new(cfg!(panic = "abort"));

        /// abi_stable root module of this watch-provider plugin.
        #[::abi_stable::export_root_module]
        pub fn agentfs_watch_root_module() -> $crate::watch::WatchProviderPluginRef {
            $crate::watch::root_module::<$def>()
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct Opts {
        #[allow(dead_code)]
        root: Option<String>,
    }

    #[test]
    fn unknown_option_keys_are_rejected_with_the_key_named() {
        let e = parse_options::<Opts>("demo", "rot = \"/x\"").unwrap_err();
        assert_eq!(e.code, ErrorCode::INVALID_ARGUMENT);
        assert!(e.message().contains("rot"), "{}", e.message());
        assert!(e.message().contains("demo"));
    }

    #[test]
    fn descriptor_layout_is_frozen() {
        assert_eq!(std::mem::size_of::<PluginDescriptor>(), 16);
        assert_eq!(std::mem::offset_of!(PluginDescriptor, abi_version), 8);
        assert_eq!(std::mem::offset_of!(PluginDescriptor, kind), 12);
    }
}
