//! Deleting layers nothing uses any more. Several processes may share a
//! store, and layers become dead in one process and are found orphaned by
//! another (which deletes them at its next open): both may try to delete
//! the same layer. Losing that race is normal and logs at debug level;
//! only a layer that is still there after a failed delete is worth a
//! warning.

use crate::layer_store::{LayerErrorKind, LayerStore};

/// Deletes layer `id`, which nothing uses. `what` says why it is deleted,
/// for the log. Never fails: a layer left behind is deleted at the next
/// open.
pub(crate) fn delete_unused(backstore: &dyn LayerStore, id: &str, what: &str) {
    let e = match backstore.delete_layer(id) {
        Ok(()) => return,
        Err(e) => e,
    };
    let gone = e.kind == LayerErrorKind::NotFound
        || matches!(backstore.layer_path(id), Err(p) if p.kind == LayerErrorKind::NotFound);
    if gone {
        tracing::debug!(layer = %id, error = %e, "{what}: another process deleted it first");
    } else {
        tracing::warn!(layer = %id, error = %e, "{what}: could not delete it; it will be retried at the next open");
    }
}

#[cfg(test)]
mod tests {
    use std::{
        path::PathBuf,
        sync::{
            atomic::{AtomicUsize, Ordering},
            Arc, Mutex,
        },
    };

    use tracing::{span, Event, Level, Metadata, Subscriber};

    use super::*;
    use crate::layer_store::{LayerCaps, LayerError, LayerResult, LayerStoreStatus};

    /// Counts events at WARN or above.
    struct Warnings(Arc<AtomicUsize>);

    impl Subscriber for Warnings {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
            span::Id::from_u64(1)
        }
        fn record(&self, _: &span::Id, _: &span::Record<'_>) {}
        fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}
        fn event(&self, e: &Event<'_>) {
            if *e.metadata().level() <= Level::WARN {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        fn enter(&self, _: &span::Id) {}
        fn exit(&self, _: &span::Id) {}
    }

    /// A layer store whose one layer vanishes while it is being deleted
    /// (another process removed it first), or never goes (`stuck`).
    #[derive(Debug)]
    struct Racing {
        present: Mutex<bool>,
        stuck: bool,
    }

    impl LayerStore for Racing {
        fn name(&self) -> &str {
            "racing"
        }
        fn capabilities(&self) -> LayerCaps {
            LayerCaps::default()
        }
        fn status(&self) -> LayerResult<LayerStoreStatus> {
            Ok(LayerStoreStatus::default())
        }
        fn metadata_dir(&self) -> LayerResult<PathBuf> {
            Ok(PathBuf::from("/nonexistent"))
        }
        fn create_layer(&self, _: &str) -> LayerResult<PathBuf> {
            Err(LayerError::unsupported("create"))
        }
        fn delete_layer(&self, id: &str) -> LayerResult<()> {
            // Half way through, the other process's delete wins: a child
            // entry is gone (ENOENT surfaces as a plain I/O error).
            *self.present.lock().unwrap() = self.stuck;
            Err(LayerError {
                kind: LayerErrorKind::Io,
                errno: libc::ENOENT,
                message: format!("remove layer {id}: directory vanished"),
            })
        }
        fn layer_path(&self, id: &str) -> LayerResult<PathBuf> {
            if *self.present.lock().unwrap() {
                Ok(PathBuf::from("/nonexistent").join(id))
            } else {
                Err(LayerError::new(LayerErrorKind::NotFound, id.to_string()))
            }
        }
        fn list_layers(&self) -> LayerResult<Vec<String>> {
            Ok(vec![])
        }
    }

    fn warnings_deleting(stuck: bool) -> usize {
        let n = Arc::new(AtomicUsize::new(0));
        let b = Racing {
            present: Mutex::new(true),
            stuck,
        };
        tracing::subscriber::with_default(Warnings(n.clone()), || {
            delete_unused(&b, "l7", "orphan layer")
        });
        n.load(Ordering::Relaxed)
    }

    #[test]
    fn the_loser_of_a_race_to_delete_a_layer_logs_no_warning() {
        assert_eq!(warnings_deleting(false), 0);
    }

    #[test]
    fn a_layer_that_stays_after_a_failed_delete_is_a_warning() {
        assert_eq!(warnings_deleting(true), 1);
    }
}
