//! Installing: plugins found under `<exe dir>/../lib/agentfs/plugins`.

mod common;

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use agentfs_testfs::output_retrying_etxtbsy;
use common::*;

/// `exe` with an environment that names no plugin directory and no config.
fn agentfs_at(exe: &Path, scratch: &Path) -> Command {
    let mut c = Command::new(exe);
    c.env_remove("AGENTFS_PLUGIN_PATH")
        .env_remove("AGENTFS_CONFIG")
        .env_remove("AGENTFS_BACKSTORE")
        .env_remove("AGENTFS_BACKSTORE_OPTIONS")
        .env_remove("AGENTFS_LOG")
        .env("AGENTFS_SOCKET", scratch.join("no-daemon.sock"))
        // The embedded default keeps its hostfs store here; nothing is
        // created unless a command opens it.
        .env("XDG_DATA_HOME", scratch.join("data"))
        .current_dir(scratch);
    c
}

fn ok(c: &mut Command) -> String {
    let o: Output = output_retrying_etxtbsy(c);
    assert!(
        o.status.success(),
        "{c:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

fn copy_with_mode(from: &Path, to: &Path, mode: u32) {
    fs::copy(from, to).unwrap();
    fs::set_permissions(to, fs::Permissions::from_mode(mode)).unwrap();
}

/// Creates `p` and its parents, none writable by group or others (the
/// loader refuses plugins under such directories).
fn mkdirs(p: &Path) {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(p)
        .unwrap();
}

/// The plugin paths `plugins list --json` reports.
fn listed(out: &str) -> Vec<(String, PathBuf)> {
    json(out)["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                PathBuf::from(p["path"].as_str().unwrap()),
            )
        })
        .collect()
}

#[test]
fn an_install_prefix_finds_its_plugins_in_lib_agentfs_plugins() {
    let t = tempfile::tempdir().unwrap();
    let prefix = t.path().join("prefix");
    let plugins = prefix.join("lib/agentfs/plugins");
    mkdirs(&prefix.join("bin"));
    mkdirs(&plugins);
    let exe = prefix.join("bin/agentfs");
    copy_with_mode(Path::new(env!("CARGO_BIN_EXE_agentfs")), &exe, 0o755);
    let mock_name = plugin_lib("mock").file_name().unwrap().to_owned();
    copy_with_mode(&plugin_lib("mock"), &plugins.join(&mock_name), 0o755);

    let found = listed(&ok(
        agentfs_at(&exe, t.path()).args(["plugins", "list", "--json"])
    ));
    assert_eq!(
        found,
        vec![("mock".to_string(), plugins.join(&mock_name))],
        "the only plugin is the one under lib/agentfs/plugins"
    );

    // The search order: the executable's directory, then the prefix's.
    let show = ok(agentfs_at(&exe, t.path()).args(["config", "show"]));
    let dirs: Vec<&str> = show
        .lines()
        .skip_while(|l| *l != "plugin search path:")
        .skip(1)
        .map(str::trim)
        .collect();
    assert_eq!(
        &dirs[..2],
        &[
            prefix.join("bin").to_str().unwrap(),
            plugins.to_str().unwrap()
        ],
        "{show}"
    );

    // Found by name, the plugin also loads from there.
    let st = json(&ok(agentfs_at(&exe, t.path()).args([
        "--backstore",
        "mock",
        "status",
        "--json",
    ])));
    assert_eq!(
        st["backstore"]["path"].as_str().unwrap(),
        plugins.join(&mock_name).to_str().unwrap()
    );
}
