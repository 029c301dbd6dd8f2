//! Model-based test: random sequences of create, write, write-at,
//! truncate, chmod, unlink, rename, mkdir, rmdir, snapshot,
//! branch-from-snapshot, branch and snapshot deletion and restart run
//! against a plain in-memory model. After every step: every branch and every
//! snapshot shows exactly what the model says (so snapshots are isolated),
//! errors agree, and the base is byte for byte unchanged. At the end of each
//! case, `diff` agrees with the model.
//!
//! A second model follows the layer graph: which layers exist, the chain
//! under each branch and snapshot, compaction. Deleting a snapshot that a
//! branch or another snapshot is built on must be refused (`Busy`, naming
//! exactly the dependents the model names) and change nothing; deleting a
//! branch is never refused (its snapshots keep their layers). After every
//! step the store uses exactly the model's layers and the backstore holds
//! exactly those: a layer whose last user was deleted is gone from
//! `list_layers`, its space released.
//!
//! Runs over the mock (soft reflink, and copy-only), hostfs on a temporary
//! directory, hostfs on a loop-mounted btrfs (so copy-up really reflinks),
//! and the btrfs plugin there (layers are subvolumes, snapshots native).
//! `PROPTEST_CASES` sets the number of cases per backstore (default 200,
//! which keeps the five runs under 30 s on two cores).

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use agentfs_core::{ChangeType, CoreError, InitOptions, LockWait, Store};
use agentfs_host::loader::LoadedBackstore;
use common::*;
use proptest::{
    prelude::*,
    test_runner::{Config, TestCaseError, TestRunner},
};

type P = Vec<&'static str>;

#[derive(Clone, Debug, PartialEq)]
enum Node {
    /// Content and permission bits.
    File(Vec<u8>, u32),
    /// Permission bits.
    Dir(u32),
}

impl Node {
    fn is_dir(&self) -> bool {
        matches!(self, Node::Dir(_))
    }
}

type Tree = BTreeMap<P, Node>;

#[derive(Clone, Debug)]
enum Op {
    Create(usize, P),
    Write(usize, P, Vec<u8>),
    WriteAt(usize, P, u64, Vec<u8>),
    Truncate(usize, P, u64),
    Chmod(usize, P, u32),
    Unlink(usize, P),
    Rename(usize, P, P),
    Mkdir(usize, P),
    Rmdir(usize, P),
    Snapshot(usize),
    BranchFrom(usize),
    DeleteBranch(usize),
    DeleteSnapshot(usize),
    Reopen,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum E {
    NotFound,
    Exists,
    NotDir,
    IsDir,
    NotEmpty,
    Invalid,
}

fn class(e: &CoreError) -> E {
    match e {
        CoreError::NotFound(_) => E::NotFound,
        CoreError::AlreadyExists(_) => E::Exists,
        CoreError::NotDirectory(_) => E::NotDir,
        CoreError::IsDirectory(_) => E::IsDir,
        CoreError::NotEmpty(_) => E::NotEmpty,
        CoreError::InvalidArgument(_) => E::Invalid,
        other => panic!("unexpected error class: {other}"),
    }
}

fn name() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just("a"), Just("b"), Just("c")]
}

fn path() -> impl Strategy<Value = P> {
    proptest::collection::vec(name(), 1..=3)
}

fn data() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..12)
}

fn op(persistent: bool) -> impl Strategy<Value = Op> {
    let b = 0usize..4;
    prop_oneof![
        3 => (b.clone(), path()).prop_map(|(b, p)| Op::Create(b, p)),
        4 => (b.clone(), path(), data()).prop_map(|(b, p, d)| Op::Write(b, p, d)),
        3 => (b.clone(), path(), 0u64..16, data()).prop_map(|(b, p, o, d)| Op::WriteAt(b, p, o, d)),
        2 => (b.clone(), path(), 0u64..16).prop_map(|(b, p, l)| Op::Truncate(b, p, l)),
        2 => (b.clone(), path(), prop_oneof![Just(0o700u32), Just(0o750), Just(0o755)])
            .prop_map(|(b, p, m)| Op::Chmod(b, p, m)),
        3 => (b.clone(), path()).prop_map(|(b, p)| Op::Unlink(b, p)),
        4 => (b.clone(), path(), path()).prop_map(|(b, f, t)| Op::Rename(b, f, t)),
        3 => (b.clone(), path()).prop_map(|(b, p)| Op::Mkdir(b, p)),
        2 => (b.clone(), path()).prop_map(|(b, p)| Op::Rmdir(b, p)),
        2 => b.clone().prop_map(Op::Snapshot),
        2 => (0usize..8).prop_map(Op::BranchFrom),
        2 => b.prop_map(Op::DeleteBranch),
        2 => (0usize..8).prop_map(Op::DeleteSnapshot),
        1 => Just(if persistent { Op::Reopen } else { Op::Snapshot(0) }),
    ]
}

fn base_tree() -> impl Strategy<Value = Tree> {
    proptest::collection::vec((path(), any::<bool>(), data()), 0..10).prop_map(|items| {
        let mut t = Tree::new();
        for (p, dir, d) in items {
            let parent_ok = (1..p.len()).all(|i| t.get(&p[..i]).is_some_and(Node::is_dir));
            if parent_ok && !t.contains_key(&p) {
                t.insert(
                    p,
                    if dir {
                        Node::Dir(0o755)
                    } else {
                        Node::File(d, 0o644)
                    },
                );
            }
        }
        t
    })
}

fn s(p: &P) -> String {
    p.join("/")
}

fn write_base(dir: &Path, t: &Tree) {
    std::fs::create_dir_all(dir).unwrap();
    use std::os::unix::fs::PermissionsExt;
    for (p, n) in t {
        let fp = dir.join(s(p));
        let mode = match n {
            Node::Dir(m) => {
                std::fs::create_dir(&fp).unwrap();
                m
            }
            Node::File(d, m) => {
                std::fs::write(&fp, d).unwrap();
                m
            }
        };
        std::fs::set_permissions(&fp, std::fs::Permissions::from_mode(*mode)).unwrap();
    }
}

/// The model of one tree: POSIX semantics, checked in the order the core
/// checks them.
fn parent_ok(t: &Tree, p: &P) -> Result<(), E> {
    for i in 1..p.len() {
        match t.get(&p[..i]) {
            None => return Err(E::NotFound),
            Some(Node::File(..)) => return Err(E::NotDir),
            Some(Node::Dir(_)) => {}
        }
    }
    Ok(())
}

fn has_children(t: &Tree, p: &P) -> bool {
    t.keys().any(|k| k.len() > p.len() && k.starts_with(p))
}

fn apply(t: &mut Tree, op: &Op) -> Result<(), E> {
    match op {
        Op::Create(_, p) => {
            parent_ok(t, p)?;
            if t.contains_key(p) {
                return Err(E::Exists);
            }
            t.insert(p.clone(), Node::File(vec![], 0o644));
        }
        Op::Write(_, p, d) => {
            parent_ok(t, p)?;
            match t.get_mut(p) {
                Some(Node::Dir(_)) => return Err(E::IsDir),
                Some(Node::File(f, _)) => *f = d.clone(),
                None => {
                    t.insert(p.clone(), Node::File(d.clone(), 0o644));
                }
            }
        }
        Op::WriteAt(_, p, off, d) => {
            parent_ok(t, p)?;
            match t.get_mut(p) {
                None => return Err(E::NotFound),
                Some(Node::Dir(_)) => return Err(E::IsDir),
                Some(Node::File(..)) if d.is_empty() => {} // POSIX: writes nothing
                Some(Node::File(f, _)) => {
                    let end = *off as usize + d.len();
                    if f.len() < end {
                        f.resize(end, 0);
                    }
                    f[*off as usize..end].copy_from_slice(d);
                }
            }
        }
        Op::Truncate(_, p, len) => {
            parent_ok(t, p)?;
            match t.get_mut(p) {
                None => return Err(E::NotFound),
                Some(Node::Dir(_)) => return Err(E::IsDir),
                Some(Node::File(f, _)) => f.resize(*len as usize, 0),
            }
        }
        Op::Chmod(_, p, mode) => {
            parent_ok(t, p)?;
            match t.get_mut(p) {
                None => return Err(E::NotFound),
                Some(Node::Dir(m)) | Some(Node::File(_, m)) => *m = *mode,
            }
        }
        Op::Unlink(_, p) => {
            parent_ok(t, p)?;
            match t.get(p) {
                None => return Err(E::NotFound),
                Some(Node::Dir(_)) => return Err(E::IsDir),
                Some(Node::File(..)) => {
                    t.remove(p);
                }
            }
        }
        Op::Mkdir(_, p) => {
            parent_ok(t, p)?;
            if t.contains_key(p) {
                return Err(E::Exists);
            }
            t.insert(p.clone(), Node::Dir(0o755));
        }
        Op::Rmdir(_, p) => {
            parent_ok(t, p)?;
            match t.get(p) {
                None => return Err(E::NotFound),
                Some(Node::File(..)) => return Err(E::NotDir),
                Some(Node::Dir(_)) if has_children(t, p) => return Err(E::NotEmpty),
                Some(Node::Dir(_)) => {
                    t.remove(p);
                }
            }
        }
        Op::Rename(_, from, to) => {
            parent_ok(t, from)?;
            let src_dir = match t.get(from) {
                None => return Err(E::NotFound),
                Some(n) => n.is_dir(),
            };
            parent_ok(t, to)?;
            if from == to {
                return Ok(());
            }
            if src_dir && to.starts_with(from) {
                return Err(E::Invalid);
            }
            match (src_dir, t.get(to)) {
                (_, None) => {}
                (true, Some(Node::Dir(_))) => {
                    if has_children(t, to) {
                        return Err(E::NotEmpty);
                    }
                }
                (true, Some(_)) => return Err(E::NotDir),
                (false, Some(Node::Dir(_))) => return Err(E::IsDir),
                (false, Some(_)) => {}
            }
            t.remove(to);
            let moved: Vec<(P, Node)> = t
                .iter()
                .filter(|(k, _)| k.starts_with(from))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            for (k, v) in moved {
                t.remove(&k);
                let mut nk = to.clone();
                nk.extend_from_slice(&k[from.len()..]);
                t.insert(nk, v);
            }
        }
        _ => unreachable!("not a file operation"),
    }
    Ok(())
}

fn image(store: &Store, name: &str, snapshot: bool) -> Tree {
    let t = if snapshot {
        store.snapshot(name)
    } else {
        store.branch(name)
    };
    let img = image_tree(&t);
    let mut out = Tree::new();
    for (k, (kind, mode, data)) in img {
        let p: P = k
            .split('/')
            .map(|c| match c {
                "a" => "a",
                "b" => "b",
                "c" => "c",
                other => panic!("unexpected name {other:?} in {name}"),
            })
            .collect();
        out.insert(
            p,
            match kind {
                'd' => Node::Dir(mode),
                '-' => Node::File(data, mode),
                other => panic!("unexpected kind {other}"),
            },
        );
    }
    out
}

fn model_diff(old: &Tree, new: &Tree) -> Vec<(String, ChangeType)> {
    let mut out = Vec::new();
    let keys: std::collections::BTreeSet<&P> = old.keys().chain(new.keys()).collect();
    for k in keys {
        match (old.get(k), new.get(k)) {
            (None, Some(_)) => out.push((s(k), ChangeType::Added)),
            (Some(_), None) => out.push((s(k), ChangeType::Deleted)),
            // Directory modes are not part of a diff.
            (Some(Node::Dir(_)), Some(Node::Dir(_))) => {}
            (Some(a), Some(b)) if a != b => out.push((s(k), ChangeType::Modified)),
            _ => {}
        }
    }
    out.sort();
    out
}

/// The compaction threshold the cases' stores are made with.
const COMPACT_THRESHOLD: usize = 3;

/// The reference model of the layer graph: every layer the store keeps and
/// its parent, each branch's active layer and each snapshot's layer. Ids
/// are handed out in the store's order (`l000001`, ...), so the model
/// names the very layers the store should have.
#[derive(Default)]
struct Layers {
    next: u64,
    parent: BTreeMap<String, Option<String>>,
    branches: BTreeMap<String, String>,
    snapshots: BTreeMap<String, String>,
}

impl Layers {
    fn alloc(&mut self, parent: Option<String>) -> String {
        self.next += 1;
        let id = format!("l{:06}", self.next);
        self.parent.insert(id.clone(), parent);
        id
    }

    /// `[top, parent, ...]`.
    fn chain(&self, top: &str) -> Vec<String> {
        let mut out = vec![top.to_string()];
        while let Some(Some(p)) = self.parent.get(out.last().unwrap()) {
            out.push(p.clone());
        }
        out
    }

    /// A branch: one new layer, over snapshot `from`'s layer or the base.
    fn create_branch(&mut self, name: &str, from: Option<&str>) {
        let parent = from.map(|s| self.snapshots[s].clone());
        let id = self.alloc(parent);
        self.branches.insert(name.to_string(), id);
    }

    /// A snapshot of `branch`; returns its layer. A native snapshot is a
    /// new committed layer beside the active one; otherwise the active
    /// layer is committed as the snapshot and the branch gets a new active
    /// layer on it. A branch then deeper than the threshold is compacted
    /// onto one new layer.
    fn snapshot(&mut self, branch: &str, name: &str, native: bool) -> String {
        let active = self.branches[branch].clone();
        let layer = if native {
            let p = self.parent[&active].clone();
            self.alloc(p)
        } else {
            let fresh = self.alloc(Some(active.clone()));
            self.branches.insert(branch.to_string(), fresh);
            active
        };
        self.snapshots.insert(name.to_string(), layer.clone());
        let active = self.branches[branch].clone();
        if self.chain(&active).len() - 1 > COMPACT_THRESHOLD {
            let flat = self.alloc(None);
            self.parent.insert(active, Some(flat));
        }
        self.collect();
        layer
    }

    fn delete_branch(&mut self, name: &str) {
        self.branches.remove(name);
        self.collect();
    }

    /// `Err(dependents)` ("branch b1, snapshot s3") when a branch or
    /// another snapshot is built on the snapshot's layer.
    fn delete_snapshot(&mut self, name: &str) -> Result<(), String> {
        let layer = &self.snapshots[name];
        let on = |top: &String| self.chain(top).contains(layer);
        let deps: Vec<String> = (self.branches.iter())
            .filter(|(_, top)| on(top))
            .map(|(b, _)| format!("branch {b}"))
            .chain(
                (self.snapshots.iter())
                    .filter(|(s, top)| *s != name && on(top))
                    .map(|(s, _)| format!("snapshot {s}")),
            )
            .collect();
        if !deps.is_empty() {
            return Err(deps.join(", "));
        }
        self.snapshots.remove(name);
        self.collect();
        Ok(())
    }

    /// Forgets the layers no branch or snapshot reaches any more.
    fn collect(&mut self) {
        let live: BTreeSet<String> = (self.branches.values())
            .chain(self.snapshots.values())
            .flat_map(|top| self.chain(top))
            .collect();
        self.parent.retain(|id, _| live.contains(id));
    }

    /// Every layer, sorted.
    fn ids(&self) -> Vec<String> {
        self.parent.keys().cloned().collect()
    }
}

/// What a run exercised, summed over its cases.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    reflinked: u64,
    copied: u64,
    /// Snapshot deletions refused because others are built on them.
    refused: u64,
    /// Deletions that released at least one layer.
    released: u64,
}

impl Counts {
    fn add(self, o: Counts) -> Counts {
        Counts {
            reflinked: self.reflinked + o.reflinked,
            copied: self.copied + o.copied,
            refused: self.refused + o.refused,
            released: self.released + o.released,
        }
    }
}

/// A backstore factory: called for the first open and for every restart,
/// with the case's directory.
type Factory<'a> = &'a dyn Fn(&Path) -> LoadedBackstore;

struct Case {
    store: Option<Store>,
    model: BTreeMap<String, Tree>,
    snaps: BTreeMap<String, Tree>,
    layers: Layers,
    next_branch: usize,
    next_snap: usize,
}

fn run_case(
    dir: &Path,
    base_t: &Tree,
    ops: &[Op],
    factory: Factory<'_>,
) -> Result<Counts, TestCaseError> {
    let base = dir.join("base");
    write_base(&base, base_t);
    let base_img = image_dir(&base);
    let s = Store::init(
        factory(dir),
        InitOptions {
            default_base: Some(base.clone()),
            compact_threshold: Some(COMPACT_THRESHOLD as u32),
        },
        LockWait::Block,
    )
    .unwrap();
    s.create_branch("b0", None, None).unwrap();
    let mut layers = Layers::default();
    layers.create_branch("b0", None);
    let mut c = Case {
        store: Some(s),
        model: BTreeMap::from([("b0".to_string(), base_t.clone())]),
        snaps: BTreeMap::new(),
        layers,
        next_branch: 1,
        next_snap: 0,
    };
    let mut stats = Counts::default();
    let mut layers_before = c.layers.ids().len();
    for (i, op) in ops.iter().enumerate() {
        step(&mut c, op, dir, factory, &mut stats)
            .map_err(|e| TestCaseError::fail(format!("step {i} {op:?}: {e}")))?;
        let s = c.store.as_ref().unwrap();
        for (b, t) in &c.model {
            prop_assert_eq!(&image(s, b, false), t, "step {} {:?}: branch {}", i, op, b);
        }
        for (n, t) in &c.snaps {
            prop_assert_eq!(&image(s, n, true), t, "step {} {:?}: snapshot {}", i, op, n);
        }
        prop_assert!(
            image_dir(&base) == base_img,
            "step {} {:?}: the base changed",
            i,
            op
        );
        let in_use = s.layers_in_use().unwrap();
        prop_assert_eq!(&in_use, &c.layers.ids(), "step {} {:?}: layers", i, op);
        if matches!(op, Op::DeleteBranch(_) | Op::DeleteSnapshot(_)) && in_use.len() < layers_before
        {
            stats.released += 1;
        }
        layers_before = in_use.len();
        let mut present = s.layer_store().list_layers().unwrap();
        present.sort();
        prop_assert_eq!(
            &present,
            &in_use,
            "step {} {:?}: the backstore's layers are not the ones in use",
            i,
            op
        );
    }
    let s = c.store.as_ref().unwrap();
    for (b, t) in &c.model {
        let mut got = diff_of(s, b, None);
        got.sort();
        prop_assert_eq!(got, model_diff(base_t, t), "diff of branch {} vs base", b);
        for (n, st) in &c.snaps {
            let mut got = diff_of(s, b, Some(n));
            got.sort();
            prop_assert_eq!(got, model_diff(st, t), "diff of branch {} vs {}", b, n);
        }
    }
    let (r, cp) = s.copy_stats();
    stats.reflinked += r;
    stats.copied += cp;
    Ok(stats)
}

fn step(
    c: &mut Case,
    op: &Op,
    dir: &Path,
    factory: Factory<'_>,
    stats: &mut Counts,
) -> Result<(), String> {
    let branches: Vec<String> = c.model.keys().cloned().collect();
    let pick = |i: &usize| branches.get(i % branches.len().max(1)).cloned();
    let s = c.store.as_ref().unwrap();
    match op {
        Op::Reopen => {
            let old = c.store.take().unwrap();
            let (r, cp) = old.copy_stats();
            stats.reflinked += r;
            stats.copied += cp;
            drop(old);
            c.store = Some(Store::open(factory(dir), LockWait::Block).map_err(|e| e.to_string())?);
            return Ok(());
        }
        Op::Snapshot(b) => {
            let Some(b) = pick(b) else { return Ok(()) };
            let name = format!("s{}", c.next_snap);
            c.next_snap += 1;
            let info = s
                .create_snapshot(&b, Some(&name))
                .map_err(|e| e.to_string())?;
            let layer = c.layers.snapshot(&b, &name, info.native);
            if info.layer != layer {
                return Err(format!("snapshot in layer {}, model: {layer}", info.layer));
            }
            c.snaps.insert(name, c.model[&b].clone());
            return Ok(());
        }
        Op::BranchFrom(i) => {
            let snaps: Vec<String> = c.snaps.keys().cloned().collect();
            let Some(snap) = snaps.get(i % snaps.len().max(1)) else {
                return Ok(());
            };
            let name = format!("b{}", c.next_branch);
            c.next_branch += 1;
            s.create_branch(&name, Some(snap), None)
                .map_err(|e| e.to_string())?;
            c.layers.create_branch(&name, Some(snap));
            c.model.insert(name, c.snaps[snap].clone());
            return Ok(());
        }
        Op::DeleteBranch(b) => {
            let Some(b) = pick(b) else { return Ok(()) };
            s.delete_branch(&b).map_err(|e| e.to_string())?;
            c.layers.delete_branch(&b);
            c.model.remove(&b);
            return Ok(());
        }
        Op::DeleteSnapshot(i) => {
            let snaps: Vec<String> = c.snaps.keys().cloned().collect();
            let Some(snap) = snaps.get(i % snaps.len().max(1)) else {
                return Ok(());
            };
            match (s.delete_snapshot(snap), c.layers.delete_snapshot(snap)) {
                (Ok(()), Ok(())) => {
                    c.snaps.remove(snap);
                }
                (Err(CoreError::Busy { why, .. }), Err(deps))
                    if why == format!("{deps} built on it") =>
                {
                    stats.refused += 1;
                }
                (got, want) => {
                    return Err(format!(
                        "delete snapshot {snap}: core said {got:?}, model said {want:?}"
                    ))
                }
            }
            return Ok(());
        }
        _ => {}
    }
    let b = match op {
        Op::Create(b, ..)
        | Op::Write(b, ..)
        | Op::WriteAt(b, ..)
        | Op::Truncate(b, ..)
        | Op::Chmod(b, ..)
        | Op::Unlink(b, ..)
        | Op::Rename(b, ..)
        | Op::Mkdir(b, ..)
        | Op::Rmdir(b, ..) => b,
        _ => unreachable!(),
    };
    let Some(b) = pick(b) else { return Ok(()) };
    let t = s.branch(&b);
    let got = match op {
        Op::Create(_, p) => t.create(s_(p).as_str(), 0o644),
        Op::Write(_, p, d) => t.write_file(s_(p).as_str(), d),
        Op::WriteAt(_, p, o, d) => t.write_at(s_(p).as_str(), *o, d),
        Op::Truncate(_, p, l) => t.truncate(s_(p).as_str(), *l),
        Op::Chmod(_, p, m) => t.chmod(s_(p).as_str(), *m),
        Op::Unlink(_, p) => t.unlink(s_(p).as_str()),
        Op::Rename(_, f, to) => t.rename(s_(f).as_str(), s_(to).as_str()),
        Op::Mkdir(_, p) => t.mkdir(s_(p).as_str(), 0o755),
        Op::Rmdir(_, p) => t.rmdir(s_(p).as_str()),
        _ => unreachable!(),
    }
    .map_err(|e| class(&e));
    let want = apply(c.model.get_mut(&b).unwrap(), op);
    if got != want {
        return Err(format!("core said {got:?}, model said {want:?}"));
    }
    Ok(())
}

fn s_(p: &P) -> String {
    s(p)
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}

/// Runs the property with `factory`; returns (reflinked, copied) totals.
/// With enough cases, also requires that some snapshot deletions were
/// refused and some deletions released layers.
fn check(label: &str, scratch: &Path, persistent: bool, factory: Factory<'_>) -> (u64, u64) {
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    });
    let totals = std::cell::Cell::new(Counts::default());
    let strategy = (
        base_tree(),
        proptest::collection::vec(op(persistent), 1..28),
    );
    let result = runner.run(&strategy, |(base_t, ops)| {
        let dir = tempfile::tempdir_in(scratch).unwrap();
        let counts = run_case(dir.path(), &base_t, &ops, factory)?;
        totals.set(totals.get().add(counts));
        Ok(())
    });
    if let Err(e) = result {
        panic!("{label}: {e}");
    }
    let t = totals.get();
    if cases() >= 64 {
        assert!(
            t.refused > 0,
            "{label}: no snapshot deletion was refused: {t:?}"
        );
        assert!(
            t.released > 0,
            "{label}: no deletion released a layer: {t:?}"
        );
    }
    (t.reflinked, t.copied)
}

#[test]
fn model_mock() {
    let t = tempfile::tempdir().unwrap();
    check("mock", t.path(), false, &|_| mock());
}

#[test]
fn model_mock_copy_only() {
    let t = tempfile::tempdir().unwrap();
    let (r, c) = check("mock (no reflink)", t.path(), false, &|_| mock_copying());
    assert_eq!(r, 0);
    assert!(c > 0, "copy-up never ran");
}

#[test]
fn model_hostfs() {
    let t = tempfile::tempdir().unwrap();
    check("hostfs", t.path(), true, &|d: &Path| {
        hostfs(&d.join("store"))
    });
}

#[test]
fn model_hostfs_on_btrfs() {
    let Some(fs) =
        agentfs_testfs::mount_or_skip(agentfs_testfs::FsKind::Btrfs, 256, "model_hostfs_on_btrfs")
    else {
        return;
    };
    let scratch: PathBuf = fs.path().to_path_buf();
    let (r, _) = check("hostfs on btrfs", &scratch, true, &|d: &Path| {
        hostfs(&d.join("store"))
    });
    assert!(r > 0, "reflink copy-up never ran on btrfs");
}

#[test]
fn model_btrfs_native_snapshots() {
    let Some(fs) = agentfs_testfs::mount_or_skip(
        agentfs_testfs::FsKind::Btrfs,
        256,
        "model_btrfs_native_snapshots",
    ) else {
        return;
    };
    let scratch: PathBuf = fs.path().to_path_buf();
    let (r, _) = check("btrfs plugin on btrfs", &scratch, true, &|d: &Path| {
        let b = btrfs(&d.join("store"));
        assert!(
            b.capabilities()
                .contains(agentfs_plugin_api::backstore::Capabilities::NATIVE_SNAPSHOTS),
            "the btrfs plugin has no native snapshots on btrfs"
        );
        b
    });
    assert!(r > 0, "reflink copy-up never ran on btrfs");
}
