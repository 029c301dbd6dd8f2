//! The store's graph operations: branches, snapshots, compaction. Each is
//! one exclusive graph change (see `Store::edit_graph`).

use super::*;

impl Store {
    // ----- branches -----

    /// Creates branch `name`: over snapshot `from`, else over `base`, else
    /// over the store's default base. O(1): one empty layer, no copying.
    pub fn create_branch(
        &self,
        name: &str,
        from: Option<&str>,
        base: Option<&Path>,
    ) -> CoreResult<BranchInfo> {
        validate_name("branch", name)?;
        if from.is_some() && base.is_some() {
            return Err(CoreError::InvalidArgument(
                "give a snapshot or a base, not both (a snapshot brings its own base)".into(),
            ));
        }
        let base = base.map(|b| check_base(b, &*self.backstore)).transpose()?;
        let info = self.edit_graph(|g, created| {
            if g.branch(name)?.is_some() {
                return Err(CoreError::AlreadyExists(format!("branch {name}")));
            }
            let (parent, base) = match from {
                Some(s) => {
                    let snap = g
                        .snapshot(s)?
                        .ok_or_else(|| CoreError::NotFound(format!("snapshot {s}")))?;
                    let base = g.need_layer(&snap.layer)?.base;
                    (Some(snap.layer), base)
                }
                None => match base {
                    Some(b) => (None, Some(b)),
                    None => (None, g.settings()?.default_base),
                },
            };
            let (id, _) = self.create_layer(g)?;
            created.push(id.clone());
            let now = now_secs();
            g.put_layer(
                &id,
                &LayerRecord {
                    parent,
                    base,
                    state: LayerState::Active,
                    created: now,
                },
            )?;
            g.put_branch(
                name,
                &BranchRecord {
                    layer: id,
                    created: now,
                    from_snapshot: from.map(str::to_string),
                },
            )?;
            branch_info(g, name)
        })?;
        self.publish(
            name,
            0,
            Change::new(EventKind::BranchCreated, BranchPath::root(), true),
        );
        Ok(info)
    }

    /// Every layer the graph names (all others in the backstore are
    /// orphans, deleted at the next open).
    pub fn layers_in_use(&self) -> CoreResult<Vec<String>> {
        self.with_shared(|_| self.db.read(|g| g.layer_ids()))
    }

    /// The directories branch `name` reads through, top first: its active
    /// layer, its committed layers, then its base (if any). With them come
    /// the store's shared change counters and the branch's slot there: an
    /// in-process reader (the shim) keeps the chain while the graph counter
    /// stays, and its cached lookups while the branch's namespace counter
    /// does. Names in layers are stored as [`crate::encode_name`] says; the
    /// base's are literal.
    pub fn branch_chain(&self, name: &str) -> CoreResult<BranchChain> {
        self.with_shared(|st| {
            let view = self.target_view(&Target::Branch(name.to_string()))?;
            Ok(BranchChain {
                layers: view
                    .layers
                    .iter()
                    .map(|l| (l.root_path.clone(), l.kind == LayerKind::Base))
                    .collect(),
                graph_file: self.db.path().to_path_buf(),
                generation_file: self.meta.join(GENERATION_FILE),
                namespace_slot: crate::generation::namespace_slot(name),
                // The value the state was loaded at; under the shared
                // store lock no graph change runs.
                graph: st.graph_gen,
            })
        })
    }

    /// Every branch, by name.
    pub fn list_branches(&self) -> CoreResult<Vec<BranchInfo>> {
        self.with_shared(|_| {
            let rows = self.db.read(|g| g.branch_rows())?;
            Ok(rows
                .into_iter()
                .map(|r| BranchInfo {
                    name: r.name,
                    layer: r.record.layer,
                    depth: r.depth,
                    base: r.base,
                    from_snapshot: r.record.from_snapshot,
                    created: r.record.created,
                })
                .collect())
        })
    }

    /// Deletes branch `name` and every layer only it used.
    pub fn delete_branch(&self, name: &str) -> CoreResult<()> {
        self.edit_graph(|g, _| {
            if g.remove_branch(name)? {
                Ok(())
            } else {
                Err(CoreError::NotFound(format!("branch {name}")))
            }
        })
    }

    // ----- snapshots -----

    /// Takes snapshot `name` (or `<branch>.<n>` when `None`) of `branch`.
    /// With native snapshots the active layer is snapshotted and the chain
    /// stays flat; otherwise the active layer is committed as the snapshot
    /// and the branch gets a fresh active layer on top. When the branch's
    /// chain then exceeds the compaction threshold, it is compacted.
    pub fn create_snapshot(&self, branch: &str, name: Option<&str>) -> CoreResult<SnapshotInfo> {
        let info = self.edit_graph(|g, created| {
            let b = g
                .branch(branch)?
                .ok_or_else(|| CoreError::NotFound(format!("branch {branch}")))?;
            let name = match name {
                Some(n) => {
                    validate_name("snapshot", n)?;
                    if g.snapshot(n)?.is_some() {
                        return Err(CoreError::AlreadyExists(format!("snapshot {n}")));
                    }
                    n.to_string()
                }
                None => {
                    let mut i = 1u64;
                    loop {
                        let n = format!("{branch}.{i}");
                        if g.snapshot(&n)?.is_none() {
                            break n;
                        }
                        i += 1;
                    }
                }
            };
            let active = g.need_layer(&b.layer)?;
            // The layer is about to be frozen: no temporaries go with it.
            let work = self
                .layer_dir(&b.layer, LayerKind::Active)?
                .root_path
                .join(WORK_DIR);
            match std::fs::remove_dir_all(&work) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(CoreError::io(format!("clean {}", work.display()), err)),
            }
            let now = now_secs();
            let native = self.caps.native_snapshots && {
                let id = g.alloc_layer_id()?;
                match self.backstore.snapshot_layer(&b.layer, &id, true) {
                    Ok(_) => {
                        created.push(id.clone());
                        fault::point("snapshot-after-layer-create");
                        g.put_layer(
                            &id,
                            &LayerRecord {
                                parent: active.parent.clone(),
                                base: active.base.clone(),
                                state: LayerState::Committed,
                                created: now,
                            },
                        )?;
                        g.put_snapshot(
                            &name,
                            &SnapshotRecord {
                                layer: id,
                                branch: branch.to_string(),
                                created: now,
                                native: true,
                            },
                        )?;
                        true
                    }
                    Err(e) if e.kind == LayerErrorKind::Unsupported => {
                        tracing::debug!(error = %e, "native snapshot unsupported; committing");
                        false
                    }
                    Err(e) => {
                        return Err(CoreError::backstore(
                            format!("snapshot layer {}", b.layer),
                            e,
                        ))
                    }
                }
            };
            if !native {
                // Committing freezes the active layer where fds open for
                // writing point: refused while any process holds one.
                if !self.branch_locks.no_writers(branch)? {
                    return Err(CoreError::Busy {
                        what: format!("branch {branch}"),
                        why: "files are open for writing in it (fd_open); without native \
                              snapshots a snapshot would capture their later writes: close \
                              them first"
                            .into(),
                    });
                }
                let (id, _) = self.create_layer(g)?;
                created.push(id.clone());
                fault::point("snapshot-after-layer-create");
                g.put_layer(
                    &b.layer,
                    &LayerRecord {
                        state: LayerState::Committed,
                        ..active.clone()
                    },
                )?;
                g.put_layer(
                    &id,
                    &LayerRecord {
                        parent: Some(b.layer.clone()),
                        base: active.base.clone(),
                        state: LayerState::Active,
                        created: now,
                    },
                )?;
                g.put_branch(
                    branch,
                    &BranchRecord {
                        layer: id.clone(),
                        ..b.clone()
                    },
                )?;
                g.put_snapshot(
                    &name,
                    &SnapshotRecord {
                        layer: b.layer.clone(),
                        branch: branch.to_string(),
                        created: now,
                        native: false,
                    },
                )?;
            }
            let active_now = g.branch(branch)?.expect("the branch exists").layer;
            if g.committed_depth(&active_now)? > g.settings()?.compact_threshold as usize {
                if let Some(id) = self.compact_in(g, branch)? {
                    created.push(id);
                }
            }
            snapshot_info(g, &name)
        })?;
        self.publish(
            branch,
            0,
            Change::new(
                EventKind::SnapshotCreated {
                    snapshot: info.name.clone(),
                },
                BranchPath::root(),
                true,
            ),
        );
        Ok(info)
    }

    /// Every snapshot, by name.
    pub fn list_snapshots(&self) -> CoreResult<Vec<SnapshotInfo>> {
        self.with_shared(|_| {
            let rows = self.db.read(|g| g.snapshot_rows())?;
            Ok(rows
                .into_iter()
                .map(|(name, s, base)| SnapshotInfo {
                    name,
                    branch: s.branch,
                    layer: s.layer,
                    native: s.native,
                    base,
                    created: s.created,
                })
                .collect())
        })
    }

    /// Deletes snapshot `name`; `Busy` (changing nothing) while a branch or
    /// another snapshot is built on it.
    pub fn delete_snapshot(&self, name: &str) -> CoreResult<()> {
        self.edit_graph(|g, _| {
            let snap = g
                .snapshot(name)?
                .ok_or_else(|| CoreError::NotFound(format!("snapshot {name}")))?;
            let deps = g.dependents(&snap.layer, Some(name))?;
            if !deps.is_empty() {
                return Err(CoreError::Busy {
                    what: format!("snapshot {name}"),
                    why: format!("{} built on it", deps.join(", ")),
                });
            }
            g.remove_snapshot(name)?;
            Ok(())
        })
    }

    /// Compacts the committed layers under branch `name` into one; returns
    /// false when there was nothing to compact (at most one layer).
    pub fn compact_branch(&self, name: &str) -> CoreResult<bool> {
        self.edit_graph(|g, created| {
            if g.branch(name)?.is_none() {
                return Err(CoreError::NotFound(format!("branch {name}")));
            }
            let id = self.compact_in(g, name)?;
            let done = id.is_some();
            created.extend(id);
            Ok(done)
        })
    }

    /// Builds the compacted layer for `branch` and re-parents its active
    /// layer on it, in `g` (not saved). Returns the new layer's id.
    fn compact_in(&self, g: &mut GraphTx<'_>, branch: &str) -> CoreResult<Option<String>> {
        let active = g.branch(branch)?.expect("the branch exists").layer;
        let chain = g.chain(&active)?;
        if chain.len() <= 2 {
            return Ok(None);
        }
        let active_rec = g.need_layer(&active)?;
        let base = active_rec.base.clone();
        let (id, path) = self.create_layer(g)?;
        let built = (|| {
            let mut layers = vec![LayerDir {
                kind: LayerKind::Active,
                id: id.clone(),
                root_path: path.clone(),
                root: Arc::new(
                    beneath::open_root(&path)
                        .map_err(|e| CoreError::io(format!("open layer {}", path.display()), e))?,
                ),
            }];
            for l in &chain[1..] {
                layers.push(self.layer_dir(l, LayerKind::Committed)?);
            }
            if let Some(b) = &base {
                layers.push(self.base_dir(b)?);
            }
            let view = View { layers };
            let w = Writer::new(&view, &*self.backstore, self.reflink(), &self.stats)?;
            compact::flatten_into(&w)
        })();
        if let Err(e) = built {
            self.delete_layers(&[id]);
            return Err(e);
        }
        g.put_layer(
            &id,
            &LayerRecord {
                parent: None,
                base,
                state: LayerState::Committed,
                created: now_secs(),
            },
        )?;
        g.put_layer(
            &active,
            &LayerRecord {
                parent: Some(id.clone()),
                ..active_rec
            },
        )?;
        Ok(Some(id))
    }

    pub(super) fn reflink(&self) -> bool {
        self.caps.native_reflink
    }
}

pub(super) fn branch_info(g: &GraphTx<'_>, name: &str) -> CoreResult<BranchInfo> {
    let b = g
        .branch(name)?
        .ok_or_else(|| CoreError::NotFound(format!("branch {name}")))?;
    Ok(BranchInfo {
        name: name.to_string(),
        depth: g.committed_depth(&b.layer)?,
        base: g.need_layer(&b.layer)?.base,
        layer: b.layer,
        from_snapshot: b.from_snapshot,
        created: b.created,
    })
}

pub(super) fn snapshot_info(g: &GraphTx<'_>, name: &str) -> CoreResult<SnapshotInfo> {
    let s = g
        .snapshot(name)?
        .ok_or_else(|| CoreError::NotFound(format!("snapshot {name}")))?;
    Ok(SnapshotInfo {
        name: name.to_string(),
        base: g.need_layer(&s.layer)?.base,
        branch: s.branch,
        layer: s.layer,
        native: s.native,
        created: s.created,
    })
}
