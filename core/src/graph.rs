//! The branch and snapshot graph's records: layers and their parents,
//! branches (each owning one active layer) and snapshots (each naming one
//! committed layer); and the whole graph as the earlier format kept it in
//! `store.json`, read once to migrate it (see `graph_db`). Pure data and
//! rules; no I/O.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
};

use serde::{Deserialize, Serialize};

/// Version of the persisted format.
pub const FORMAT: u32 = 1;
/// Default maximum number of committed layers under a branch before a
/// snapshot compacts them.
pub const DEFAULT_COMPACT_THRESHOLD: u32 = 8;

/// Whether a layer may still change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LayerState {
    /// Writable; owned by exactly one branch.
    Active,
    /// Immutable; shared by snapshots and branches above it.
    Committed,
}

/// One layer: a directory in the backstore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerRecord {
    /// The committed layer below, or `None` when the base is next.
    pub parent: Option<String>,
    /// The base directory at the bottom of this layer's chain.
    pub base: Option<PathBuf>,
    /// Active or committed.
    pub state: LayerState,
    /// Creation time, seconds since the epoch.
    pub created: u64,
}

/// A branch: one active layer over a chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BranchRecord {
    /// Its active layer.
    pub layer: String,
    /// Creation time, seconds since the epoch.
    pub created: u64,
    /// The snapshot it was created from, if any.
    pub from_snapshot: Option<String>,
}

/// A snapshot: a name for a committed layer (and so for its chain).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRecord {
    /// The committed layer at its top.
    pub layer: String,
    /// The branch it was taken of.
    pub branch: String,
    /// Creation time, seconds since the epoch.
    pub created: u64,
    /// True when made by the backstore's native snapshot.
    pub native: bool,
}

/// The whole graph, as `store.json` held it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Graph {
    /// Always [`FORMAT`].
    pub format: u32,
    /// Base of branches created without `--from` or an explicit base.
    pub default_base: Option<PathBuf>,
    /// Committed-layer depth above which a snapshot compacts the branch.
    pub compact_threshold: u32,
    /// Next layer number to hand out.
    pub next_layer: u64,
    /// Every layer the store knows.
    pub layers: BTreeMap<String, LayerRecord>,
    /// Branches by name.
    pub branches: BTreeMap<String, BranchRecord>,
    /// Snapshots by name.
    pub snapshots: BTreeMap<String, SnapshotRecord>,
}

impl Graph {
    /// An empty graph.
    pub fn new(default_base: Option<PathBuf>, compact_threshold: u32) -> Self {
        Self {
            format: FORMAT,
            default_base,
            compact_threshold,
            next_layer: 1,
            layers: BTreeMap::new(),
            branches: BTreeMap::new(),
            snapshots: BTreeMap::new(),
        }
    }

    /// The chain from `layer` down to the base: `[layer, parent, ...]`.
    pub fn chain(&self, layer: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut cur = Some(layer.to_string());
        while let Some(id) = cur {
            if out.contains(&id) {
                break; // a cycle; `check` reports it
            }
            cur = self.layers.get(&id).and_then(|l| l.parent.clone());
            out.push(id);
        }
        out
    }

    /// Layers nothing refers to any more (no branch, snapshot or child),
    /// including those that become unreferenced once the first ones go.
    pub fn unreferenced_layers(&self) -> Vec<String> {
        let mut live: BTreeSet<&str> = BTreeSet::new();
        for b in self.branches.values() {
            live.insert(&b.layer);
        }
        for s in self.snapshots.values() {
            live.insert(&s.layer);
        }
        let mut stack: Vec<&str> = live.iter().copied().collect();
        while let Some(id) = stack.pop() {
            if let Some(p) = self.layers.get(id).and_then(|l| l.parent.as_deref()) {
                if live.insert(p) {
                    stack.push(p);
                }
            }
        }
        self.layers
            .keys()
            .filter(|k| !live.contains(k.as_str()))
            .cloned()
            .collect()
    }

    /// Checks the graph's invariants; the error says which one failed.
    pub fn check(&self) -> Result<(), String> {
        if self.format != FORMAT {
            return Err(format!(
                "format {} is not supported (this agentfs reads format {FORMAT})",
                self.format
            ));
        }
        let mut owners: BTreeMap<&str, &str> = BTreeMap::new();
        for (name, b) in &self.branches {
            match self.layers.get(&b.layer) {
                None => return Err(format!("branch {name}: layer {} is missing", b.layer)),
                Some(l) if l.state != LayerState::Active => {
                    return Err(format!("branch {name}: layer {} is not active", b.layer))
                }
                _ => {}
            }
            if let Some(other) = owners.insert(&b.layer, name) {
                return Err(format!(
                    "branches {other} and {name} share active layer {}",
                    b.layer
                ));
            }
        }
        for (name, s) in &self.snapshots {
            match self.layers.get(&s.layer) {
                None => return Err(format!("snapshot {name}: layer {} is missing", s.layer)),
                Some(l) if l.state != LayerState::Committed => {
                    return Err(format!(
                        "snapshot {name}: layer {} is not committed",
                        s.layer
                    ))
                }
                _ => {}
            }
        }
        for (id, l) in &self.layers {
            if let Some(p) = &l.parent {
                match self.layers.get(p) {
                    None => return Err(format!("layer {id}: parent {p} is missing")),
                    Some(pl) if pl.state != LayerState::Committed => {
                        return Err(format!("layer {id}: parent {p} is not committed"))
                    }
                    Some(pl) if pl.base != l.base => {
                        return Err(format!("layer {id}: base differs from its parent {p}"))
                    }
                    _ => {}
                }
            }
            let chain = self.chain(id);
            let last = chain.last().expect("chain has at least the layer");
            if self
                .layers
                .get(last)
                .and_then(|l| l.parent.as_ref())
                .is_some()
            {
                return Err(format!("layer {id}: its chain has a cycle"));
            }
        }
        Ok(())
    }
}

/// Seconds since the epoch, now.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(parent: Option<&str>, state: LayerState) -> LayerRecord {
        LayerRecord {
            parent: parent.map(str::to_string),
            base: None,
            state,
            created: 0,
        }
    }

    fn sample() -> Graph {
        // s1 = l1 <- l2 (branch main); l1 <- l3 (branch b2, from s1)
        let mut g = Graph::new(None, 8);
        g.layers
            .insert("l1".into(), layer(None, LayerState::Committed));
        g.layers
            .insert("l2".into(), layer(Some("l1"), LayerState::Active));
        g.layers
            .insert("l3".into(), layer(Some("l1"), LayerState::Active));
        g.branches.insert(
            "main".into(),
            BranchRecord {
                layer: "l2".into(),
                created: 0,
                from_snapshot: None,
            },
        );
        g.branches.insert(
            "b2".into(),
            BranchRecord {
                layer: "l3".into(),
                created: 0,
                from_snapshot: Some("s1".into()),
            },
        );
        g.snapshots.insert(
            "s1".into(),
            SnapshotRecord {
                layer: "l1".into(),
                branch: "main".into(),
                created: 0,
                native: false,
            },
        );
        g
    }

    #[test]
    fn chains_and_dependents() {
        let g = sample();
        g.check().unwrap();
        assert_eq!(g.chain("l2"), vec!["l2", "l1"]);
        assert!(g.unreferenced_layers().is_empty());
    }

    #[test]
    fn unreferenced_layers_cascade() {
        let mut g = sample();
        g.branches.clear();
        g.layers.remove("l2");
        g.layers.remove("l3");
        assert!(g.unreferenced_layers().is_empty());
        g.snapshots.clear();
        assert_eq!(g.unreferenced_layers(), vec!["l1"]);
        // A compaction layer only a removed branch used goes too.
        let mut g = sample();
        g.layers
            .insert("c1".into(), layer(Some("l1"), LayerState::Committed));
        g.layers.get_mut("l3").unwrap().parent = Some("c1".into());
        g.branches.remove("b2");
        let mut u = g.unreferenced_layers();
        u.sort();
        assert_eq!(u, vec!["c1", "l3"]);
    }

    #[test]
    fn broken_graphs_are_reported() {
        let mut g = sample();
        g.layers.get_mut("l1").unwrap().parent = Some("l2".into());
        assert!(g.check().unwrap_err().contains("not committed"));
        let mut g = sample();
        g.branches.get_mut("b2").unwrap().layer = "l2".into();
        assert!(g.check().unwrap_err().contains("share"));
        let mut g = sample();
        g.format = 99;
        assert!(g.check().unwrap_err().contains("format 99"));
        let mut g = sample();
        g.snapshots.get_mut("s1").unwrap().layer = "zz".into();
        assert!(g.check().unwrap_err().contains("missing"));
    }
}
