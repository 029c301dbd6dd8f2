//! The backstore plugin kind: where branch data lives.
//!
//! A plugin author implements [`BackstoreImpl`] on a Rust type and
//! [`BackstorePluginDef`] on a marker type, then writes one line:
//! `agentfs_plugin_api::export_backstore!(MyPlugin);`.
//! The generated module wraps every call in a panic guard, so a panic in the
//! plugin turns into a [`crate::ErrorCode::PANICKED`] error at the boundary.
//! Authors see only plain Rust types (`PathBuf`, `String`, [`StoreStatus`]);
//! the abi_stable types ([`BackstoreStatus`], `RVec`, `RString`) are the
//! guard layer's business.
// abi_stable 0.11's derive and trait macros generate `*_Ref`/`*_TO` items
// and impls that trip these two lints; they are allowed here and nowhere else.
#![allow(non_local_definitions, non_camel_case_types)]

use std::path::{Path, PathBuf};

use abi_stable::{
    declare_root_module_statics,
    library::RootModule,
    package_version_strings, sabi_trait,
    sabi_types::VersionStrings,
    std_types::{RBox, RResult, RSlice, RStr, RString, RVec},
    StableAbi,
};

use crate::{
    guard::{guard, path_from_bytes, path_to_bytes},
    PluginError, PluginInfo, PluginMeta, PluginResult,
};

/// Capability flags of a backstore instance. Extensible: unknown bits are kept.
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct Capabilities(pub u64);

impl Capabilities {
    /// `reflink` clones files without copying data.
    pub const NATIVE_REFLINK: Self = Self(1 << 0);
    /// `snapshot_layer` makes O(1) native snapshots.
    pub const NATIVE_SNAPSHOTS: Self = Self(1 << 1);
    /// Layers live in RAM; nothing reaches a disk.
    pub const RAM_BACKED: Self = Self(1 << 2);
    /// Layers survive the process (and a restart of the host).
    pub const PERSISTENT: Self = Self(1 << 3);

    /// No capabilities.
    pub const fn empty() -> Self {
        Self(0)
    }
    /// True when every flag of `other` is set here.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
    /// The union of two sets.
    pub const fn with(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
    /// Sets or clears `flag`.
    pub fn set(&mut self, flag: Self, on: bool) {
        if on {
            self.0 |= flag.0
        } else {
            self.0 &= !flag.0
        }
    }
    /// The flag names that are set, in a fixed order.
    pub fn names(self) -> Vec<&'static str> {
        [
            (Self::NATIVE_REFLINK, "native_reflink"),
            (Self::NATIVE_SNAPSHOTS, "native_snapshots"),
            (Self::RAM_BACKED, "ram_backed"),
            (Self::PERSISTENT, "persistent"),
        ]
        .into_iter()
        .filter(|(f, _)| self.contains(*f))
        .map(|(_, n)| n)
        .collect()
    }
}

/// What a backstore reports about its storage, in plain Rust: the type a
/// plugin author returns from [`BackstoreImpl::status`]. The guard layer
/// converts it to the ABI form, [`BackstoreStatus`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreStatus {
    /// Filesystem type under the root (`btrfs`, `xfs`, `ext4`, `tmpfs`, `apfs`, ...).
    pub fs_type: String,
    /// Total bytes of the filesystem holding the layers.
    pub capacity_bytes: u64,
    /// Bytes in use on that filesystem.
    pub used_bytes: u64,
    /// The backstore's root directory.
    pub root: PathBuf,
}

impl From<StoreStatus> for BackstoreStatus {
    fn from(s: StoreStatus) -> Self {
        Self {
            fs_type: s.fs_type.into(),
            capacity_bytes: s.capacity_bytes,
            used_bytes: s.used_bytes,
            root: path_to_bytes(&s.root),
        }
    }
}

/// What a backstore reports about its storage, as it crosses the ABI.
/// Authors return [`StoreStatus`] instead.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq, Eq)]
pub struct BackstoreStatus {
    /// Filesystem type under the root (`btrfs`, `xfs`, `ext4`, `tmpfs`, `apfs`, ...).
    pub fs_type: RString,
    /// Total bytes of the filesystem holding the layers.
    pub capacity_bytes: u64,
    /// Bytes in use on that filesystem.
    pub used_bytes: u64,
    /// The backstore's root directory (OS path bytes).
    pub root: RVec<u8>,
}

/// Defines the ABI trait [`Backstore`] with the methods of its first
/// released shape plus the appended ones passed in. Written as a macro so
/// the `__previous-shape` feature can build the trait without the appended
/// methods (sabi_trait does not carry `#[cfg]` on a method to the code it
/// generates).
macro_rules! backstore_abi_trait {
    ($($appended:tt)*) => {
        /// The ABI trait object every backstore exposes. Paths are OS path bytes.
        /// Plugin authors implement [`BackstoreImpl`] instead; its documentation
        /// holds the lifecycle and threading rules, which are the same here.
        ///
        /// Methods are append-only: a method added after the last one of a
        /// released shape goes after `#[sabi(last_prefix_field)]` and has a default
        /// body answering `Unsupported`, which is what a host sees when it calls it
        /// on a plugin built before the method existed.
        #[sabi_trait]
        pub trait Backstore: Send + Sync {
            /// The capabilities of this instance.
            fn capabilities(&self) -> RResult<Capabilities, PluginError>;
            /// Filesystem type, capacity and usage.
            fn status(&self) -> RResult<BackstoreStatus, PluginError>;
            /// A directory owned by the host for its metadata, on the layers' storage.
            fn metadata_dir(&self) -> RResult<RVec<u8>, PluginError>;
            /// Creates an empty layer directory and returns its path.
            fn create_layer(&self, id: RStr<'_>) -> RResult<RVec<u8>, PluginError>;
            /// Deletes a layer and everything in it.
            fn delete_layer(&self, id: RStr<'_>) -> RResult<(), PluginError>;
            /// The directory of an existing layer.
            fn layer_path(&self, id: RStr<'_>) -> RResult<RVec<u8>, PluginError>;
            /// The ids of every layer present.
            fn list_layers(&self) -> RResult<RVec<RString>, PluginError>;
            /// Native O(1) snapshot of layer `src` as new layer `dst`, or `Unsupported`.
            fn snapshot_layer(
                &self,
                src: RStr<'_>,
                dst: RStr<'_>,
                read_only: bool,
            ) -> RResult<RVec<u8>, PluginError>;
            /// Clones file `src` to the new file `dst` without copying data, or `Unsupported`.
            #[sabi(last_prefix_field)]
            fn reflink(&self, src: RSlice<'_, u8>, dst: RSlice<'_, u8>) -> RResult<(), PluginError>;
            $($appended)*
        }
    };
}

#[cfg(not(feature = "__previous-shape"))]
backstore_abi_trait! {
    /// What the instance reclaimed at start (leftovers of dead processes),
    /// one line each. Appended after the first released shape: a plugin
    /// built before it answers `Unsupported` through this default body.
    fn reclaimed(&self) -> RResult<RVec<RString>, PluginError> {
        RResult::RErr(PluginError::unsupported(
            "this plugin predates reclaimed()",
        ))
    }
}

#[cfg(feature = "__previous-shape")]
backstore_abi_trait! {}

/// The backstore ABI in its first released shape, before any method was
/// appended. abi_stable's layout check accepts a plugin whose vtables have
/// as many fields as the host's or more, never fewer; so the host checks a
/// plugin built for an older shape against this one, and then reaches the
/// appended methods through abi_stable's run-time field accessibility,
/// which answers the default body for a method the plugin's vtable lacks.
#[doc(hidden)]
pub mod first_shape {
    #![allow(missing_docs)]
    use super::*;

    backstore_abi_trait! {}

    /// An owned backstore of the first shape.
    pub type BackstoreBox = Backstore_TO<'static, RBox<()>>;

    /// The root module of the first shape (same fields as today's).
    #[repr(C)]
    #[derive(StableAbi)]
    #[sabi(kind(Prefix(prefix_ref = BackstorePluginRef)))]
    #[sabi(missing_field(panic))]
    pub struct BackstorePlugin {
        /// Static description of the plugin.
        pub info: extern "C" fn() -> PluginInfo,
        /// Builds an instance from the plugin's options.
        #[sabi(last_prefix_field)]
        pub create: extern "C" fn(options: RStr<'_>) -> RResult<BackstoreBox, PluginError>,
    }

    impl RootModule for BackstorePluginRef {
        declare_root_module_statics! {BackstorePluginRef}
        const BASE_NAME: &'static str = "agentfs_backstore";
        const NAME: &'static str = "agentfs backstore plugin";
        const VERSION_STRINGS: VersionStrings = package_version_strings!();
    }
}

/// An owned, type-erased backstore as it crosses the ABI.
pub type BackstoreBox = Backstore_TO<'static, RBox<()>>;

/// Root module of a backstore plugin library.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = BackstorePluginRef)))]
#[sabi(missing_field(panic))]
pub struct BackstorePlugin {
    /// Static description of the plugin.
    pub info: extern "C" fn() -> PluginInfo,
    /// Builds an instance from the plugin's options (a TOML table as text).
    #[sabi(last_prefix_field)]
    pub create: extern "C" fn(options: RStr<'_>) -> RResult<BackstoreBox, PluginError>,
}

impl RootModule for BackstorePluginRef {
    declare_root_module_statics! {BackstorePluginRef}
    const BASE_NAME: &'static str = "agentfs_backstore";
    const NAME: &'static str = "agentfs backstore plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

/// The Rust-side trait a backstore author implements.
///
/// # Lifecycle
///
/// 1. The host loads the library once per process and never unloads it.
/// 2. [`BackstorePluginDef::create`] builds an instance from the options
///    of its config entry (TOML text). It may provision resources (a RAM
///    disk, a directory tree) and should reclaim what dead processes left
///    behind (report that through [`BackstoreImpl::reclaimed`]).
/// 3. The host calls [`capabilities`](Self::capabilities) once and
///    [`metadata_dir`](Self::metadata_dir) to find its store; then, for as
///    long as the process lives, any mix of the layer calls. A layer is
///    created empty, filled by the host through its path, possibly
///    snapshotted or used as a reflink source, and finally deleted. The host
///    never asks for a layer it did not create or list, but it does list
///    layers to delete those a crashed process left (`list_layers` at start).
/// 4. Dropping the instance releases what `create` provisioned. A process
///    that is killed never drops it: `create` in the next process is where
///    leftovers are cleaned.
///
/// # Threads and processes
///
/// Every method may be called from any thread, and calls may overlap (the
/// daemon serves clients concurrently), hence `Send + Sync`: keep no
/// unsynchronised mutable state. The host holds no lock around plugin calls
/// on your behalf.
///
/// Two processes (a daemon and a direct CLI, or two CLIs) may construct
/// instances over the same root at once: `create` must not destroy state
/// it did not create itself, and the layer calls must work through the
/// filesystem alone, without in-memory state shared between instances. A
/// RAM-backed plugin whose storage is private to the instance (`mock`) is
/// the exception and says so in its description.
///
/// # Errors
///
/// Return the [`crate::ErrorCode`] the documentation of each method names;
/// anything else is reported to the user as is. A panic is caught at the
/// boundary and becomes `Panicked`, which the host treats as a bug in the
/// plugin: the command that hit it fails.
pub trait BackstoreImpl: Send + Sync + 'static {
    /// The capabilities of this instance; must agree with behaviour
    /// (`Unsupported` from `reflink`/`snapshot_layer` if and only if the
    /// flag is absent). Called once, right after construction.
    fn capabilities(&self) -> Capabilities;
    /// Filesystem type, capacity and usage, in plain Rust.
    fn status(&self) -> PluginResult<StoreStatus>;
    /// A directory owned by the host for its metadata, on the layers'
    /// storage and not inside any layer. Created by the plugin.
    fn metadata_dir(&self) -> PluginResult<PathBuf>;
    /// Creates an empty layer; `AlreadyExists` if the id is taken.
    fn create_layer(&self, id: &str) -> PluginResult<PathBuf>;
    /// Deletes a layer; `NotFound` if absent.
    fn delete_layer(&self, id: &str) -> PluginResult<()>;
    /// Path of an existing layer; `NotFound` if absent.
    fn layer_path(&self, id: &str) -> PluginResult<PathBuf>;
    /// Ids of every layer present.
    fn list_layers(&self) -> PluginResult<Vec<String>>;
    /// Native snapshot, or `Unsupported` (the default).
    fn snapshot_layer(&self, src: &str, dst: &str, read_only: bool) -> PluginResult<PathBuf> {
        let _ = (src, dst, read_only);
        Err(PluginError::unsupported(
            "this backstore has no native snapshots",
        ))
    }
    /// Reflink `src` to the new file `dst`, or `Unsupported` (the default).
    fn reflink(&self, src: &Path, dst: &Path) -> PluginResult<()> {
        let _ = (src, dst);
        Err(PluginError::unsupported("this backstore has no reflink"))
    }
    /// What `create` reclaimed from dead processes (a RAM store, a probe
    /// directory), one line each, for `agentfs status`. Default: nothing.
    fn reclaimed(&self) -> Vec<String> {
        Vec::new()
    }
}

/// The Rust-side description of a backstore plugin, used by [`crate::export_backstore!`].
pub trait BackstorePluginDef: 'static {
    /// The instance type.
    type Backstore: BackstoreImpl;
    /// Name, version, description, platforms and declared capabilities.
    const META: PluginMeta;
    /// Builds an instance from TOML options.
    fn create(options: &str) -> PluginResult<Self::Backstore>;
}

/// Wraps a [`BackstoreImpl`] so every call is panic-guarded at the ABI.
pub struct Guarded<T>(pub T);

impl<T: BackstoreImpl> Backstore for Guarded<T> {
    fn capabilities(&self) -> RResult<Capabilities, PluginError> {
        guard(|| Ok(self.0.capabilities()))
    }
    fn status(&self) -> RResult<BackstoreStatus, PluginError> {
        guard(|| self.0.status().map(BackstoreStatus::from))
    }
    fn metadata_dir(&self) -> RResult<RVec<u8>, PluginError> {
        guard(|| self.0.metadata_dir().map(|p| path_to_bytes(&p)))
    }
    fn create_layer(&self, id: RStr<'_>) -> RResult<RVec<u8>, PluginError> {
        guard(|| self.0.create_layer(id.as_str()).map(|p| path_to_bytes(&p)))
    }
    fn delete_layer(&self, id: RStr<'_>) -> RResult<(), PluginError> {
        guard(|| self.0.delete_layer(id.as_str()))
    }
    fn layer_path(&self, id: RStr<'_>) -> RResult<RVec<u8>, PluginError> {
        guard(|| self.0.layer_path(id.as_str()).map(|p| path_to_bytes(&p)))
    }
    fn list_layers(&self) -> RResult<RVec<RString>, PluginError> {
        guard(|| {
            self.0
                .list_layers()
                .map(|v| v.into_iter().map(RString::from).collect())
        })
    }
    fn snapshot_layer(
        &self,
        src: RStr<'_>,
        dst: RStr<'_>,
        read_only: bool,
    ) -> RResult<RVec<u8>, PluginError> {
        guard(|| {
            self.0
                .snapshot_layer(src.as_str(), dst.as_str(), read_only)
                .map(|p| path_to_bytes(&p))
        })
    }
    fn reflink(&self, src: RSlice<'_, u8>, dst: RSlice<'_, u8>) -> RResult<(), PluginError> {
        guard(|| {
            self.0.reflink(
                path_from_bytes(src.as_slice()),
                path_from_bytes(dst.as_slice()),
            )
        })
    }
    #[cfg(not(feature = "__previous-shape"))]
    fn reclaimed(&self) -> RResult<RVec<RString>, PluginError> {
        guard(|| Ok(self.0.reclaimed().into_iter().map(RString::from).collect()))
    }
}

/// `info` entry point for plugin `P`.
pub extern "C" fn info_entry<P: BackstorePluginDef>() -> PluginInfo {
    P::META.to_info(crate::PluginKind::BACKSTORE)
}

/// `create` entry point for plugin `P`: parses options, builds, guards panics.
pub extern "C" fn create_entry<P: BackstorePluginDef>(
    options: RStr<'_>,
) -> RResult<BackstoreBox, PluginError> {
    crate::guard::install_plugin_panic_hook();
    guard(|| {
        let inner = P::create(options.as_str())?;
        Ok(Backstore_TO::from_value(
            Guarded(inner),
            abi_stable::sabi_trait::TD_Opaque,
        ))
    })
}

/// Builds the root module for plugin `P` (used by [`crate::export_backstore!`]).
pub fn root_module<P: BackstorePluginDef>() -> BackstorePluginRef {
    use abi_stable::prefix_type::PrefixTypeTrait;
    BackstorePlugin {
        info: info_entry::<P>,
        create: create_entry::<P>,
    }
    .leak_into_prefix()
}
