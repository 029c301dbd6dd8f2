//! Fake `diskutil` and `hdiutil` for the Linux-run tests: shell scripts
//! written to a temporary directory at test time. Each logs its command
//! line (`<tool> <args...>`) to a shared file, then does what the test says:
//! print a fixture, fail with one, or run a `case` over its arguments.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use crate::tools::{Tool, Tools};

/// A directory holding fake tools and their call log.
pub struct FakeTools {
    dir: tempfile::TempDir,
    log: PathBuf,
    seq: std::cell::Cell<u32>,
}

fn quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}

impl FakeTools {
    /// Empty fakes: both tools log their call and succeed silently.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("calls.log");
        fs::write(&log, "").unwrap();
        let f = Self {
            dir,
            log,
            seq: std::cell::Cell::new(0),
        };
        f.script(Tool::Diskutil, "exit 0");
        f.script(Tool::Hdiutil, "exit 0");
        f
    }

    /// The tool paths to hand to the code under test.
    pub fn tools(&self) -> Tools {
        Tools {
            diskutil: self.path(Tool::Diskutil),
            hdiutil: self.path(Tool::Hdiutil),
        }
    }

    /// The scratch directory (for fake mount points).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn path(&self, tool: Tool) -> PathBuf {
        self.dir.path().join(tool.to_string())
    }

    /// Writes `text` to a file in the fake's directory and returns its path.
    pub fn fixture(&self, stem: &str, text: &str) -> PathBuf {
        let n = self.seq.get();
        self.seq.set(n + 1);
        let p = self.dir.path().join(format!("{stem}-{n}.out"));
        fs::write(&p, text).unwrap();
        p
    }

    /// Makes `tool` log its call, then run the shell `body`.
    pub fn script(&self, tool: Tool, body: &str) {
        let text = format!(
            "#!/bin/sh\nprintf '%s\\n' \"{tool} $*\" >> {}\n{body}\n",
            quote(&self.log)
        );
        let p = self.path(tool);
        let tmp = p.with_extension("tmp");
        fs::write(&tmp, text).unwrap();
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755)).unwrap();
        fs::rename(&tmp, &p).unwrap();
    }

    /// Makes `tool` print `text` and succeed.
    pub fn prints(&self, tool: Tool, text: &str) {
        let f = self.fixture(&tool.to_string(), text);
        self.script(tool, &format!("cat {}", quote(&f)));
    }

    /// Makes `tool` print `text` on stderr and exit with `code`.
    pub fn fails(&self, tool: Tool, text: &str, code: i32) {
        let f = self.fixture(&tool.to_string(), text);
        self.script(tool, &format!("cat {} >&2; exit {code}", quote(&f)));
    }

    /// The calls made so far, one `<tool> <args...>` line each, in order.
    pub fn calls(&self) -> Vec<String> {
        fs::read_to_string(&self.log)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }
}
