//! The watch-provider plugin kind: pure translators from core
//! events and registrations to a native watch API's records (kqueue, FSEvents,
//! inotify). Delivery to processes is the daemon's and the shim's job.
// abi_stable 0.11's derive and trait macros generate `*_Ref`/`*_TO` items
// and impls that trip these two lints; they are allowed here and nowhere else.
#![allow(non_local_definitions, non_camel_case_types)]

use abi_stable::{
    declare_root_module_statics,
    library::RootModule,
    package_version_strings, sabi_trait,
    sabi_types::VersionStrings,
    std_types::{RBox, RResult, RSlice, RStr, RString, RVec},
    StableAbi,
};

use crate::{guard::guard, PluginError, PluginInfo, PluginMeta, PluginResult};

/// The native watch API a provider speaks. Extensible.
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct WatchApi(pub u32);

impl WatchApi {
    /// BSD/macOS kqueue `EVFILT_VNODE`.
    pub const KQUEUE: Self = Self(agentfs_vocab::api::KQUEUE);
    /// macOS FSEvents streams.
    pub const FSEVENTS: Self = Self(agentfs_vocab::api::FSEVENTS);
    /// Linux inotify.
    pub const INOTIFY: Self = Self(agentfs_vocab::api::INOTIFY);

    /// The API's name.
    pub fn name(self) -> &'static str {
        agentfs_vocab::api::name(self.0)
    }

    /// True when the API's watches follow the watched inode across renames
    /// (kqueue fds, inotify watches), so the watch service rewrites a
    /// watch's path after a `Renamed` event that moves it or an ancestor;
    /// false for path-based APIs (FSEvents).
    pub fn follows_inode(self) -> bool {
        matches!(self, Self::KQUEUE | Self::INOTIFY)
    }
}

/// Kind of a core event. Extensible.
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct EventKind(pub u32);

impl EventKind {
    /// A file, directory or symlink appeared.
    pub const CREATED: Self = Self(1);
    /// An entry was removed.
    pub const REMOVED: Self = Self(2);
    /// File content changed.
    pub const MODIFIED: Self = Self(3);
    /// An entry moved from `path` to `to`.
    pub const RENAMED: Self = Self(4);
    /// Mode, times or xattrs changed.
    pub const ATTRIBUTES_CHANGED: Self = Self(5);
    /// A branch was created (`path` is empty, `branch` names it).
    pub const BRANCH_CREATED: Self = Self(6);
    /// A snapshot was created (`to` names it).
    pub const SNAPSHOT_CREATED: Self = Self(7);
}

/// A core event as providers see it. Paths are branch-relative, `/`-separated,
/// with no leading slash (`""` is the branch root).
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq, Eq)]
pub struct CoreEvent {
    /// Monotonic sequence number (happens-before order).
    pub seq: u64,
    /// Process whose request caused it, or 0 when unknown (FSEvents
    /// `IgnoreSelf`/`MarkSelf` use it).
    pub pid: u32,
    /// What happened.
    pub kind: EventKind,
    /// The branch it happened in.
    pub branch: RString,
    /// The path it happened to (the source, for a rename).
    pub path: RString,
    /// Rename destination or snapshot name; empty otherwise.
    pub to: RString,
    /// True when the entry is a directory.
    pub is_dir: bool,
    /// Size before the change, or `u64::MAX` when unknown.
    pub size_before: u64,
    /// Size after the change, or `u64::MAX` when unknown.
    pub size_after: u64,
}

/// One registered watch, as the daemon's watch service holds it. A watch
/// only ever matches events of its own `branch`.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq, Eq)]
pub struct WatchSpec {
    /// Daemon-assigned id, unique per daemon.
    pub watch_id: u64,
    /// Process that registered it.
    pub pid: u32,
    /// kqueue id / inotify instance / FSEvents stream owner.
    pub instance: u64,
    /// kqueue fd / inotify wd / FSEvents stream id.
    pub handle: u64,
    /// The branch the watching process works in.
    pub branch: RString,
    /// Watched path (branch-relative) or, for FSEvents, the path prefix.
    pub path: RString,
    /// Absolute path at which the process sees the branch root (e.g.
    /// `/Users/me/project`); FSEvents reports paths under it. May be empty
    /// for APIs that report no paths (kqueue) or relative names (inotify).
    pub visible_root: RString,
    /// True when the watched path is a directory.
    pub is_dir: bool,
    /// Native flags requested: kqueue fflags, inotify mask, FSEvents create flags.
    pub flags: u64,
}

/// A record in the native API's terms, addressed to one watch.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq, Eq)]
pub struct NativeRecord {
    /// The watch it is for.
    pub watch_id: u64,
    /// The watch's native handle (kqueue fd, inotify wd, FSEvents stream id),
    /// copied from its [`WatchSpec`] so records encode on their own.
    pub handle: u64,
    /// `seq` of the core event behind it (the latest one after coalescing);
    /// FSEvents reports it as the event id.
    pub seq: u64,
    /// Native flags: `NOTE_*`, `IN_*` or `kFSEventStreamEventFlag*`. For
    /// kqueue and inotify, a record with flags 0 only retires its watch and
    /// is never encoded (FSEvents uses 0, `kFSEventStreamEventFlagNone`, for
    /// directory-level events).
    pub flags: u64,
    /// inotify rename cookie, or 0.
    pub cookie: u32,
    /// inotify: entry name in the watched directory; FSEvents: path as the
    /// process sees it; kqueue: empty.
    pub name: RString,
    /// The watch is gone after this record (IN_IGNORED, IN_ONESHOT, ...).
    pub retire_watch: bool,
}

/// The ABI trait object every watch provider exposes. Authors implement
/// [`WatchProviderImpl`], whose documentation holds the lifecycle and
/// threading rules. Methods are append-only, with default bodies answering
/// `Unsupported` after `#[sabi(last_prefix_field)]`.
#[sabi_trait]
pub trait WatchProvider: Send + Sync {
    /// The native API this provider speaks.
    fn api(&self) -> RResult<WatchApi, PluginError>;
    /// Validates and normalises a registration (e.g. mask rules). Returning a
    /// spec with the `watch_id` of one of `existing` means "update that watch"
    /// (inotify `IN_MASK_ADD`, kqueue `EV_ADD` on a registered fd).
    fn register(
        &self,
        existing: RSlice<'_, WatchSpec>,
        spec: WatchSpec,
    ) -> RResult<WatchSpec, PluginError>;
    /// Records for `event`: the provider picks, among the candidate
    /// `watches`, those of the event's branch whose path matches, and returns
    /// their records in happens-before order.
    fn synthesize(
        &self,
        watches: RSlice<'_, WatchSpec>,
        event: &CoreEvent,
    ) -> RResult<RVec<NativeRecord>, PluginError>;
    /// Coalesces a burst of queued records for one watcher, preserving order.
    fn coalesce(&self, records: RVec<NativeRecord>) -> RResult<RVec<NativeRecord>, PluginError>;
    /// Encodes records in the native byte layout (e.g. `struct inotify_event`).
    #[sabi(last_prefix_field)]
    fn encode(&self, records: RSlice<'_, NativeRecord>) -> RResult<RVec<u8>, PluginError>;
}

/// An owned, type-erased watch provider as it crosses the ABI.
pub type WatchProviderBox = WatchProvider_TO<'static, RBox<()>>;

/// Root module of a watch-provider plugin library.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = WatchProviderPluginRef)))]
#[sabi(missing_field(panic))]
pub struct WatchProviderPlugin {
    /// Static description of the plugin.
    pub info: extern "C" fn() -> PluginInfo,
    /// Builds an instance from the plugin's options (a TOML table as text).
    #[sabi(last_prefix_field)]
    pub create: extern "C" fn(options: RStr<'_>) -> RResult<WatchProviderBox, PluginError>,
}

impl RootModule for WatchProviderPluginRef {
    declare_root_module_statics! {WatchProviderPluginRef}
    const BASE_NAME: &'static str = "agentfs_watch";
    const NAME: &'static str = "agentfs watch-provider plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

/// The Rust-side trait a watch-provider author implements.
///
/// # Lifecycle
///
/// A provider is a pure translator: it owns no file descriptors and sees no
/// file system. The daemon's watch service loads it once per daemon process
/// (one instance per configured provider) and, for every process that uses
/// the provider's native API:
///
/// 1. [`register`](Self::register) when the process adds a watch (an
///    `inotify_add_watch`, a kqueue `EV_ADD`, an FSEvents stream): the
///    provider validates and normalises the spec, or returns the `watch_id`
///    of an existing watch to mean "update that one";
/// 2. [`synthesize`](Self::synthesize) for every core event of the watch's
///    branch, with the candidate watches, in the events' order;
/// 3. [`coalesce`](Self::coalesce) on the records queued for one watcher
///    before delivery, and [`encode`](Self::encode) to produce the bytes the
///    process reads.
///
/// A watch ends when a record says `retire_watch` or its process goes away;
/// the service forgets it, the provider keeps no per-watch state.
///
/// # Threads and processes
///
/// Calls may come from any thread and overlap (one daemon serves many
/// clients), hence `Send + Sync`; every call carries all the state it needs,
/// so keep none between calls. Each daemon process has its own instance;
/// the CLI (`agentfs watch --native`) and the conformance suite construct
/// their own too. Two instances never share anything.
pub trait WatchProviderImpl: Send + Sync + 'static {
    /// The native API.
    fn api(&self) -> WatchApi;
    /// Validates and normalises a registration.
    fn register(&self, existing: &[WatchSpec], spec: WatchSpec) -> PluginResult<WatchSpec>;
    /// Records for `event` addressed to the matching `watches` (same branch,
    /// matching path), in happens-before order.
    fn synthesize(
        &self,
        watches: &[WatchSpec],
        event: &CoreEvent,
    ) -> PluginResult<Vec<NativeRecord>>;
    /// Coalesces a burst of queued records, preserving order.
    fn coalesce(&self, records: Vec<NativeRecord>) -> PluginResult<Vec<NativeRecord>>;
    /// Encodes records in the native byte layout.
    fn encode(&self, records: &[NativeRecord]) -> PluginResult<Vec<u8>>;
}

/// The Rust-side description of a watch-provider plugin.
pub trait WatchProviderPluginDef: 'static {
    /// The instance type.
    type Provider: WatchProviderImpl;
    /// Name, version, description, platforms and declared capabilities.
    const META: PluginMeta;
    /// Builds an instance from TOML options.
    fn create(options: &str) -> PluginResult<Self::Provider>;
}

/// Wraps a [`WatchProviderImpl`] so every call is panic-guarded at the ABI.
pub struct GuardedProvider<T>(pub T);

impl<T: WatchProviderImpl> WatchProvider for GuardedProvider<T> {
    fn api(&self) -> RResult<WatchApi, PluginError> {
        guard(|| Ok(self.0.api()))
    }
    fn register(
        &self,
        existing: RSlice<'_, WatchSpec>,
        spec: WatchSpec,
    ) -> RResult<WatchSpec, PluginError> {
        guard(|| self.0.register(existing.as_slice(), spec))
    }
    fn synthesize(
        &self,
        watches: RSlice<'_, WatchSpec>,
        event: &CoreEvent,
    ) -> RResult<RVec<NativeRecord>, PluginError> {
        guard(|| self.0.synthesize(watches.as_slice(), event).map(RVec::from))
    }
    fn coalesce(&self, records: RVec<NativeRecord>) -> RResult<RVec<NativeRecord>, PluginError> {
        guard(|| self.0.coalesce(records.into_vec()).map(RVec::from))
    }
    fn encode(&self, records: RSlice<'_, NativeRecord>) -> RResult<RVec<u8>, PluginError> {
        guard(|| self.0.encode(records.as_slice()).map(RVec::from))
    }
}

/// `info` entry point for plugin `P`.
pub extern "C" fn info_entry<P: WatchProviderPluginDef>() -> PluginInfo {
    P::META.to_info(crate::PluginKind::WATCH_PROVIDER)
}

/// `create` entry point for plugin `P`.
pub extern "C" fn create_entry<P: WatchProviderPluginDef>(
    options: RStr<'_>,
) -> RResult<WatchProviderBox, PluginError> {
    crate::guard::install_plugin_panic_hook();
    guard(|| {
        let inner = P::create(options.as_str())?;
        Ok(WatchProvider_TO::from_value(
            GuardedProvider(inner),
            abi_stable::sabi_trait::TD_Opaque,
        ))
    })
}

/// Builds the root module for plugin `P` (used by [`crate::export_watch_provider!`]).
pub fn root_module<P: WatchProviderPluginDef>() -> WatchProviderPluginRef {
    use abi_stable::prefix_type::PrefixTypeTrait;
    WatchProviderPlugin {
        info: info_entry::<P>,
        create: create_entry::<P>,
    }
    .leak_into_prefix()
}
