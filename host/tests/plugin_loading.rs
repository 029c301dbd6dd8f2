//! The host loads real plugin libraries and reports every kind of broken
//! plugin with one clear line, without aborting. Plugins come from the
//! target dir (`cargo build --workspace` first).

mod common;

use std::{path::PathBuf, process::Command};

use common::target_dir;

use agentfs_host::{
    config::{Config, ConfigSource, PluginEntry},
    loader::{load_backstore, load_watch_provider, LoadError, SearchPath},
};

fn lib(name: &str) -> PathBuf {
    let p = target_dir().join(format!(
        "{}{name}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ));
    assert!(
        p.is_file(),
        "{} is not built: run `cargo build --workspace` first",
        p.display()
    );
    p
}

fn search() -> SearchPath {
    SearchPath(vec![target_dir()])
}

/// Each broken plugin, the role it is configured in, and what the message must say.
fn broken_cases() -> Vec<(&'static str, String, &'static str)> {
    let faulty = lib("fixture_faulty").display().to_string();
    vec![
        (
            "missing file",
            "[backstore]\npath = \"/nonexistent/libagentfs_backstore_gone.so\"\n".into(),
            "no such file",
        ),
        (
            "not a shared library",
            format!(
                "[backstore]\npath = {:?}\n",
                concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")
            ),
            "not a loadable shared library",
        ),
        (
            "not an AgentFS plugin",
            format!(
                "[backstore]\npath = {:?}\n",
                lib("fixture_not_a_plugin").display().to_string()
            ),
            "not an AgentFS plugin",
        ),
        (
            "ABI mismatch",
            format!(
                "[backstore]\npath = {:?}\n",
                lib("fixture_future_abi").display().to_string()
            ),
            "built for plugin ABI version 2, but this host speaks ABI version 1",
        ),
        (
            "layout mismatch",
            format!(
                "[backstore]\npath = {:?}\n",
                lib("fixture_layout_mismatch").display().to_string()
            ),
            "has an incompatible ABI layout: mismatched package in type BackstorePlugin: expected agentfs-plugin-api, found agentfs-fixture-layout-mismatch",
        ),
        (
            "descriptor without a root module",
            format!(
                "[backstore]\npath = {:?}\n",
                lib("fixture_descriptor_only").display().to_string()
            ),
            "has the AgentFS descriptor but no abi_stable root module",
        ),
        (
            "wrong kind",
            "[backstore]\nplugin = \"mock\"\n[[watch]]\nplugin = \"mock\"\n".into(),
            "is a backstore plugin, but it is configured as a watch-provider",
        ),
        (
            "constructor error",
            format!(
                "[backstore]\npath = {faulty:?}\noptions = {{ fail = \"constructor-error\" }}\n"
            ),
            "failed to start: fixture-faulty: deliberate constructor error",
        ),
        (
            "constructor panic",
            format!(
                "[backstore]\npath = {faulty:?}\noptions = {{ fail = \"constructor-panic\" }}\n"
            ),
            "constructor panicked",
        ),
        (
            "bad options",
            "[backstore]\nplugin = \"mock\"\noptions = { parnet = \"/tmp\" }\n".into(),
            "invalid options for plugin 'mock': unknown field `parnet`",
        ),
        (
            "unknown name",
            "[backstore]\nplugin = \"nosuch\"\n".into(),
            "plugin 'nosuch': not found",
        ),
    ]
}

#[test]
fn every_broken_plugin_is_one_clear_line_and_the_host_survives() {
    for (what, cfg_text, needle) in broken_cases() {
        let cfg = Config::parse(&cfg_text, ConfigSource::Embedded).unwrap();
        let err: LoadError = if cfg.watch.is_empty() {
            load_backstore(&cfg.backstore, &search()).unwrap_err()
        } else {
            load_watch_provider(&cfg.watch[0], &search()).unwrap_err()
        };
        let msg = err.to_string();
        assert!(msg.contains(needle), "{what}: {msg}");
        assert!(
            msg.starts_with("plugin '"),
            "{what}: does not name the plugin: {msg}"
        );
        assert_eq!(msg.lines().count(), 1, "{what}: not one line: {msg}");
    }
    // After all of that, this process still loads and uses a good plugin.
    let b = load_backstore(&PluginEntry::named("mock"), &search()).unwrap();
    b.create_layer("still-alive").unwrap();
}

#[test]
fn the_cli_reports_broken_plugins_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    for (what, cfg_text, needle) in broken_cases() {
        let cfg = dir.path().join("agentfs.toml");
        std::fs::write(&cfg, cfg_text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_agentfs"))
            .arg("--config")
            .arg(&cfg)
            .args(["status"])
            .env("AGENTFS_PLUGIN_PATH", target_dir())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        // Exit code 1 (an error), not a signal: the host did not abort.
        assert_eq!(out.status.code(), Some(1), "{what}: {stderr}");
        let lines: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.starts_with("agentfs plugin: panic at"))
            .collect();
        if what != "wrong kind" {
            assert_eq!(lines.len(), 1, "{what}: {stderr}");
            assert!(
                lines[0].starts_with("agentfs: error: plugin '") && lines[0].contains(needle),
                "{what}: {stderr}"
            );
        }
    }
}

#[test]
fn watch_providers_are_loaded_by_status_too() {
    // `status` validates the whole plugin list, so a misconfigured watch
    // provider is reported even though status only shows the backstore.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("agentfs.toml");
    std::fs::write(
        &cfg,
        "[backstore]\nplugin = \"mock\"\n[[watch]]\nplugin = \"mock\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_agentfs"))
        .arg("--config")
        .arg(&cfg)
        .arg("status")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("configured as a watch-provider"),
        "{stderr}"
    );
}

#[test]
fn plugins_list_shows_mock_and_hostfs_with_capabilities() {
    let out = Command::new(env!("CARGO_BIN_EXE_agentfs"))
        .args(["plugins", "list", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let plugins = v["plugins"].as_array().unwrap();
    let find = |n: &str| {
        plugins
            .iter()
            .find(|p| p["name"] == n)
            .unwrap_or_else(|| panic!("{n} missing: {v}"))
            .clone()
    };
    let mock = find("mock");
    assert_eq!(mock["kind"], "backstore");
    assert_eq!(mock["abi_version"], 1);
    assert!(mock["capabilities"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c == "ram_backed"));
    let hostfs = find("hostfs");
    assert!(hostfs["capabilities"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c == "persistent"));
    assert!(hostfs["path"].as_str().unwrap().ends_with(&format!(
        "agentfs_backstore_hostfs{}",
        std::env::consts::DLL_SUFFIX
    )));
    // Fixtures and the example are not named like plugins and are not listed.
    assert!(!plugins
        .iter()
        .any(|p| p["name"] == "faulty" || p["name"] == "example"));
}

#[test]
fn status_reports_the_configured_backstore() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("agentfs.toml");
    std::fs::write(
        &cfg,
        format!(
            "[backstore]\nplugin = \"hostfs\"\noptions = {{ root = {:?} }}\n",
            dir.path().join("store").display().to_string()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_agentfs"))
        .arg("--config")
        .arg(&cfg)
        .args(["status", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let b = &v["backstore"];
    assert_eq!(b["plugin"], "hostfs");
    assert_eq!(b["root"], dir.path().join("store").display().to_string());
    assert!(b["capacity_bytes"].as_u64().unwrap() > 0);
    assert!(b["used_bytes"].as_u64().unwrap() <= b["capacity_bytes"].as_u64().unwrap());
    assert!(!b["fs_type"].as_str().unwrap().is_empty());
    assert!(b["capabilities"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c == "persistent"));
    // Text output too.
    let out = Command::new(env!("CARGO_BIN_EXE_agentfs"))
        .arg("--config")
        .arg(&cfg)
        .arg("status")
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        s.contains("backstore:    hostfs") && s.contains("capacity:"),
        "{s}"
    );
}

#[test]
fn a_bad_config_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("agentfs.toml");
    std::fs::write(&cfg, "[backstore]\nplugin = \"mock\"\n\n[backstroe]\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_agentfs"))
        .arg("--config")
        .arg(&cfg)
        .arg("status")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains(&format!("{}:4:", cfg.display())) && stderr.contains("backstroe"),
        "{stderr}"
    );
}
