//! The conformance suite against the built apfs plugin: on macOS on an APFS
//! RAM disk (every applicable check must pass); elsewhere the suite's
//! wrong-platform check must pass and every other check is skipped.
//! Plugins are loaded from the target dir (`cargo build --workspace` first).

use agentfs_conformance::{run, Outcome, Report, Target};

fn outcome<'a>(r: &'a Report, name: &str) -> &'a Outcome {
    &r.get(name)
        .unwrap_or_else(|| panic!("{name} did not run:\n{}", r.to_text()))
        .outcome
}

#[cfg(not(target_os = "macos"))]
#[test]
fn conformance_off_macos_is_a_clean_wrong_platform_refusal() {
    let r = run(&Target::name("apfs").with_options("ramdisk = { size_mb = 512 }"));
    eprint!("{}", r.to_text());
    r.assert_all_passed();
    assert_eq!(
        outcome(&r, "backstore.construct.wrong_platform"),
        &Outcome::Passed
    );
    assert_eq!(r.plugin.as_ref().unwrap().platforms, "macos");
    assert!(r.skipped() > 0);
}

#[cfg(target_os = "macos")]
#[test]
fn conformance_on_an_apfs_ram_disk() {
    let r = run(&Target::name("apfs").with_options("ramdisk = { size_mb = 512 }"));
    eprint!("{}", r.to_text());
    if matches!(outcome(&r, "backstore.construct"), Outcome::Failed(_))
        && !agentfs_testfs::require_cow()
    {
        agentfs_testfs::skip(
            "conformance_on_an_apfs_ram_disk",
            "the RAM disk backstore did not construct",
        );
        return;
    }
    r.assert_all_passed();
    for must_run in [
        "backstore.reflink.independence",
        "backstore.snapshot.unsupported",
    ] {
        assert_eq!(outcome(&r, must_run), &Outcome::Passed, "{must_run}");
    }
}
