//! The graph on disk: an SQLite database (`graph.db` in the metadata
//! directory, WAL mode, `synchronous=FULL`) with one row per layer, branch
//! and snapshot, indexed both ways. Every operation touches only the rows
//! it needs (a branch, its chain, a snapshot, the layers that lost their
//! last user), so its cost does not grow with the number of branches; a
//! graph change is one transaction, atomic and durable at its commit.
//!
//! The store's own locks still order the processes (graph changes hold the
//! store lock exclusive, so SQLite never sees two writers); SQLite adds
//! atomicity and crash recovery, not concurrency control.
//!
//! Stores written by earlier versions keep their graph in one JSON file
//! (`store.json`); [`migrate`] turns it into the database once.

use std::{
    ffi::OsStr,
    fs,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    sync::{Mutex, MutexGuard},
};

use rusqlite::{params, Connection, OptionalExtension};

use crate::{
    error::{CoreError, CoreResult},
    graph::{BranchRecord, Graph, LayerRecord, LayerState, SnapshotRecord, FORMAT},
    persist,
};

/// File name of the graph database.
pub const GRAPH_FILE: &str = "graph.db";
/// File name of the graph as earlier versions kept it (read once, to
/// migrate).
pub const LEGACY_GRAPH_FILE: &str = "store.json";
/// Prefix of the database being built by a migration (renamed into place
/// when complete; a crash leaves it to be removed).
const MIGRATION_TEMP: &str = ".graph.db.migrating-";

const SCHEMA: &str = "
CREATE TABLE settings (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    format INTEGER NOT NULL,
    default_base BLOB,
    compact_threshold INTEGER NOT NULL,
    next_layer INTEGER NOT NULL
);
CREATE TABLE layers (
    id TEXT PRIMARY KEY NOT NULL,
    parent TEXT REFERENCES layers(id),
    base BLOB,
    committed INTEGER NOT NULL,
    created INTEGER NOT NULL
);
CREATE INDEX layers_by_parent ON layers(parent);
CREATE TABLE branches (
    name TEXT PRIMARY KEY NOT NULL,
    layer TEXT NOT NULL UNIQUE REFERENCES layers(id),
    created INTEGER NOT NULL,
    from_snapshot TEXT
);
CREATE TABLE snapshots (
    name TEXT PRIMARY KEY NOT NULL,
    layer TEXT NOT NULL REFERENCES layers(id),
    branch TEXT NOT NULL,
    created INTEGER NOT NULL,
    native INTEGER NOT NULL
);
CREATE INDEX snapshots_by_layer ON snapshots(layer);
";

/// The store's settings, as kept in the graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Base of branches created without a snapshot or an explicit base.
    pub default_base: Option<PathBuf>,
    /// Committed-layer depth above which a snapshot compacts the branch.
    pub compact_threshold: u32,
}

/// One open graph database.
pub struct GraphDb {
    conn: Mutex<Connection>,
    path: PathBuf,
}

impl std::fmt::Debug for GraphDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphDb").field("path", &self.path).finish()
    }
}

/// Maps an SQLite error on database `file` to a core error.
fn sql_err(file: &Path) -> impl Fn(rusqlite::Error) -> CoreError + '_ {
    move |e| match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase) => {
            CoreError::Corrupt {
                file: file.to_path_buf(),
                why: e.to_string(),
            }
        }
        _ => CoreError::io(
            format!("graph database {}", file.display()),
            std::io::Error::other(e),
        ),
    }
}

fn blob(p: &Option<PathBuf>) -> Option<&[u8]> {
    p.as_deref().map(|p| p.as_os_str().as_bytes())
}

fn path_of(b: Option<Vec<u8>>) -> Option<PathBuf> {
    b.map(|b| PathBuf::from(OsStr::from_bytes(&b)))
}

/// True when `meta` holds a store, in either format.
pub fn exists(meta: &Path) -> bool {
    meta.join(GRAPH_FILE).exists() || meta.join(LEGACY_GRAPH_FILE).exists()
}

/// Opens connection `path` with the settings every connection uses.
fn connect(path: &Path, create: bool) -> CoreResult<Connection> {
    use rusqlite::OpenFlags as F;
    let mut flags = F::SQLITE_OPEN_READ_WRITE | F::SQLITE_OPEN_NO_MUTEX;
    if create {
        flags |= F::SQLITE_OPEN_CREATE;
    }
    let c = Connection::open_with_flags(path, flags).map_err(sql_err(path))?;
    // Two processes never write at once (the store lock orders them), but
    // SQLite's own short locks (opening the WAL, checkpoints) may meet.
    c.busy_timeout(std::time::Duration::from_secs(30))
        .map_err(sql_err(path))?;
    c.execute_batch("PRAGMA foreign_keys = ON; PRAGMA synchronous = FULL;")
        .map_err(sql_err(path))?;
    Ok(c)
}

impl GraphDb {
    /// Opens the graph in `meta`; `None` when there is none (a store in
    /// the earlier format must be migrated first, see [`migrate`]).
    pub fn open(meta: &Path) -> CoreResult<Option<Self>> {
        let path = meta.join(GRAPH_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let conn = connect(&path, false)?;
        let db = Self {
            conn: Mutex::new(conn),
            path,
        };
        let format: u32 = db.read(|g| {
            g.c.query_row("SELECT format FROM settings", [], |r| r.get(0))
                .map_err(sql_err(&db.path))
        })?;
        if format != FORMAT {
            return Err(CoreError::Corrupt {
                file: db.path.clone(),
                why: format!(
                    "format {format} is not supported (this agentfs reads format {FORMAT})"
                ),
            });
        }
        Ok(Some(db))
    }

    /// Creates the graph of a new, empty store in `meta` (the caller holds
    /// the store lock exclusive and found no graph).
    pub fn create(meta: &Path, settings: &Settings) -> CoreResult<Self> {
        build(
            meta,
            &Graph::new(settings.default_base.clone(), settings.compact_threshold),
        )?;
        Self::open(meta)?.ok_or_else(|| CoreError::Corrupt {
            file: meta.join(GRAPH_FILE),
            why: "vanished right after being created".into(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs read `f` on the graph (its queries each see the committed
    /// graph; the caller's store lock keeps it from changing meanwhile).
    pub fn read<T>(&self, f: impl FnOnce(&GraphTx<'_>) -> CoreResult<T>) -> CoreResult<T> {
        let c = self.conn();
        let g = GraphTx {
            c: &c,
            file: &self.path,
            released: Vec::new(),
        };
        f(&g)
    }

    /// Runs change `f` in one transaction: then drops the layers nothing
    /// uses any more and commits. Returns `f`'s answer and the dropped
    /// layers (to delete from the backstore, now that nothing names them).
    /// If `f` or the commit fails, nothing changes.
    /// `before_commit` runs once everything is in place, just before the
    /// commit.
    pub fn edit<T>(
        &self,
        f: impl FnOnce(&mut GraphTx<'_>) -> CoreResult<T>,
        before_commit: impl FnOnce(),
    ) -> CoreResult<(T, Vec<String>)> {
        let mut c = self.conn();
        let tx = c
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(sql_err(&self.path))?;
        let mut g = GraphTx {
            c: &tx,
            file: &self.path,
            released: Vec::new(),
        };
        let v = f(&mut g)?;
        let dead = g.sweep()?;
        before_commit();
        crate::fault::point("graph-before-commit");
        tx.commit().map_err(sql_err(&self.path))?;
        Ok((v, dead))
    }
}

/// Writes graph `g` as a new database `meta/graph.db`: built under a
/// temporary name in rollback-journal mode, synced, renamed into place,
/// then switched to WAL. The caller holds the store lock exclusive.
fn build(meta: &Path, g: &Graph) -> CoreResult<()> {
    let tmp = meta.join(format!("{MIGRATION_TEMP}{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let result = (|| {
        let mut c = connect(&tmp, true)?;
        let e = sql_err(&tmp);
        let tx = c.transaction().map_err(&e)?;
        tx.execute_batch(SCHEMA).map_err(&e)?;
        tx.execute(
            "INSERT INTO settings VALUES (1, ?1, ?2, ?3, ?4)",
            params![
                FORMAT,
                blob(&g.default_base),
                g.compact_threshold,
                g.next_layer as i64
            ],
        )
        .map_err(&e)?;
        {
            // Parents first: a layer's parent row must exist before it.
            let mut done = std::collections::BTreeSet::new();
            let mut gx = GraphTx {
                c: &tx,
                file: &tmp,
                released: Vec::new(),
            };
            for id in g.layers.keys() {
                for l in g.chain(id).iter().rev() {
                    if done.insert(l.clone()) {
                        gx.put_layer(l, &g.layers[l])?;
                    }
                }
            }
            for (n, b) in &g.branches {
                gx.put_branch(n, b)?;
            }
            for (n, s) in &g.snapshots {
                gx.put_snapshot(n, s)?;
            }
        }
        tx.commit().map_err(&e)?;
        drop(c);
        fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| CoreError::io(format!("sync {}", tmp.display()), e))?;
        crate::fault::point("graph-db-before-rename");
        fs::rename(&tmp, meta.join(GRAPH_FILE))
            .map_err(|e| CoreError::io(format!("rename {}", tmp.display()), e))?;
        fs::File::open(meta)
            .and_then(|f| f.sync_all())
            .map_err(|e| CoreError::io(format!("sync {}", meta.display()), e))?;
        let path = meta.join(GRAPH_FILE);
        let c = connect(&path, false)?;
        c.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0))
            .map_err(sql_err(&path))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Turns a store of the earlier format (`store.json`) into the database,
/// if `meta` holds one and no database yet; true when it did. The caller
/// holds the store lock exclusive. `store.json` is removed once the
/// database is in place; a crash before that leaves both, and the
/// database wins.
pub fn migrate(meta: &Path) -> CoreResult<bool> {
    if meta.join(GRAPH_FILE).exists() {
        return Ok(false);
    }
    let Some(mut g) = persist::load_legacy_graph(meta)? else {
        return Ok(false);
    };
    // The earlier format dropped unused layers at every change; any left
    // (by a crash) go now, so every layer row has a user.
    for id in g.unreferenced_layers() {
        g.layers.remove(&id);
    }
    build(meta, &g)?;
    crate::fault::point("migrate-before-legacy-removal");
    remove_legacy(meta);
    tracing::info!(meta = %meta.display(), branches = g.branches.len(), "migrated store.json to graph.db");
    Ok(true)
}

/// Removes what an earlier format or an interrupted migration left beside
/// a complete database.
pub fn remove_legacy(meta: &Path) {
    if !meta.join(GRAPH_FILE).exists() {
        return;
    }
    let _ = fs::remove_file(meta.join(LEGACY_GRAPH_FILE));
    let Ok(rd) = fs::read_dir(meta) else { return };
    for e in rd.flatten() {
        if e.file_name().to_string_lossy().starts_with(MIGRATION_TEMP) {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// A branch as listed: its record, its base and its committed depth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BranchRow {
    /// Its name.
    pub name: String,
    /// Its record.
    pub record: BranchRecord,
    /// The base under its chain.
    pub base: Option<PathBuf>,
    /// Number of committed layers under its active layer.
    pub depth: usize,
}

/// The graph as one transaction (or one read) sees it.
pub struct GraphTx<'c> {
    c: &'c Connection,
    file: &'c Path,
    /// Layers that lost a user in this transaction: candidates for
    /// [`GraphTx::sweep`].
    released: Vec<String>,
}

fn layer_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<LayerRecord> {
    Ok(LayerRecord {
        parent: r.get(0)?,
        base: path_of(r.get(1)?),
        state: if r.get::<_, bool>(2)? {
            LayerState::Committed
        } else {
            LayerState::Active
        },
        created: r.get::<_, i64>(3)? as u64,
    })
}

impl GraphTx<'_> {
    fn e(&self) -> impl Fn(rusqlite::Error) -> CoreError + '_ {
        sql_err(self.file)
    }

    fn corrupt(&self, why: String) -> CoreError {
        CoreError::Corrupt {
            file: self.file.to_path_buf(),
            why,
        }
    }

    /// The store's settings.
    pub fn settings(&self) -> CoreResult<Settings> {
        self.c
            .prepare_cached("SELECT default_base, compact_threshold FROM settings")
            .and_then(|mut s| {
                s.query_row([], |r| {
                    Ok(Settings {
                        default_base: path_of(r.get(0)?),
                        compact_threshold: r.get(1)?,
                    })
                })
            })
            .map_err(self.e())
    }

    /// Layer `id`, if the graph names it.
    pub fn layer(&self, id: &str) -> CoreResult<Option<LayerRecord>> {
        self.c
            .prepare_cached("SELECT parent, base, committed, created FROM layers WHERE id = ?1")
            .and_then(|mut s| s.query_row([id], layer_row).optional())
            .map_err(self.e())
    }

    /// Layer `id`, which a branch or snapshot names (missing: corrupt).
    pub fn need_layer(&self, id: &str) -> CoreResult<LayerRecord> {
        self.layer(id)?
            .ok_or_else(|| self.corrupt(format!("layer {id} is named but missing")))
    }

    /// Branch `name`, if it exists.
    pub fn branch(&self, name: &str) -> CoreResult<Option<BranchRecord>> {
        self.c
            .prepare_cached("SELECT layer, created, from_snapshot FROM branches WHERE name = ?1")
            .and_then(|mut s| {
                s.query_row([name], |r| {
                    Ok(BranchRecord {
                        layer: r.get(0)?,
                        created: r.get::<_, i64>(1)? as u64,
                        from_snapshot: r.get(2)?,
                    })
                })
                .optional()
            })
            .map_err(self.e())
    }

    /// Snapshot `name`, if it exists.
    pub fn snapshot(&self, name: &str) -> CoreResult<Option<SnapshotRecord>> {
        self.c
            .prepare_cached("SELECT layer, branch, created, native FROM snapshots WHERE name = ?1")
            .and_then(|mut s| {
                s.query_row([name], |r| {
                    Ok(SnapshotRecord {
                        layer: r.get(0)?,
                        branch: r.get(1)?,
                        created: r.get::<_, i64>(2)? as u64,
                        native: r.get(3)?,
                    })
                })
                .optional()
            })
            .map_err(self.e())
    }

    /// The chain from `layer` down to the base: `[layer, parent, ...]`.
    pub fn chain(&self, layer: &str) -> CoreResult<Vec<String>> {
        let mut out = vec![layer.to_string()];
        let mut cur = self.need_layer(layer)?.parent;
        while let Some(id) = cur {
            if out.contains(&id) {
                return Err(self.corrupt(format!("layer {layer}: its chain has a cycle")));
            }
            cur = self.need_layer(&id)?.parent;
            out.push(id);
        }
        Ok(out)
    }

    /// Number of committed layers under branch layer `layer`.
    pub fn committed_depth(&self, layer: &str) -> CoreResult<usize> {
        Ok(self.chain(layer)?.len().saturating_sub(1))
    }

    /// Every branch and snapshot (other than snapshot `except`) whose chain
    /// contains `layer`, as "branch X" / "snapshot Y": a walk down from
    /// `layer` through its children, never the whole graph.
    pub fn dependents(&self, layer: &str, except: Option<&str>) -> CoreResult<Vec<String>> {
        let mut s = self
            .c
            .prepare_cached(
                "WITH RECURSIVE d(id) AS (
                     SELECT ?1 UNION SELECT l.id FROM layers l JOIN d ON l.parent = d.id)
                 SELECT 'branch ' || name FROM
                     (SELECT name FROM branches WHERE layer IN d ORDER BY name)
                 UNION ALL
                 SELECT 'snapshot ' || name FROM
                     (SELECT name FROM snapshots
                      WHERE layer IN d AND name IS NOT ?2 ORDER BY name)",
            )
            .map_err(self.e())?;
        let rows = s
            .query_map(params![layer, except], |r| r.get(0))
            .map_err(self.e())?;
        rows.collect::<Result<_, _>>().map_err(self.e())
    }

    /// Hands out a fresh layer id (`l000001`, ...).
    pub fn alloc_layer_id(&mut self) -> CoreResult<String> {
        let n: i64 = self
            .c
            .query_row(
                "UPDATE settings SET next_layer = next_layer + 1 RETURNING next_layer - 1",
                [],
                |r| r.get(0),
            )
            .map_err(self.e())?;
        Ok(format!("l{n:06}"))
    }

    /// Inserts or updates layer `id`.
    pub fn put_layer(&mut self, id: &str, l: &LayerRecord) -> CoreResult<()> {
        if let Some(old) = self.layer(id)? {
            if old.parent != l.parent {
                self.released.extend(old.parent);
            }
        }
        self.c
            .prepare_cached(
                "INSERT INTO layers (id, parent, base, committed, created)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(id) DO UPDATE SET parent = ?2, base = ?3, committed = ?4,
                     created = ?5",
            )
            .and_then(|mut s| {
                s.execute(params![
                    id,
                    l.parent,
                    blob(&l.base),
                    l.state == LayerState::Committed,
                    l.created as i64
                ])
            })
            .map_err(self.e())?;
        Ok(())
    }

    /// Inserts or updates branch `name`.
    pub fn put_branch(&mut self, name: &str, b: &BranchRecord) -> CoreResult<()> {
        if let Some(old) = self.branch(name)? {
            if old.layer != b.layer {
                self.released.push(old.layer);
            }
        }
        self.c
            .prepare_cached(
                "INSERT INTO branches (name, layer, created, from_snapshot)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(name) DO UPDATE SET layer = ?2, created = ?3, from_snapshot = ?4",
            )
            .and_then(|mut s| s.execute(params![name, b.layer, b.created as i64, b.from_snapshot]))
            .map_err(self.e())?;
        Ok(())
    }

    /// Removes branch `name`; false when it did not exist.
    pub fn remove_branch(&mut self, name: &str) -> CoreResult<bool> {
        let Some(old) = self.branch(name)? else {
            return Ok(false);
        };
        self.c
            .execute("DELETE FROM branches WHERE name = ?1", [name])
            .map_err(self.e())?;
        self.released.push(old.layer);
        Ok(true)
    }

    /// Inserts snapshot `name` (which must not exist).
    pub fn put_snapshot(&mut self, name: &str, s: &SnapshotRecord) -> CoreResult<()> {
        self.c
            .prepare_cached(
                "INSERT INTO snapshots (name, layer, branch, created, native)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .and_then(|mut st| {
                st.execute(params![name, s.layer, s.branch, s.created as i64, s.native])
            })
            .map_err(self.e())?;
        Ok(())
    }

    /// Removes snapshot `name`; false when it did not exist.
    pub fn remove_snapshot(&mut self, name: &str) -> CoreResult<bool> {
        let Some(old) = self.snapshot(name)? else {
            return Ok(false);
        };
        self.c
            .execute("DELETE FROM snapshots WHERE name = ?1", [name])
            .map_err(self.e())?;
        self.released.push(old.layer);
        Ok(true)
    }

    /// Drops the layers that lost their last user (no branch, snapshot or
    /// child layer) in this transaction, and those that lose theirs in
    /// turn. Returns them.
    fn sweep(&mut self) -> CoreResult<Vec<String>> {
        let mut dead = Vec::new();
        while let Some(id) = self.released.pop() {
            let used: bool = self
                .c
                .prepare_cached(
                    "SELECT EXISTS (SELECT 1 FROM branches WHERE layer = ?1)
                         OR EXISTS (SELECT 1 FROM snapshots WHERE layer = ?1)
                         OR EXISTS (SELECT 1 FROM layers WHERE parent = ?1)",
                )
                .and_then(|mut s| s.query_row([&id], |r| r.get(0)))
                .map_err(self.e())?;
            if used {
                continue;
            }
            let Some(l) = self.layer(&id)? else { continue };
            self.c
                .execute("DELETE FROM layers WHERE id = ?1", [&id])
                .map_err(self.e())?;
            self.released.extend(l.parent);
            dead.push(id);
        }
        Ok(dead)
    }

    /// Every branch, sorted by name, with its active layer's base and the
    /// number of committed layers under it: one pass over the branches,
    /// plus one lookup per distinct committed layer they sit on.
    pub fn branch_rows(&self) -> CoreResult<Vec<BranchRow>> {
        let mut s = self
            .c
            .prepare_cached(
                "SELECT b.name, b.layer, b.created, b.from_snapshot, l.base, l.parent
                 FROM branches b JOIN layers l ON l.id = b.layer ORDER BY b.name",
            )
            .map_err(self.e())?;
        let rows = s
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    BranchRecord {
                        layer: r.get(1)?,
                        created: r.get::<_, i64>(2)? as u64,
                        from_snapshot: r.get(3)?,
                    },
                    path_of(r.get(4)?),
                    r.get::<_, Option<String>>(5)?,
                ))
            })
            .map_err(self.e())?
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.e())?;
        let mut depths: std::collections::HashMap<String, usize> = Default::default();
        rows.into_iter()
            .map(|(name, record, base, parent)| {
                let depth = match parent {
                    None => 0,
                    Some(p) => match depths.get(&p) {
                        Some(d) => *d,
                        None => {
                            let d = self.chain(&p)?.len();
                            depths.insert(p, d);
                            d
                        }
                    },
                };
                Ok(BranchRow {
                    name,
                    record,
                    base,
                    depth,
                })
            })
            .collect()
    }

    /// Every snapshot, sorted by name, with its layer's base.
    pub fn snapshot_rows(&self) -> CoreResult<Vec<(String, SnapshotRecord, Option<PathBuf>)>> {
        let mut s = self
            .c
            .prepare_cached(
                "SELECT s.name, s.layer, s.branch, s.created, s.native, l.base
                 FROM snapshots s JOIN layers l ON l.id = s.layer ORDER BY s.name",
            )
            .map_err(self.e())?;
        let rows = s
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    SnapshotRecord {
                        layer: r.get(1)?,
                        branch: r.get(2)?,
                        created: r.get::<_, i64>(3)? as u64,
                        native: r.get(4)?,
                    },
                    path_of(r.get(5)?),
                ))
            })
            .map_err(self.e())?;
        rows.collect::<Result<_, _>>().map_err(self.e())
    }

    /// Every layer id the graph names, sorted.
    pub fn layer_ids(&self) -> CoreResult<Vec<String>> {
        self.strings("SELECT id FROM layers ORDER BY id")
    }

    /// The active layer of every branch.
    pub fn active_layers(&self) -> CoreResult<Vec<String>> {
        self.strings("SELECT layer FROM branches")
    }

    /// True when no branch and no snapshot exists.
    pub fn is_empty(&self) -> CoreResult<bool> {
        self.c
            .query_row(
                "SELECT NOT EXISTS (SELECT 1 FROM branches)
                     AND NOT EXISTS (SELECT 1 FROM snapshots)",
                [],
                |r| r.get(0),
            )
            .map_err(self.e())
    }

    fn strings(&self, sql: &str) -> CoreResult<Vec<String>> {
        let mut s = self.c.prepare_cached(sql).map_err(self.e())?;
        let rows = s.query_map([], |r| r.get(0)).map_err(self.e())?;
        rows.collect::<Result<_, _>>().map_err(self.e())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(parent: Option<&str>, state: LayerState) -> LayerRecord {
        LayerRecord {
            parent: parent.map(str::to_string),
            base: Some(PathBuf::from(OsStr::from_bytes(b"/base/\xff"))),
            state,
            created: 7,
        }
    }

    fn new_db(t: &Path) -> GraphDb {
        GraphDb::create(
            t,
            &Settings {
                default_base: None,
                compact_threshold: 8,
            },
        )
        .unwrap()
    }

    #[test]
    fn records_round_trip_and_sweeps_cascade() {
        let t = tempfile::tempdir().unwrap();
        let db = new_db(t.path());
        let ((), dead) = db
            .edit_now(|g| {
                assert_eq!(g.alloc_layer_id()?, "l000001");
                g.put_layer("l1", &rec(None, LayerState::Committed))?;
                g.put_layer("l2", &rec(Some("l1"), LayerState::Active))?;
                g.put_layer("l3", &rec(Some("l1"), LayerState::Active))?;
                for (n, l) in [("a", "l2"), ("b", "l3")] {
                    g.put_branch(
                        n,
                        &BranchRecord {
                            layer: l.into(),
                            created: 1,
                            from_snapshot: None,
                        },
                    )?;
                }
                g.put_snapshot(
                    "s",
                    &SnapshotRecord {
                        layer: "l1".into(),
                        branch: "a".into(),
                        created: 2,
                        native: false,
                    },
                )
            })
            .unwrap();
        assert!(dead.is_empty());
        let db = GraphDb::open(t.path()).unwrap().unwrap();
        db.read(|g| {
            assert_eq!(g.layer("l2")?, Some(rec(Some("l1"), LayerState::Active)));
            assert_eq!(g.chain("l3")?, ["l3", "l1"]);
            assert_eq!(g.dependents("l1", Some("s"))?, ["branch a", "branch b"]);
            assert_eq!(
                g.dependents("l1", None)?,
                ["branch a", "branch b", "snapshot s"]
            );
            assert_eq!(g.alloc_layer_id_peek(), "l000002");
            let rows = g.branch_rows()?;
            assert_eq!(rows.len(), 2);
            assert_eq!((rows[0].name.as_str(), rows[0].depth), ("a", 1));
            assert_eq!(rows[1].base, rec(None, LayerState::Active).base);
            let snaps = g.snapshot_rows()?;
            assert_eq!(
                (snaps[0].0.as_str(), snaps[0].1.branch.as_str()),
                ("s", "a")
            );
            Ok(())
        })
        .unwrap();
        // The snapshot goes: l1 still has children.
        let (_, dead) = db.edit(|g| g.remove_snapshot("s"), || ()).unwrap();
        assert!(dead.is_empty());
        let (_, dead) = db.edit(|g| g.remove_branch("a"), || ()).unwrap();
        assert_eq!(dead, ["l2"]);
        // The last user of l1 goes: both layers go.
        let (_, mut dead) = db.edit(|g| g.remove_branch("b"), || ()).unwrap();
        dead.sort();
        assert_eq!(dead, ["l1", "l3"]);
        assert!(db.read(|g| g.layer_ids()).unwrap().is_empty());
    }

    #[test]
    fn a_failed_edit_changes_nothing() {
        let t = tempfile::tempdir().unwrap();
        let db = new_db(t.path());
        let e = db
            .edit_now(|g| {
                g.alloc_layer_id()?;
                g.put_layer("l1", &rec(None, LayerState::Active))?;
                Err::<(), _>(CoreError::InvalidArgument("no".into()))
            })
            .unwrap_err();
        assert!(matches!(e, CoreError::InvalidArgument(_)));
        db.read(|g| {
            assert!(g.layer_ids()?.is_empty());
            assert_eq!(g.alloc_layer_id_peek(), "l000001");
            Ok(())
        })
        .unwrap();
        // A branch naming a missing layer is refused by the schema.
        let e = db
            .edit_now(|g| {
                g.put_branch(
                    "x",
                    &BranchRecord {
                        layer: "nope".into(),
                        created: 0,
                        from_snapshot: None,
                    },
                )
            })
            .unwrap_err();
        assert!(e.to_string().contains("FOREIGN KEY"), "{e}");
    }

    #[test]
    fn garbage_is_named_as_corrupt() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join(GRAPH_FILE), vec![b'x'; 8192]).unwrap();
        let e = GraphDb::open(t.path()).unwrap_err();
        assert!(matches!(e, CoreError::Corrupt { .. }), "{e}");
        assert!(e.to_string().contains("graph.db"), "{e}");
    }

    impl GraphDb {
        fn edit_now<T>(
            &self,
            f: impl FnOnce(&mut GraphTx<'_>) -> CoreResult<T>,
        ) -> CoreResult<(T, Vec<String>)> {
            self.edit(f, || ())
        }
    }

    impl GraphTx<'_> {
        fn alloc_layer_id_peek(&self) -> String {
            let n: i64 = self
                .c
                .query_row("SELECT next_layer FROM settings", [], |r| r.get(0))
                .unwrap();
            format!("l{n:06}")
        }
    }
}
