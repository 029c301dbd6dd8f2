//! Installing: plugins found under `<exe dir>/../lib/agentfs/plugins`,
//! `agentfs install --prefix`, and the completions and man pages generated
//! from the command definitions.

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

/// Files in `dir` whose names start with a dot (install's temporaries).
fn dot_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            out.extend(dot_files(&e.path()));
        } else if e.file_name().to_string_lossy().starts_with('.') {
            out.push(e.path());
        }
    }
    out
}

#[test]
fn install_puts_the_binary_plugins_man_pages_and_completions_under_a_prefix() {
    let t = tempfile::tempdir().unwrap();
    let prefix = t.path().join("usr");
    let built = Path::new(env!("CARGO_BIN_EXE_agentfs"));
    let report = json(&ok(agentfs_at(built, t.path()).args([
        "install",
        "--prefix",
        prefix.to_str().unwrap(),
        "--json",
    ])));
    let exe = prefix.join("bin/agentfs");
    assert_eq!(report["binary"].as_str().unwrap(), exe.to_str().unwrap());
    assert_eq!(fs::read(&exe).unwrap(), fs::read(built).unwrap());
    assert_eq!(
        fs::metadata(&exe).unwrap().permissions().mode() & 0o777,
        0o755
    );
    let plugin_dir = prefix.join("lib/agentfs/plugins");
    let installed: Vec<&str> = report["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for name in ["mock", "hostfs", "btrfs", "inotify", "kqueue", "fsevents"] {
        assert!(installed.contains(&name), "{name} not installed: {report}");
    }
    for p in report["plugins"].as_array().unwrap() {
        let to = Path::new(p["path"].as_str().unwrap());
        assert_eq!(to.parent().unwrap(), plugin_dir);
        assert_eq!(
            fs::read(to).unwrap(),
            fs::read(p["from"].as_str().unwrap()).unwrap()
        );
        assert!(p.get("refused").is_none(), "{p}");
    }
    let man = prefix.join("share/man/man1");
    for page in ["agentfs.1", "agentfs-branch.1", "agentfs-branch-create.1"] {
        assert!(man.join(page).is_file(), "{page} missing");
    }
    for c in [
        "share/bash-completion/completions/agentfs",
        "share/zsh/site-functions/_agentfs",
        "share/fish/vendor_completions.d/agentfs.fish",
    ] {
        let text = fs::read_to_string(prefix.join(c)).unwrap();
        assert!(text.contains("snapshot"), "{c}: {text}");
    }
    assert_eq!(dot_files(&prefix), Vec::<PathBuf>::new());

    // The installed binary finds the installed plugins, and only those
    // (its bin directory holds no plugin).
    let found = listed(&ok(
        agentfs_at(&exe, t.path()).args(["plugins", "list", "--json"])
    ));
    assert_eq!(found.len(), installed.len(), "{found:?}");
    assert!(found.iter().all(|(_, p)| p.parent() == Some(&*plugin_dir)));

    // Installing again from the installed copy replaces the running
    // executable (by rename: writing into it would be ETXTBSY) and says so.
    let text =
        ok(agentfs_at(&exe, t.path()).args(["install", "--prefix", prefix.to_str().unwrap()]));
    assert!(
        text.lines()
            .any(|l| l.starts_with(&format!("installed {} ", exe.display()))),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "installed {}",
            plugin_dir
                .join(plugin_lib("mock").file_name().unwrap())
                .display()
        )),
        "{text}"
    );
    assert_eq!(dot_files(&prefix), Vec::<PathBuf>::new());
}

#[test]
fn completions_and_man_pages_come_from_the_command_definitions() {
    let t = tempfile::tempdir().unwrap();
    let built = Path::new(env!("CARGO_BIN_EXE_agentfs"));
    for shell in ["bash", "zsh", "fish"] {
        let script = ok(agentfs_at(built, t.path()).args(["completions", shell]));
        for word in ["branch", "snapshot", "serve", "install", "prefix"] {
            assert!(script.contains(word), "{shell}: no {word} in {script}");
        }
    }
    let roff = ok(agentfs_at(built, t.path()).arg("man"));
    assert!(roff.starts_with(".ie"), "not roff: {roff}");
    assert!(roff.contains(".TH agentfs 1"), "{roff}");
    for word in ["branch", "snapshot", "serve", "completions"] {
        assert!(roff.contains(word), "no {word} in {roff}");
    }
    let dir = t.path().join("man");
    let listed = ok(agentfs_at(built, t.path()).args(["man", "--out-dir", dir.to_str().unwrap()]));
    let page = fs::read_to_string(dir.join("agentfs-snapshot-create.1")).unwrap();
    assert!(page.contains("\\-\\-branch"), "{page}");
    assert_eq!(listed.lines().count(), fs::read_dir(&dir).unwrap().count());
}
