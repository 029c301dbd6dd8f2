//! Names that are not UTF-8 or hold control characters: text output
//! (`diff`, `fs ls`) quotes them as git does, so a name cannot forge a line;
//! `--json` carries them exactly (`path_bytes`, `name_bytes`), through the
//! daemon too.

mod common;

use std::{ffi::OsStr, fs, os::unix::ffi::OsStrExt};

use common::hostile::Served;

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
    // ls -l lists every entry (one whose name is not UTF-8 without its
    // stat: requests carry paths as UTF-8) instead of failing.
    let long = s.ok(&["fs", "ls", "-l", "--branch", "b", "d2"]);
    assert_eq!(long.lines().count(), 3, "{long}");
    assert!(long.contains("\"\\377\\376.txt\""), "{long}");
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
