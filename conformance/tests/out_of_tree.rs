//! Plugins built the way third parties build them: crates outside the
//! workspace, against the in-tree agentfs-plugin-api by path. Each test
//! builds its crate (into `target/out-of-tree`, shared, so dependencies
//! compile once) and certifies or loads the result:
//! - the guide's own code blocks, followed literally;
//! - the `agentfs plugin new` templates, as generated;
//! - the guide's plugin built against the ABI traits' previous shape;
//! - the guide's plugin built with `panic = "abort"`.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use agentfs_conformance::{run, target_dir, Target};
use agentfs_host::{
    config::PluginEntry,
    loader::{
        load_backstore,
        template::{generate, ApiSource, TemplateKind},
        LoadError,
    },
};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("conformance/ has a parent")
        .to_path_buf()
}

fn out_of_tree_target() -> PathBuf {
    target_dir()
        .parent()
        .map(|t| t.join("out-of-tree"))
        .expect("target/debug has a parent")
}

/// Builds the crate in `dir` and returns its cdylib named `lib`. The
/// workspace's lock file pins the same dependency versions the workspace
/// build already fetched, so the build works offline.
fn build(dir: &Path, lib: &str) -> PathBuf {
    std::fs::copy(workspace_root().join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args(["build", "--offline", "--quiet", "--target-dir"])
        .arg(out_of_tree_target())
        .current_dir(dir)
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo build in {} failed:\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let p = out_of_tree_target().join("debug").join(format!(
        "{}{lib}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ));
    assert!(p.is_file(), "{} was not built", p.display());
    p
}

fn certify(lib: &Path, options: &str) {
    let r = run(&Target::path(lib).with_options(options));
    eprint!("{}", r.to_text());
    r.assert_all_passed();
    assert!(r.passed() >= 10, "too few checks ran:\n{}", r.to_text());
}

fn root_option(dir: &Path) -> String {
    format!("root = {:?}", dir.display().to_string())
}

/// The guide's files: each fenced block preceded by `<!-- guide-file: X -->`.
fn guide_files() -> Vec<(String, String)> {
    let guide = std::fs::read_to_string(workspace_root().join("docs/plugin-authoring.md")).unwrap();
    let mut out = Vec::new();
    let mut rest = guide.as_str();
    while let Some(i) = rest.find("<!-- guide-file: ") {
        rest = &rest[i + "<!-- guide-file: ".len()..];
        let name = rest[..rest.find(" -->").unwrap()].to_string();
        let fence = rest.find("```").unwrap();
        let body_start = fence + rest[fence..].find('\n').unwrap() + 1;
        let body_len = rest[body_start..].find("\n```").unwrap() + 1;
        out.push((name, rest[body_start..body_start + body_len].to_string()));
        rest = &rest[body_start + body_len..];
    }
    out
}

#[test]
fn the_guides_code_is_the_example_crate() {
    let files = guide_files();
    let lib = files
        .iter()
        .find(|(n, _)| n == "src/lib.rs")
        .expect("the guide marks its src/lib.rs");
    let example =
        std::fs::read_to_string(workspace_root().join("examples/backstore-example/src/lib.rs"))
            .unwrap();
    assert_eq!(
        lib.1, example,
        "docs/plugin-authoring.md's src/lib.rs differs from examples/backstore-example/src/lib.rs: copy the file into the guide"
    );
}

#[test]
fn the_guide_followed_literally_gives_a_certified_plugin() {
    let t = tempfile::tempdir().unwrap();
    // The guide's layout: an AgentFS checkout next to the plugin's crate.
    std::os::unix::fs::symlink(workspace_root(), t.path().join("agentfs")).unwrap();
    let krate = t.path().join("mystore");
    let files = guide_files();
    assert!(
        files.iter().any(|(n, _)| n == "Cargo.toml"),
        "the guide marks its Cargo.toml"
    );
    for (name, body) in files {
        let p = krate.join(&name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }
    let lib = build(&krate, "agentfs_backstore_mystore");
    certify(&lib, &root_option(&t.path().join("cert")));
}

#[test]
fn the_backstore_template_certifies_as_generated() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("agentfs-backstore-tmplstore");
    let api = ApiSource::Checkout(workspace_root());
    generate(TemplateKind::Backstore, "tmplstore", &dir, &api).unwrap();
    let lib = build(&dir, "agentfs_backstore_tmplstore");
    let r = run(&Target::path(&lib).with_options(&root_option(&t.path().join("cert"))));
    r.assert_all_passed();
    assert_eq!(r.plugin.as_ref().unwrap().name, "tmplstore");
}

#[test]
fn the_watch_provider_template_certifies_as_generated() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("agentfs-watch-tmplwatch");
    let api = ApiSource::Checkout(workspace_root());
    generate(TemplateKind::WatchProvider, "tmplwatch", &dir, &api).unwrap();
    let lib = build(&dir, "agentfs_watch_tmplwatch");
    let r = run(&Target::path(&lib));
    eprint!("{}", r.to_text());
    r.assert_all_passed();
    assert_eq!(r.plugin.as_ref().unwrap().name, "tmplwatch");
}

#[test]
fn a_plugin_built_before_a_method_was_appended_loads_and_answers_unsupported() {
    let lib = build(
        &workspace_root().join("conformance/fixtures/previous-shape"),
        "fixture_previous_shape",
    );
    let t = tempfile::tempdir().unwrap();
    let entry = PluginEntry {
        plugin: None,
        path: Some(lib.clone()),
        options: toml::from_str(&root_option(t.path())).unwrap(),
    };
    let b = load_backstore(&entry, &Default::default()).unwrap();
    // The appended method is absent from this plugin's vtable: the host
    // gets the default body's `Unsupported`, shown as nothing reclaimed.
    assert_eq!(b.reclaimed().unwrap(), Vec::<String>::new());
    b.create_layer("still-works").unwrap();
    certify(&lib, &root_option(&t.path().join("cert")));
}

#[test]
fn a_plugin_built_with_panic_abort_is_refused_in_one_line() {
    let lib = build(
        &workspace_root().join("conformance/fixtures/panic-abort"),
        "fixture_panic_abort",
    );
    let t = tempfile::tempdir().unwrap();
    let entry = PluginEntry {
        plugin: None,
        path: Some(lib.clone()),
        options: toml::from_str(&root_option(t.path())).unwrap(),
    };
    let e = load_backstore(&entry, &Default::default()).unwrap_err();
    assert!(matches!(e, LoadError::PanicAbort { .. }), "{e}");
    let msg = e.to_string();
    assert_eq!(msg.lines().count(), 1, "{msg}");
    assert!(msg.contains("panic = \"abort\""), "{msg}");
    // The conformance binary refuses it too, with that line and exit 2,
    // instead of dying with SIGABRT at the first panic.
    let out = Command::new(env!("CARGO_BIN_EXE_agentfs-conformance"))
        .arg(&lib)
        .arg("--options")
        .arg({
            let o = t.path().join("opts.toml");
            std::fs::write(&o, root_option(&t.path().join("cert"))).unwrap();
            o
        })
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(all.contains("panic = \"abort\""), "{all}");
}
