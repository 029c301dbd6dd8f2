//! Running `diskutil` and `hdiutil`: one place that spawns them, captures
//! their output, and turns a failure into one clear line with the closest
//! error code. Platform-independent: tests point the paths at fake scripts.

use std::{
    ffi::OsStr,
    fmt, io,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use agentfs_plugin_api::{ErrorCode, PluginError};

use crate::options::ApfsOptions;

/// Which external tool a command runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    /// `diskutil`: APFS containers, volumes and snapshots.
    Diskutil,
    /// `hdiutil`: attaching and detaching RAM disks.
    Hdiutil,
}

impl fmt::Display for Tool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Diskutil => "diskutil",
            Self::Hdiutil => "hdiutil",
        })
    }
}

/// The paths of the two tools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tools {
    /// `diskutil`.
    pub diskutil: PathBuf,
    /// `hdiutil`.
    pub hdiutil: PathBuf,
}

impl Default for Tools {
    fn default() -> Self {
        Self::from_options(&ApfsOptions::default())
    }
}

/// Why running a tool failed.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// The program could not be started.
    #[error("cannot run {tool} ({}): {source}{}", path.display(), hint(.source))]
    Spawn {
        /// Which tool.
        tool: Tool,
        /// The configured path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The program ran and exited unsuccessfully.
    #[error("`{command}` failed ({status}): {detail}")]
    Failed {
        /// Which tool.
        tool: Tool,
        /// The command line, for the message.
        command: String,
        /// How it exited.
        status: String,
        /// The most telling line of its output.
        detail: String,
        /// What kind of failure the output says it was.
        code: ErrorCode,
    },
    /// The program succeeded but printed something we cannot read.
    #[error("`{command}` succeeded but its output has no {what}: {excerpt:?}")]
    Unparsable {
        /// The command line, for the message.
        command: String,
        /// What was looked for.
        what: &'static str,
        /// The start of the output.
        excerpt: String,
    },
}

fn hint(e: &io::Error) -> &'static str {
    if e.kind() == io::ErrorKind::NotFound {
        " (set the tool's path in the apfs options)"
    } else {
        ""
    }
}

impl ToolError {
    /// The error code this failure maps to.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Spawn { source, .. } if source.kind() == io::ErrorKind::NotFound => {
                ErrorCode::NOT_FOUND
            }
            Self::Spawn { source, .. } if source.kind() == io::ErrorKind::PermissionDenied => {
                ErrorCode::PERMISSION_DENIED
            }
            Self::Spawn { .. } | Self::Unparsable { .. } => ErrorCode::IO,
            Self::Failed { code, .. } => *code,
        }
    }

    /// A parse failure of `command`'s `output`.
    pub fn unparsable(command: String, what: &'static str, output: &str) -> Self {
        Self::Unparsable {
            command,
            what,
            excerpt: output.chars().take(200).collect(),
        }
    }
}

impl From<ToolError> for PluginError {
    fn from(e: ToolError) -> Self {
        let errno = match &e {
            ToolError::Spawn { source, .. } => source.raw_os_error().unwrap_or(0),
            _ => 0,
        };
        PluginError {
            code: e.code(),
            errno,
            message: e.to_string().into(),
        }
    }
}

/// What a successful run printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// The command line, for messages.
    pub command: String,
    /// Standard output.
    pub stdout: String,
}

impl Tools {
    /// The tool paths the options name, or the standard ones.
    pub fn from_options(opts: &ApfsOptions) -> Self {
        Self {
            diskutil: opts.diskutil_path(),
            hdiutil: opts.hdiutil_path(),
        }
    }

    /// The path of `tool`.
    pub fn path(&self, tool: Tool) -> &Path {
        match tool {
            Tool::Diskutil => &self.diskutil,
            Tool::Hdiutil => &self.hdiutil,
        }
    }

    /// Runs `tool args...` with no stdin and the C locale; returns its stdout
    /// when it exits with 0, else a [`ToolError::Failed`] whose code is read
    /// off its output.
    pub fn run<S: AsRef<OsStr>>(&self, tool: Tool, args: &[S]) -> Result<Output, ToolError> {
        let path = self.path(tool);
        let command = std::iter::once(tool.to_string())
            .chain(
                args.iter()
                    .map(|a| a.as_ref().to_string_lossy().into_owned()),
            )
            .collect::<Vec<_>>()
            .join(" ");
        tracing::debug!(%command, path = %path.display(), "running");
        let out = spawn_retrying(|| {
            Command::new(path)
                .args(args)
                .env("LC_ALL", "C")
                .stdin(Stdio::null())
                .output()
        })
        .map_err(|source| ToolError::Spawn {
            tool,
            path: path.to_path_buf(),
            source,
        })?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            return Ok(Output { command, stdout });
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let status = match out.status.code() {
            Some(c) => format!("exit {c}"),
            None => "killed by a signal".to_string(),
        };
        let (code, detail) = classify_failure(&stdout, &stderr);
        Err(ToolError::Failed {
            tool,
            command,
            status,
            detail,
            code,
        })
    }
}

impl Tools {
    /// Runs `tool args...` and reads a value off its stdout with `read`;
    /// output without one is [`ToolError::Unparsable`] naming `what`.
    pub fn run_and_read<S: AsRef<OsStr>, T>(
        &self,
        tool: Tool,
        args: &[S],
        what: &'static str,
        read: impl FnOnce(&str) -> Option<T>,
    ) -> Result<T, ToolError> {
        let out = self.run(tool, args)?;
        read(&out.stdout).ok_or_else(|| ToolError::unparsable(out.command, what, &out.stdout))
    }
}

/// Starts a program, retrying while the kernel says `ETXTBSY`: a program
/// written just before (a test's fake tool) can still be open for writing
/// in a child another thread forked in between; that fd closes at the
/// child's exec, so the retry succeeds within a few attempts.
fn spawn_retrying<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    let mut attempts = 0;
    loop {
        match f() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempts < 50 => {
                attempts += 1;
                std::thread::yield_now();
                std::thread::sleep(std::time::Duration::from_millis(2 * attempts));
            }
            r => return r,
        }
    }
}

/// Reads a failed run's output: the most telling line, and the error code it
/// means. `diskutil` prints `Error: ...` or `... failed: ...` lines (on
/// stdout or stderr), `hdiutil` prints `hdiutil: <verb> failed - <reason>`;
/// an unknown verb gets a usage text.
pub fn classify_failure(stdout: &str, stderr: &str) -> (ErrorCode, String) {
    let lines = || {
        stderr
            .lines()
            .chain(stdout.lines())
            .map(str::trim)
            .filter(|l| !l.is_empty())
    };
    let is_error_line = |l: &&str| {
        let low = l.to_ascii_lowercase();
        low.starts_with("error") || low.contains("failed") || low.contains("error:")
    };
    let detail = lines()
        .find(is_error_line)
        .or_else(|| lines().next())
        .unwrap_or("no output")
        .to_string();
    let all = format!("{stderr}\n{stdout}").to_ascii_lowercase();
    let has = |needles: &[&str]| needles.iter().any(|n| all.contains(n));
    let code = if has(&[
        "usage:",
        "unknown verb",
        "unrecognized verb",
        "not a valid verb",
        "not supported",
        "unsupported",
    ]) {
        ErrorCode::UNSUPPORTED
    } else if has(&[
        "privilege",
        "permission denied",
        "not permitted",
        "must be run as root",
        "authoriz",
    ]) {
        ErrorCode::PERMISSION_DENIED
    } else if has(&[
        "not enough space",
        "no space",
        "not enough free space",
        "cannot allocate memory",
    ]) {
        ErrorCode::NO_SPACE
    } else if has(&["resource busy", "in use", "busy"]) {
        ErrorCode::BUSY
    } else if has(&[
        "could not find",
        "does not exist",
        "no such",
        "unable to find",
        "not found",
    ]) {
        ErrorCode::NOT_FOUND
    } else {
        ErrorCode::IO
    };
    let detail = if code == ErrorCode::UNSUPPORTED && lines().any(|l| l.starts_with("Usage:")) {
        format!("{detail} (this release of the tool does not have that verb)")
    } else {
        detail
    };
    (code, detail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakeTools;

    #[test]
    fn diskutil_error_lines_map_to_codes() {
        let cases: &[(&str, &str, ErrorCode, &str)] = &[
            (
                include_str!("../fixtures/diskutil-createSnapshot-privileges.txt"),
                "",
                ErrorCode::PERMISSION_DENIED,
                "Insufficient privileges",
            ),
            (
                include_str!("../fixtures/diskutil-apfs-usage.txt"),
                "",
                ErrorCode::UNSUPPORTED,
                "does not have that verb",
            ),
            (
                "",
                include_str!("../fixtures/hdiutil-attach-no-memory.txt"),
                ErrorCode::NO_SPACE,
                "attach failed",
            ),
            (
                "",
                include_str!("../fixtures/hdiutil-detach-busy.txt"),
                ErrorCode::BUSY,
                "Resource busy",
            ),
            (
                include_str!("../fixtures/diskutil-info-unknown-disk.txt"),
                "",
                ErrorCode::NOT_FOUND,
                "Could not find disk",
            ),
            (
                "",
                "something odd happened\n",
                ErrorCode::IO,
                "something odd",
            ),
            ("", "", ErrorCode::IO, "no output"),
        ];
        for (stdout, stderr, code, needle) in cases {
            let (c, detail) = classify_failure(stdout, stderr);
            assert_eq!(c, *code, "{stdout}{stderr}");
            assert!(detail.contains(needle), "{detail:?} lacks {needle:?}");
            assert!(!detail.contains('\n'));
        }
    }

    #[test]
    fn a_missing_tool_is_not_found_and_names_the_option() {
        let tools = Tools {
            diskutil: "/nonexistent/diskutil".into(),
            hdiutil: "/nonexistent/hdiutil".into(),
        };
        let e = tools.run(Tool::Diskutil, &["list"]).unwrap_err();
        assert_eq!(e.code(), ErrorCode::NOT_FOUND);
        let pe = PluginError::from(e);
        assert_eq!(pe.errno, libc::ENOENT);
        assert!(pe.message().contains("/nonexistent/diskutil"), "{pe}");
        assert!(pe.message().contains("apfs options"), "{pe}");
    }

    #[test]
    fn a_failing_tool_gives_one_line_with_command_status_and_reason() {
        let fake = FakeTools::new();
        fake.script(
            Tool::Hdiutil,
            "echo 'hdiutil: detach failed - Resource busy' >&2; exit 16",
        );
        let e = fake.tools().run(Tool::Hdiutil, &["detach", "/dev/disk4"]);
        let e = PluginError::from(e.unwrap_err());
        assert_eq!(e.code, ErrorCode::BUSY);
        assert_eq!(
            e.message(),
            "`hdiutil detach /dev/disk4` failed (exit 16): hdiutil: detach failed - Resource busy"
        );
        assert_eq!(fake.calls(), vec!["hdiutil detach /dev/disk4"]);
    }

    #[test]
    fn stdout_of_a_successful_run_is_returned_and_args_are_passed_verbatim() {
        let fake = FakeTools::new();
        fake.script(Tool::Diskutil, "printf '%s|' \"$@\"");
        let out = fake
            .tools()
            .run(
                Tool::Diskutil,
                &["apfs", "addVolume", "disk5", "APFS", "a b"],
            )
            .unwrap();
        assert_eq!(out.stdout, "apfs|addVolume|disk5|APFS|a b|");
        assert_eq!(out.command, "diskutil apfs addVolume disk5 APFS a b");
    }
}
