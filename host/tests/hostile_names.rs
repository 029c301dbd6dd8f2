//! Names that are not UTF-8 or hold control characters: text output
//! (`diff`, `fs ls`) quotes them as git does, so a name cannot forge a line;
//! `--json` carries them exactly (`path_bytes`, `name_bytes`), through the
//! daemon too.

mod common;

use std::{
    ffi::{OsStr, OsString},
    fs,
    os::unix::ffi::{OsStrExt, OsStringExt},
    time::Duration,
};

use common::hostile::{output_within, Served};

const NEWLINE: &str = "harmless\nD README.md";
const NOT_UTF8: &[u8] = b"\xff\xfe.txt";

fn sample(base: &std::path::Path) {
    fs::write(base.join("README.md"), b"readme").unwrap();
    fs::create_dir(base.join("d")).unwrap();
    fs::write(base.join("d").join(NEWLINE), b"n").unwrap();
    fs::write(base.join("d").join(OsStr::from_bytes(NOT_UTF8)), b"x").unwrap();
    fs::write(base.join("d/ok.txt"), b"ok").unwrap();
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

fn bytes(v: &serde_json::Value) -> Vec<u8> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_u64().unwrap() as u8)
        .collect()
}

fn check(s: &Served) {
    // Text: one line per change, nothing forged, odd names quoted.
    let diff = s.ok(&["diff", "--branch", "b"]);
    let lines: Vec<&str> = diff.lines().collect();
    assert_eq!(lines.len(), 8, "{diff}");
    assert!(!lines.contains(&"D README.md"), "a forged line: {diff}");
    assert!(lines.contains(&"A \"d2/harmless\\nD README.md\""), "{diff}");
    assert!(lines.contains(&"A \"d2/\\377\\376.txt\""), "{diff}");
    assert!(lines.contains(&"D \"d/\\377\\376.txt\""), "{diff}");
    assert!(lines.contains(&"A d2/ok.txt"), "{diff}");
    // JSON: exact.
    let v = json(&s.ok(&["diff", "--branch", "b", "--json"]));
    let changes = v["changes"].as_array().unwrap();
    assert!(changes
        .iter()
        .any(|c| c["path"] == "d2/harmless\nD README.md"));
    let exact: Vec<Vec<u8>> = changes
        .iter()
        .filter(|c| c.get("path_bytes").is_some())
        .map(|c| bytes(&c["path_bytes"]))
        .collect();
    assert_eq!(exact.len(), 2, "{changes:?}");
    assert!(exact.contains(&[b"d2/".as_slice(), NOT_UTF8].concat()));
    // fs ls: text quoted, JSON exact.
    let ls = s.ok(&["fs", "ls", "--branch", "b", "d2"]);
    let mut got: Vec<&str> = ls.lines().collect();
    got.sort();
    assert_eq!(
        got,
        ["\"\\377\\376.txt\"", "\"harmless\\nD README.md\"", "ok.txt"],
        "{ls}"
    );
    // ls -l stats every entry, whatever its name's bytes.
    let long = s.ok(&["fs", "ls", "-l", "--branch", "b", "d2"]);
    assert_eq!(long.lines().count(), 3, "{long}");
    assert!(
        !long.contains('?'),
        "an entry listed without its stat: {long}"
    );
    let line = long.lines().find(|l| l.contains("\\377")).unwrap();
    assert!(line.starts_with("-rw"), "{line}");
    assert!(line.ends_with("\"\\377\\376.txt\""), "{line}");
    let v = json(&s.ok(&["fs", "ls", "--json", "--branch", "b", "d2"]));
    let entries = v["entries"].as_array().unwrap();
    assert!(entries.iter().any(|e| e["name"] == NEWLINE), "{entries:?}");
    assert!(
        entries
            .iter()
            .any(|e| e.get("name_bytes").map(bytes).as_deref() == Some(NOT_UTF8)),
        "{entries:?}"
    );
}

#[test]
fn odd_names_are_quoted_in_text_and_exact_in_json() {
    let s = Served::new(sample);
    s.ok(&["fs", "mv", "--branch", "b", "d", "d2"]);
    check(&s);
}

#[test]
fn odd_names_are_quoted_in_text_and_exact_in_json_through_the_daemon() {
    let s = Served::new(sample);
    let _d = s.serve();
    s.ok(&["fs", "mv", "--branch", "b", "d", "d2"]);
    check(&s);
}

/// Runs `agentfs fs <args>` with arguments that need not be UTF-8; returns
/// stdout's bytes.
fn fs_os(s: &Served, args: &[&[u8]]) -> Vec<u8> {
    let mut c = s.cmd(&["fs"]);
    c.args(args.iter().map(|a| OsStr::from_bytes(a)));
    let o = output_within(c, Duration::from_secs(60), "agentfs fs");
    assert!(
        o.status.success(),
        "agentfs fs {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}

fn names(dir: &std::path::Path) -> Vec<OsString> {
    let mut v: Vec<OsString> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    v.sort();
    v
}

/// Every `fs` command names an entry by its exact bytes.
fn address(s: &Served) {
    let base_before = names(&s.base().join("d"));
    let bad = [b"d/".as_slice(), NOT_UTF8].concat();
    assert_eq!(fs_os(s, &[b"cat", b"--branch", b"b", &bad]), b"x");
    let stat = fs_os(s, &[b"stat", b"--json", b"--branch", b"b", &bad]);
    let v = json(std::str::from_utf8(&stat).unwrap());
    assert_eq!(v["size"], 1, "{v}");
    // Write, rename, read back, link to, remove: all by bytes.
    let cafe: &[u8] = b"d/caf\xe9";
    fs_os(s, &[b"write", b"--branch", b"b", b"--data", b"hello", cafe]);
    assert_eq!(fs_os(s, &[b"cat", b"--branch", b"b", cafe]), b"hello");
    let moved: &[u8] = b"d/\xe9t\xe9";
    fs_os(s, &[b"mv", b"--branch", b"b", cafe, moved]);
    assert_eq!(fs_os(s, &[b"cat", b"--branch", b"b", moved]), b"hello");
    fs_os(s, &[b"symlink", b"--branch", b"b", b"\xe9t\xe9", b"d/link"]);
    assert_eq!(
        fs_os(s, &[b"readlink", b"--branch", b"b", b"d/link"]),
        b"\xe9t\xe9\n"
    );
    fs_os(s, &[b"mkdir", b"--branch", b"b", b"d/\xfedir"]);
    fs_os(s, &[b"rm", b"--branch", b"b", &bad]);
    let diff = s.ok(&["diff", "--branch", "b"]);
    let mut lines: Vec<&str> = diff.lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        [
            "A \"d/\\351t\\351\"",
            "A \"d/\\376dir/\"",
            "A d/link",
            "D \"d/\\377\\376.txt\"",
        ],
        "{diff}"
    );
    // The base is untouched.
    assert_eq!(names(&s.base().join("d")), base_before);
    assert_eq!(
        fs::read(s.base().join("d").join(OsStr::from_bytes(NOT_UTF8))).unwrap(),
        b"x"
    );
    assert!(!s
        .base()
        .join("d")
        .join(OsString::from_vec(b"caf\xe9".to_vec()))
        .exists());
}

#[test]
fn names_that_are_not_utf8_are_addressed_by_their_bytes() {
    let s = Served::new(sample);
    address(&s);
}

#[test]
fn names_that_are_not_utf8_are_addressed_by_their_bytes_through_the_daemon() {
    let s = Served::new(sample);
    let _d = s.serve();
    address(&s);
}
