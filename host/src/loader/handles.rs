//! Host-side handles on constructed plugins, with Rust types at the surface.

use std::path::{Path, PathBuf};

use abi_stable::std_types::{RResult, RSlice, RVec};
use agentfs_plugin_api::{
    backstore::{BackstoreBox, BackstoreStatus, Capabilities},
    guard::{path_from_bytes, path_to_bytes},
    watch::{CoreEvent, EventKind as AbiKind, NativeRecord, WatchApi, WatchProviderBox, WatchSpec},
    ErrorCode, PluginError, PluginResult,
};

use agentfs_core::{
    Event, EventKind, LayerCaps, LayerError, LayerErrorKind, LayerResult, LayerStore,
    LayerStoreStatus,
};

use super::load::PluginDetails;

/// The first plugin panic of this process, as "plugin 'x': method: ...".
static FIRST_PANIC: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// The first panic a plugin method raised in this process (caught at the
/// boundary and returned as a `Panicked` error), if any. Some callers can
/// carry on without a method's answer (a layer listing for cleanup, the
/// capabilities); a panic is still a bug in the plugin, and the command
/// that met one must not report success: the CLI checks this before exiting.
pub fn first_plugin_panic() -> Option<String> {
    FIRST_PANIC.lock().map(|g| g.clone()).unwrap_or(None)
}

/// Notes a `Panicked` answer of `plugin`'s `method`; passes `r` through.
fn note<T>(plugin: &str, method: &str, r: RResult<T, PluginError>) -> PluginResult<T> {
    let r = r.into_result();
    if let Err(e) = &r {
        if e.code == ErrorCode::PANICKED {
            if let Ok(mut g) = FIRST_PANIC.lock() {
                g.get_or_insert_with(|| format!("plugin '{plugin}': {method}: {}", e.message()));
            }
        }
    }
    r
}

fn to_path(b: RVec<u8>) -> PathBuf {
    path_from_bytes(&b).to_path_buf()
}

/// A constructed backstore plugin. Dropping it drops the plugin's instance,
/// which releases what it provisioned.
pub struct LoadedBackstore {
    details: PluginDetails,
    inner: BackstoreBox,
}

impl std::fmt::Debug for LoadedBackstore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedBackstore")
            .field("plugin", &self.details.name)
            .finish()
    }
}

impl LoadedBackstore {
    pub(crate) fn new(details: PluginDetails, inner: BackstoreBox) -> Self {
        Self { details, inner }
    }
    /// What the plugin's `info()` said.
    pub fn details(&self) -> &PluginDetails {
        &self.details
    }
    /// The instance's capabilities (empty, with a warning, if the call failed).
    pub fn capabilities(&self) -> Capabilities {
        note(&self.details.name, "capabilities", self.inner.capabilities()).unwrap_or_else(|e| {
            tracing::warn!(plugin = %self.details.name, error = %e, "capabilities() failed; assuming none");
            Capabilities::empty()
        })
    }
    /// Filesystem type, capacity and usage.
    pub fn status(&self) -> PluginResult<BackstoreStatus> {
        note(&self.details.name, "status", self.inner.status())
    }
    /// The host's metadata directory in the backstore.
    pub fn metadata_dir(&self) -> PluginResult<PathBuf> {
        note(
            &self.details.name,
            "metadata_dir",
            self.inner.metadata_dir(),
        )
        .map(to_path)
    }
    /// Creates an empty layer.
    pub fn create_layer(&self, id: &str) -> PluginResult<PathBuf> {
        note(
            &self.details.name,
            "create_layer",
            self.inner.create_layer(id.into()),
        )
        .map(to_path)
    }
    /// Deletes a layer.
    pub fn delete_layer(&self, id: &str) -> PluginResult<()> {
        note(
            &self.details.name,
            "delete_layer",
            self.inner.delete_layer(id.into()),
        )
    }
    /// Path of an existing layer.
    pub fn layer_path(&self, id: &str) -> PluginResult<PathBuf> {
        note(
            &self.details.name,
            "layer_path",
            self.inner.layer_path(id.into()),
        )
        .map(to_path)
    }
    /// Ids of every layer.
    pub fn list_layers(&self) -> PluginResult<Vec<String>> {
        note(&self.details.name, "list_layers", self.inner.list_layers())
            .map(|v| v.into_iter().map(|s| s.into_string()).collect())
    }
    /// Native snapshot of `src` as `dst`, or `Unsupported`.
    pub fn snapshot_layer(&self, src: &str, dst: &str, read_only: bool) -> PluginResult<PathBuf> {
        note(
            &self.details.name,
            "snapshot_layer",
            self.inner.snapshot_layer(src.into(), dst.into(), read_only),
        )
        .map(to_path)
    }
    /// What the instance reclaimed at start from dead processes, one line
    /// each; empty for a plugin built before the call existed (it answers
    /// `Unsupported`).
    pub fn reclaimed(&self) -> PluginResult<Vec<String>> {
        match note(&self.details.name, "reclaimed", self.inner.reclaimed()) {
            Ok(v) => Ok(v.into_iter().map(|s| s.into_string()).collect()),
            Err(e) if e.is_unsupported() => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }
    /// Reflink `src` to the new file `dst`, or `Unsupported`.
    pub fn reflink(&self, src: &Path, dst: &Path) -> PluginResult<()> {
        let (s, d) = (path_to_bytes(src), path_to_bytes(dst));
        note(
            &self.details.name,
            "reflink",
            self.inner
                .reflink(RSlice::from(s.as_slice()), RSlice::from(d.as_slice())),
        )
    }
}

/// A constructed watch-provider plugin.
pub struct LoadedWatchProvider {
    details: PluginDetails,
    inner: WatchProviderBox,
}

impl std::fmt::Debug for LoadedWatchProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedWatchProvider")
            .field("plugin", &self.details.name)
            .finish()
    }
}

impl LoadedWatchProvider {
    pub(crate) fn new(details: PluginDetails, inner: WatchProviderBox) -> Self {
        Self { details, inner }
    }
    /// What the plugin's `info()` said.
    pub fn details(&self) -> &PluginDetails {
        &self.details
    }
    /// The native API it speaks.
    pub fn api(&self) -> PluginResult<WatchApi> {
        note(&self.details.name, "api", self.inner.api())
    }
    /// Validates and normalises a registration.
    pub fn register(&self, existing: &[WatchSpec], spec: WatchSpec) -> PluginResult<WatchSpec> {
        note(
            &self.details.name,
            "register",
            self.inner.register(RSlice::from(existing), spec),
        )
    }
    /// Records for an event addressed to matching watches.
    pub fn synthesize(
        &self,
        watches: &[WatchSpec],
        event: &CoreEvent,
    ) -> PluginResult<Vec<NativeRecord>> {
        note(
            &self.details.name,
            "synthesize",
            self.inner.synthesize(RSlice::from(watches), event),
        )
        .map(|v| v.into_vec())
    }
    /// Coalesces a burst of records.
    pub fn coalesce(&self, records: Vec<NativeRecord>) -> PluginResult<Vec<NativeRecord>> {
        note(
            &self.details.name,
            "coalesce",
            self.inner.coalesce(records.into()),
        )
        .map(|v| v.into_vec())
    }
    /// Encodes records in native byte layout.
    pub fn encode(&self, records: &[NativeRecord]) -> PluginResult<Vec<u8>> {
        note(
            &self.details.name,
            "encode",
            self.inner.encode(RSlice::from(records)),
        )
        .map(|v| v.into_vec())
    }
}

/// The engine's error for a plugin's: the code becomes the class, the errno
/// and message are kept.
pub fn layer_error(e: PluginError) -> LayerError {
    let kind = match e.code {
        ErrorCode::UNSUPPORTED => LayerErrorKind::Unsupported,
        ErrorCode::CROSS_DEVICE => LayerErrorKind::CrossDevice,
        ErrorCode::NOT_FOUND => LayerErrorKind::NotFound,
        ErrorCode::ALREADY_EXISTS => LayerErrorKind::AlreadyExists,
        ErrorCode::BUSY => LayerErrorKind::Busy,
        ErrorCode::NO_SPACE => LayerErrorKind::NoSpace,
        ErrorCode::READ_ONLY => LayerErrorKind::ReadOnly,
        ErrorCode::PERMISSION_DENIED => LayerErrorKind::PermissionDenied,
        ErrorCode::INVALID_ARGUMENT => LayerErrorKind::InvalidArgument,
        ErrorCode::PANICKED => LayerErrorKind::Internal,
        _ => LayerErrorKind::Io,
    };
    LayerError {
        kind,
        errno: e.errno,
        message: e.to_string(),
    }
}

/// The loaded plugin as the engine's layer store.
impl LayerStore for LoadedBackstore {
    fn name(&self) -> &str {
        &self.details.name
    }
    fn capabilities(&self) -> LayerCaps {
        let c = LoadedBackstore::capabilities(self);
        LayerCaps {
            native_reflink: c.contains(Capabilities::NATIVE_REFLINK),
            native_snapshots: c.contains(Capabilities::NATIVE_SNAPSHOTS),
            ram_backed: c.contains(Capabilities::RAM_BACKED),
            persistent: c.contains(Capabilities::PERSISTENT),
        }
    }
    fn status(&self) -> LayerResult<LayerStoreStatus> {
        let st = LoadedBackstore::status(self).map_err(layer_error)?;
        Ok(LayerStoreStatus {
            root: path_from_bytes(&st.root).to_path_buf(),
            fs_type: st.fs_type.into_string(),
            capacity_bytes: st.capacity_bytes,
            used_bytes: st.used_bytes,
        })
    }
    fn metadata_dir(&self) -> LayerResult<PathBuf> {
        LoadedBackstore::metadata_dir(self).map_err(layer_error)
    }
    fn create_layer(&self, id: &str) -> LayerResult<PathBuf> {
        LoadedBackstore::create_layer(self, id).map_err(layer_error)
    }
    fn delete_layer(&self, id: &str) -> LayerResult<()> {
        LoadedBackstore::delete_layer(self, id).map_err(layer_error)
    }
    fn layer_path(&self, id: &str) -> LayerResult<PathBuf> {
        LoadedBackstore::layer_path(self, id).map_err(layer_error)
    }
    fn list_layers(&self) -> LayerResult<Vec<String>> {
        LoadedBackstore::list_layers(self).map_err(layer_error)
    }
    fn snapshot_layer(&self, src: &str, dst: &str, read_only: bool) -> LayerResult<PathBuf> {
        LoadedBackstore::snapshot_layer(self, src, dst, read_only).map_err(layer_error)
    }
    fn reflink(&self, src: &Path, dst: &Path) -> LayerResult<()> {
        LoadedBackstore::reflink(self, src, dst).map_err(layer_error)
    }
}

/// The plugin ABI's event for one of the engine's, as watch providers
/// receive it (`u64::MAX` for an unknown size).
pub fn abi_event(e: &Event) -> CoreEvent {
    let (kind, to) = match &e.kind {
        EventKind::Created => (AbiKind::CREATED, String::new()),
        EventKind::Removed => (AbiKind::REMOVED, String::new()),
        EventKind::Modified => (AbiKind::MODIFIED, String::new()),
        EventKind::Renamed { to } => (AbiKind::RENAMED, to.to_string()),
        EventKind::AttributesChanged => (AbiKind::ATTRIBUTES_CHANGED, String::new()),
        EventKind::BranchCreated => (AbiKind::BRANCH_CREATED, String::new()),
        EventKind::SnapshotCreated { snapshot } => (AbiKind::SNAPSHOT_CREATED, snapshot.clone()),
    };
    CoreEvent {
        seq: e.seq,
        pid: e.pid,
        kind,
        branch: e.branch.as_str().into(),
        path: e.path.to_string().into(),
        to: to.into(),
        is_dir: e.is_dir,
        size_before: e.size_before.unwrap_or(u64::MAX),
        size_after: e.size_after.unwrap_or(u64::MAX),
    }
}

#[cfg(test)]
mod tests {
    use agentfs_core::BranchPath;

    use super::*;

    fn ev(kind: EventKind, path: &str) -> Event {
        Event {
            seq: 7,
            pid: 42,
            branch: "b".into(),
            kind,
            path: BranchPath::parse(path).unwrap(),
            is_dir: false,
            size_before: Some(1),
            size_after: None,
        }
    }

    #[test]
    fn engine_events_convert_to_the_abi_event() {
        let to = BranchPath::parse("d/y").unwrap();
        let c = abi_event(&ev(EventKind::Renamed { to }, "x"));
        assert_eq!(c.kind, AbiKind::RENAMED);
        assert_eq!((c.path.as_str(), c.to.as_str()), ("x", "d/y"));
        assert_eq!((c.seq, c.size_before, c.size_after), (7, 1, u64::MAX));
        assert_eq!(c.pid, 42);
        let snapshot = EventKind::SnapshotCreated {
            snapshot: "s1".into(),
        };
        let s = abi_event(&ev(snapshot, ""));
        assert_eq!((s.kind, s.to.as_str()), (AbiKind::SNAPSHOT_CREATED, "s1"));
    }
}
