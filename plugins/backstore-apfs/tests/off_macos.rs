//! Off macOS the apfs plugin loads, says it is for macOS, and refuses to
//! construct with one clear line naming the platform. These tests load the
//! built library through the host, as `agentfs` does.
#![cfg(not(target_os = "macos"))]

use std::path::PathBuf;

use agentfs_host::{
    config::PluginEntry,
    loader::{self, library_file_name, LoadError, SearchPath},
};
use agentfs_plugin_api::{ErrorCode, PluginKind};

/// `target/debug` (the test binary lives in `target/debug/deps`).
use agentfs_testfs::target_dir;

fn plugin_file() -> PathBuf {
    let p = agentfs_testfs::built(&library_file_name(PluginKind::BACKSTORE, "apfs"));
    assert!(p.is_file(), "{} is missing after building", p.display());
    p
}

#[test]
fn plugin_loads_and_its_info_says_macos() {
    let d = loader::inspect(&plugin_file()).unwrap();
    assert_eq!(d.name, "apfs");
    assert_eq!(d.kind, "backstore");
    assert_eq!(d.platforms, "macos");
    assert!(d.description.starts_with("macOS only"), "{}", d.description);
}

#[test]
fn construction_fails_with_one_line_naming_the_platform() {
    let mut entry = PluginEntry::named("apfs");
    let ramdisk: toml::Table = toml::from_str("size_mb = 512").unwrap();
    entry.options.insert("ramdisk".into(), ramdisk.into());
    let err = match loader::load_backstore(&entry, &SearchPath(vec![target_dir()])) {
        Ok(_) => panic!(
            "the apfs backstore must not construct on {}",
            std::env::consts::OS
        ),
        Err(e) => e,
    };
    let line = err.to_string();
    match &err {
        LoadError::Constructor { name, error } => {
            assert_eq!(name, "apfs");
            assert_eq!(error.code, ErrorCode::WRONG_PLATFORM, "{line}");
        }
        other => panic!("expected a constructor error, got: {other}"),
    }
    assert!(!line.contains('\n'), "not one line: {line}");
    assert!(
        line.starts_with("plugin 'apfs': failed to start: "),
        "{line}"
    );
    assert!(line.contains("only on macOS"), "{line}");
    assert!(line.contains(std::env::consts::OS), "{line}");
    assert!(line.ends_with("(wrong-platform)"), "{line}");
}

#[test]
fn plugins_list_shows_it_as_a_macos_plugin() {
    let so = plugin_file();
    let found = loader::scan_dirs(&SearchPath(vec![target_dir()]));
    assert!(found.contains(&so), "{found:?}");

    let agentfs = target_dir().join("agentfs");
    if !agentfs.is_file() {
        eprintln!(
            "skipped: `agentfs plugins list` part: {} is not built (cargo build --workspace)",
            agentfs.display()
        );
        return;
    }
    let out = std::process::Command::new(&agentfs)
        .args([
            "--plugin-dir",
            &target_dir().display().to_string(),
            "plugins",
            "list",
        ])
        .env_remove("AGENTFS_CONFIG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let header = stdout.lines().next().unwrap_or("");
    assert!(header.contains("PLATFORMS"), "{stdout}");
    let row = stdout
        .lines()
        .find(|l| l.starts_with("apfs "))
        .unwrap_or_else(|| panic!("no apfs row in:\n{stdout}"));
    assert!(
        row.contains("backstore") && row.contains(" macos "),
        "{row}"
    );
    assert!(row.ends_with(&so.display().to_string()), "{row}");
}
