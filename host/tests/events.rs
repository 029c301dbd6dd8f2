//! One event per mutation, with branch-relative paths: the exact sequence
//! for every operation.

mod common;

use agentfs_core::{Event, EventKind, Store};
use agentfs_plugin_api::watch::EventKind as AbiKind;
use common::*;

fn setup() -> (tempfile::TempDir, Store) {
    let t = tempfile::tempdir().unwrap();
    let base = t.path().join("base");
    make_base(&base);
    let s = store(mock(), Some(&base));
    (t, s)
}

/// Runs `op` and returns exactly the events it published.
fn events_of(s: &Store, op: impl FnOnce()) -> Vec<Event> {
    let sub = s.subscribe();
    op();
    let got: Vec<Event> = sub.events.try_iter().collect();
    assert!(s.unsubscribe(sub.id));
    got
}

fn summaries(s: &Store, op: impl FnOnce()) -> Vec<String> {
    events_of(s, op).iter().map(Event::summary).collect()
}

#[test]
fn branch_and_snapshot_creation() {
    let (_t, s) = setup();
    assert_eq!(
        summaries(&s, || {
            s.create_branch("b", None, None).unwrap();
        }),
        ["branch-created b"]
    );
    assert_eq!(
        summaries(&s, || {
            s.create_snapshot("b", Some("s1")).unwrap();
        }),
        ["snapshot-created b s1"]
    );
    let ev = events_of(&s, || {
        s.create_branch("c", Some("s1"), None).unwrap();
    });
    let c = agentfs_host::loader::abi_event(&ev[0]);
    assert_eq!(
        (c.kind, c.branch.as_str(), c.path.as_str()),
        (AbiKind::BRANCH_CREATED, "c", "")
    );
}

#[test]
fn file_operations_publish_one_event_each() {
    let (_t, s) = setup();
    s.create_branch("b", None, None).unwrap();
    let b = s.branch("b");
    type Case<'a> = (&'a str, Box<dyn Fn() + 'a>, Vec<&'a str>);
    let cases: Vec<Case> = vec![
        (
            "create",
            Box::new(|| b.create("new", 0o644).unwrap()),
            vec!["created new"],
        ),
        (
            "write new",
            Box::new(|| b.write_file("w.txt", b"hello").unwrap()),
            vec!["created w.txt"],
        ),
        (
            "write existing (base)",
            Box::new(|| b.write_file("README.md", b"x").unwrap()),
            vec!["modified README.md"],
        ),
        (
            "write at (copy-up)",
            Box::new(|| b.write_at("src/lib.rs", 0, b"//").unwrap()),
            vec!["modified src/lib.rs"],
        ),
        (
            "truncate",
            Box::new(|| b.truncate("w.txt", 2).unwrap()),
            vec!["modified w.txt"],
        ),
        (
            "mkdir",
            Box::new(|| b.mkdir("d", 0o755).unwrap()),
            vec!["created d/"],
        ),
        (
            "symlink",
            Box::new(|| b.symlink("w.txt", "d/link").unwrap()),
            vec!["created d/link"],
        ),
        (
            "rename file",
            Box::new(|| b.rename("w.txt", "d/w2.txt").unwrap()),
            vec!["renamed w.txt -> d/w2.txt"],
        ),
        (
            "rename lower dir",
            Box::new(|| b.rename("docs", "manual").unwrap()),
            vec!["renamed docs/ -> manual/"],
        ),
        (
            "rename to itself",
            Box::new(|| b.rename("manual", "manual").unwrap()),
            vec![],
        ),
        (
            "chmod",
            Box::new(|| b.chmod("run.sh", 0o700).unwrap()),
            vec!["attributes run.sh"],
        ),
        (
            "utimes dir",
            Box::new(|| {
                b.set_times("src", None, Some(std::time::SystemTime::UNIX_EPOCH))
                    .unwrap()
            }),
            vec!["attributes src/"],
        ),
        (
            "unlink (whiteout)",
            Box::new(|| b.unlink("src/main.rs").unwrap()),
            vec!["removed src/main.rs"],
        ),
        (
            "unlink symlink",
            Box::new(|| b.unlink("d/link").unwrap()),
            vec!["removed d/link"],
        ),
        (
            "rmdir of a non-empty dir fails",
            Box::new(|| {
                b.rmdir("src/nested").unwrap_err();
            }),
            vec![],
        ),
        (
            "remove_all",
            Box::new(|| b.remove_all("src/nested").unwrap()),
            vec!["removed src/nested/deep.txt", "removed src/nested/"],
        ),
        (
            "failed op",
            Box::new(|| {
                b.mkdir("d", 0o755).unwrap_err();
            }),
            vec![],
        ),
    ];
    for (what, op, want) in cases {
        let got = summaries(&s, op);
        assert_eq!(got, want, "{what}");
    }
}

#[test]
fn events_carry_sizes_kinds_and_order() {
    let (_t, s) = setup();
    s.create_branch("b", None, None).unwrap();
    let b = s.branch("b");
    let ev = events_of(&s, || {
        b.write_file("f", b"12345").unwrap();
        b.write_at("f", 8, b"ab").unwrap();
        b.truncate("f", 3).unwrap();
        b.unlink("f").unwrap();
        b.mkdir("d", 0o755).unwrap();
        b.rmdir("d").unwrap();
    });
    let got: Vec<(EventKind, Option<u64>, Option<u64>, bool)> = ev
        .iter()
        .map(|e| (e.kind.clone(), e.size_before, e.size_after, e.is_dir))
        .collect();
    assert_eq!(
        got,
        vec![
            (EventKind::Created, None, Some(5), false),
            (EventKind::Modified, Some(5), Some(10), false),
            (EventKind::Modified, Some(10), Some(3), false),
            (EventKind::Removed, Some(3), None, false),
            (EventKind::Created, None, None, true),
            (EventKind::Removed, None, None, true),
        ]
    );
    assert!(ev.windows(2).all(|w| w[0].seq < w[1].seq));
    assert!(ev.iter().all(|e| e.branch == "b" && e.pid == 0));
    let for_client = events_of(&s, || {
        b.clone().on_behalf_of(4242).write_file("g", b"x").unwrap();
    });
    assert_eq!(agentfs_host::loader::abi_event(&for_client[0]).pid, 4242);
    let c = agentfs_host::loader::abi_event(&ev[1]);
    assert_eq!(
        (c.kind, c.size_before, c.size_after),
        (AbiKind::MODIFIED, 5, 10)
    );
    let c = agentfs_host::loader::abi_event(&ev[4]);
    assert_eq!(
        (c.kind, c.size_before, c.is_dir),
        (AbiKind::CREATED, u64::MAX, true)
    );
}

#[test]
fn unsubscribed_and_other_subscribers() {
    let (_t, s) = setup();
    let a = s.subscribe();
    let b = s.subscribe();
    s.create_branch("x", None, None).unwrap();
    assert!(s.unsubscribe(b.id));
    s.branch("x").write_file("f", b"1").unwrap();
    assert_eq!(drain(&a), ["branch-created x", "created f"]);
    assert_eq!(drain(&b), ["branch-created x"]);
}

#[test]
fn xattr_changes_are_attribute_events() {
    let (_t, s) = setup();
    s.create_branch("b", None, None).unwrap();
    let b = s.branch("b");
    let name = std::ffi::OsStr::new("user.agentfs.test");
    let got = events_of(&s, || {
        if let Err(e) = b.set_xattr("README.md", name, b"1") {
            eprintln!("skipped: xattr events: {e}");
            return;
        }
        b.remove_xattr("README.md", name).unwrap();
    });
    if !got.is_empty() {
        let s: Vec<String> = got.iter().map(Event::summary).collect();
        assert_eq!(s, ["attributes README.md", "attributes README.md"]);
    }
}
