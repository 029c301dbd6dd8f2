//! Runs the conformance suite against every in-tree plugin and fixture.
//! Plugins are loaded from the target dir (`cargo build --workspace` first).

use std::{path::PathBuf, process::Command};

use agentfs_conformance::{Outcome, Report, Target};
use agentfs_testfs::{mount_or_skip, FsKind};

fn lib(name: &str) -> PathBuf {
    let p = agentfs_testfs::built(&format!(
        "{}{name}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ));
    assert!(p.is_file(), "{} is missing after building", p.display());
    p
}

/// Certifies `t`, the workspace's plugins built first if need be.
fn run(t: &Target) -> Report {
    lib("agentfs_backstore_mock");
    agentfs_conformance::run(t)
}

fn hostfs_on(root: &std::path::Path) -> Target {
    Target::name("hostfs").with_options(&format!("root = {:?}", root.display().to_string()))
}

fn assert_ran(report: &Report, name: &str) {
    match &report
        .get(name)
        .unwrap_or_else(|| panic!("{name} did not run"))
        .outcome
    {
        Outcome::Passed => {}
        other => panic!("{name}: {other:?}\n{}", report.to_text()),
    }
}

#[test]
fn mock_passes_every_check() {
    let r = run(&Target::name("mock"));
    eprint!("{}", r.to_text());
    r.assert_all_passed();
    assert_ran(&r, "backstore.reflink.independence");
    assert_ran(&r, "backstore.snapshot.unsupported");
    assert_eq!(r.plugin.as_ref().unwrap().name, "mock");
    for c in [
        "overlay.copy_up_then_snapshot",
        "overlay.branch_from_snapshot_isolation",
        "overlay.events.create_write_rename_unlink",
        "overlay.ram_backed.nothing_outside_root",
        // Reported whether or not it fails, so every report names it.
        "overlay.store.cleanup",
    ] {
        assert_ran(&r, c);
    }
}

#[test]
fn overlay_checks_leave_an_existing_store_as_it_was() {
    use agentfs_core::{InitOptions, LockWait, Store};
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("store");
    let base = t.path().join("base");
    std::fs::create_dir_all(&base).unwrap();
    std::fs::write(base.join("f"), b"f").unwrap();
    let load = || {
        agentfs_host::loader::load_backstore(
            &agentfs_host::config::PluginEntry {
                plugin: None,
                path: Some(lib("agentfs_backstore_hostfs")),
                options: toml::from_str(&format!("root = {:?}", root.display().to_string()))
                    .unwrap(),
            },
            &Default::default(),
        )
        .unwrap()
    };
    {
        let s = Store::init(
            load(),
            InitOptions {
                default_base: Some(base.clone()),
                compact_threshold: None,
            },
            LockWait::Block,
        )
        .unwrap();
        s.create_branch("mine", None, None).unwrap();
        s.branch("mine").write_file("g", b"g").unwrap();
        s.create_snapshot("mine", Some("keep")).unwrap();
    }
    let r = run(&hostfs_on(&root));
    r.assert_all_passed();
    assert_ran(&r, "overlay.copy_up_then_snapshot");
    let s = Store::open(load(), LockWait::Block).unwrap();
    let names: Vec<_> = s
        .list_branches()
        .unwrap()
        .into_iter()
        .map(|b| b.name)
        .collect();
    assert_eq!(names, ["mine"]);
    assert_eq!(s.list_snapshots().unwrap().len(), 1);
    assert_eq!(s.branch("mine").read_file("g").unwrap(), b"g");
    let mut present = s.layer_store().list_layers().unwrap();
    present.sort();
    assert_eq!(present, s.layers_in_use().unwrap());
}

#[test]
fn mock_without_reflink_passes_and_reports_unsupported() {
    let r = run(&Target::name("mock").with_options("reflink = false"));
    r.assert_all_passed();
    assert_ran(&r, "backstore.reflink.capability_agrees");
    assert!(matches!(
        r.get("backstore.reflink.independence").unwrap().outcome,
        Outcome::Skipped(_)
    ));
}

#[test]
fn hostfs_passes_on_the_plain_disk() {
    let t = tempfile::tempdir().unwrap();
    let r = run(&hostfs_on(t.path()));
    eprint!("{}", r.to_text());
    r.assert_all_passed();
}

#[test]
fn hostfs_passes_with_real_reflinks_on_btrfs_and_xfs() {
    for kind in [FsKind::Btrfs, FsKind::Xfs] {
        let Some(fs) = mount_or_skip(kind, 320, "hostfs_passes_with_real_reflinks") else {
            continue;
        };
        let r = run(&hostfs_on(&fs.path().join("store")));
        eprint!("[{kind}] {}", r.to_text());
        r.assert_all_passed();
        assert_ran(&r, "backstore.reflink.content_identical");
        assert_ran(&r, "backstore.reflink.independence");
    }
}

#[test]
fn hostfs_on_ext4_and_tmpfs_reports_reflink_unsupported() {
    for kind in [FsKind::Ext4, FsKind::Tmpfs] {
        let Some(fs) = mount_or_skip(kind, 64, "hostfs_on_ext4_and_tmpfs") else {
            continue;
        };
        let r = run(&hostfs_on(&fs.path().join("store")));
        r.assert_all_passed();
        assert_ran(&r, "backstore.reflink.capability_agrees");
        assert!(matches!(
            r.get("backstore.reflink.content_identical")
                .unwrap()
                .outcome,
            Outcome::Skipped(_)
        ));
    }
}

#[test]
fn the_documented_example_plugin_is_certified() {
    let t = tempfile::tempdir().unwrap();
    let r = run(&Target::path(lib("example_backstore"))
        .with_options(&format!("root = {:?}", t.path().display().to_string())));
    eprint!("{}", r.to_text());
    r.assert_all_passed();
    assert_eq!(r.plugin.as_ref().unwrap().name, "mystore");
}

#[test]
fn a_plugin_that_panics_yields_panicked_and_the_process_survives() {
    let r = run(&Target::path(lib("fixture_faulty")).with_options("fail = \"method-panic\""));
    assert!(r.failed() >= 5, "{}", r.to_text());
    for c in &r.checks {
        if let Outcome::Failed(why) = &c.outcome {
            assert!(why.contains("(panicked)"), "{}: {why}", c.name);
        }
    }
    // The process is alive and can still load and use a healthy plugin.
    run(&Target::name("mock")).assert_all_passed();
}

#[test]
fn constructor_failures_are_reported_not_fatal() {
    let r = run(&Target::path(lib("fixture_faulty")).with_options("fail = \"constructor-panic\""));
    match &r.get("backstore.construct").unwrap().outcome {
        Outcome::Failed(why) => assert!(why.contains("constructor panicked"), "{why}"),
        o => panic!("{o:?}"),
    }
    let r = run(&Target::path(lib("fixture_faulty")).with_options("fail = \"constructor-error\""));
    match &r.get("backstore.construct").unwrap().outcome {
        Outcome::Failed(why) => assert!(
            why.contains("deliberate constructor error") && why.contains("permission-denied"),
            "{why}"
        ),
        o => panic!("{o:?}"),
    }
}

#[test]
fn non_plugins_fail_to_load_with_one_reason() {
    for (p, needle) in [
        (lib("fixture_not_a_plugin"), "not an AgentFS plugin"),
        (lib("fixture_future_abi"), "ABI version 2"),
        (
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"),
            "not a loadable shared library",
        ),
        (
            PathBuf::from("/nonexistent/libagentfs_backstore_x.so"),
            "no such file",
        ),
    ] {
        let r = run(&Target::path(&p));
        assert!(r.plugin.is_none());
        match &r.checks[0].outcome {
            Outcome::Failed(why) => assert!(why.contains(needle), "{}: {why}", p.display()),
            o => panic!("{o:?}"),
        }
    }
}

fn conformance_bin() -> Command {
    lib("agentfs_backstore_mock");
    Command::new(env!("CARGO_BIN_EXE_agentfs-conformance"))
}

#[test]
fn binary_prints_counts_and_exit_codes() {
    let out = conformance_bin().arg("mock").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let last = stdout.lines().last().unwrap();
    assert!(
        last.ends_with("skipped") && last.contains(" passed, 0 failed, "),
        "{last}"
    );

    let libc = [
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/lib/aarch64-linux-gnu/libc.so.6",
        "/usr/lib/libc.so.6",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists());
    let not_plugin = libc
        .map(PathBuf::from)
        .unwrap_or_else(|| lib("fixture_not_a_plugin"));
    let out = conformance_bin().arg(&not_plugin).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("not an AgentFS plugin"), "{stderr}");

    let opts = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(opts.path(), "fail = \"method-panic\"").unwrap();
    let out = conformance_bin()
        .arg(lib("fixture_faulty"))
        .arg("--options")
        .arg(opts.path())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "a failing plugin must exit 1, not abort"
    );
}

#[test]
fn binary_json_and_junit_formats() {
    let out = conformance_bin()
        .args(["mock", "--format", "json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["failed"], 0);
    assert!(v["passed"].as_u64().unwrap() >= 10);
    assert_eq!(v["plugin"]["name"], "mock");
    let out = conformance_bin()
        .args(["mock", "--format", "junit"])
        .output()
        .unwrap();
    let xml = String::from_utf8_lossy(&out.stdout);
    assert!(
        xml.contains("<testsuite") && xml.contains("backstore.reflink.independence"),
        "{xml}"
    );
}

#[test]
fn the_three_watch_providers_pass_every_check() {
    for (name, only) in [
        ("kqueue", "watch.kqueue.fd_re_add"),
        ("fsevents", "watch.fsevents.visible_root"),
        ("inotify", "watch.inotify.oneshot"),
    ] {
        let r = run(&Target::name(name));
        eprint!("{}", r.to_text());
        r.assert_all_passed();
        assert_eq!(r.plugin.as_ref().unwrap().name, name);
        assert_eq!(r.plugin.as_ref().unwrap().kind, "watch-provider");
        for check in [
            "watch.events.created.in_watched_dir",
            "watch.events.renamed.within_watched_dir",
            "watch.events.removed.watched_file",
            "watch.branch_isolation",
            "watch.coalesce.burst",
            "watch.encode.layout",
            "watch.arbitrary_input",
            only,
        ] {
            assert_ran(&r, check);
        }
        let table_rows = r
            .checks
            .iter()
            .filter(|c| c.name.starts_with("watch.events."))
            .count();
        assert_eq!(
            table_rows,
            agentfs_conformance::watch_tables::SCENARIOS.len()
        );
    }
}

#[test]
fn watch_provider_options_are_checked() {
    let r = run(&Target::name("inotify").with_options("queue = 3"));
    match &r.get("watch.construct").unwrap().outcome {
        Outcome::Failed(why) => assert!(why.contains("queue"), "{why}"),
        o => panic!("{o:?}"),
    }
}

#[test]
fn a_declared_but_missing_reflink_fails_in_a_readable_summary() {
    let r =
        run(&Target::path(lib("fixture_faulty")).with_options("fail = \"reflink-unimplemented\""));
    let c = r
        .get("backstore.reflink.independence")
        .expect("the property check ran");
    let Outcome::Failed(why) = &c.outcome else {
        panic!("expected a failure: {:?}", c.outcome);
    };
    // The reason and the failing case's sizes, not proptest's dump of the
    // shrunk byte arrays.
    assert!(!why.contains("minimal failing input"), "{why}");
    assert!(why.contains("minimal failing case"), "{why}");
    assert_eq!(why.lines().count(), 1, "{why}");
    assert!(why.len() < 300, "{} bytes: {why}", why.len());
}
