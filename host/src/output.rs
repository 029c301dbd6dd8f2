//! How the `agentfs` binary talks to its terminal: standard output that
//! may be a pipe closed early (`agentfs diff | head -1`), log lines without
//! colour codes unless stderr is a terminal, and one line per error.

use std::io::Write;

/// Restores the default action of SIGPIPE (the Rust runtime ignores it),
/// so a command whose standard output is closed early ends quietly, as
/// `ls`, `cat` and `git` do, instead of failing on `EPIPE`. Not for the
/// daemon: a reader that goes away must never kill it. Sockets never raise
/// SIGPIPE here (sends use `MSG_NOSIGNAL` or `SO_NOSIGPIPE`).
pub fn default_sigpipe() {
    // SAFETY: setting a signal's disposition to SIG_DFL has no
    // preconditions; no handler is installed.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}

/// Ignores SIGPIPE again (the daemon: a client or a log reader that goes
/// away must never kill it; writes then fail with `EPIPE` instead).
pub fn ignore_sigpipe() {
    // SAFETY: as in `default_sigpipe`; SIG_IGN installs no handler.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
}

/// True when log lines may carry ANSI colours: stderr is a terminal.
pub fn log_colours() -> bool {
    std::io::IsTerminal::is_terminal(&std::io::stderr())
}

/// Prints one line on standard output, ignoring a closed or failing
/// stdout (for the daemon's status lines: nobody may be reading them).
pub fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// A name or path for one line of text output, quoted the way git quotes
/// paths when it could be misread: a name holding a control character (a
/// newline could forge a line), a byte that is not UTF-8, `"` or `\` is
/// printed in double quotes with C escapes (`\n`, `\t`, `\"`, `\\`, and
/// `\ooo` in octal for other control and non-UTF-8 bytes); anything else
/// as it is. JSON output carries names exactly instead.
pub fn quoted(raw: &[u8]) -> std::borrow::Cow<'_, str> {
    use std::fmt::Write as _;
    let plain = std::str::from_utf8(raw)
        .ok()
        .filter(|s| !s.chars().any(|c| c.is_control() || c == '"' || c == '\\'));
    if let Some(s) = plain {
        return s.into();
    }
    let mut out = String::from("\"");
    for chunk in raw.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                '\r' => out.push_str("\\r"),
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => {
                    let mut b = [0u8; 4];
                    for byte in c.encode_utf8(&mut b).bytes() {
                        let _ = write!(out, "\\{byte:03o}");
                    }
                }
                c => out.push(c),
            }
        }
        for byte in chunk.invalid() {
            let _ = write!(out, "\\{byte:03o}");
        }
    }
    out.push('"');
    out.into()
}

/// An error and its causes on one line, each said once: a cause whose
/// text the message before it already ends with (an OS error an error
/// type both displays and exposes as its source) is not repeated.
pub fn error_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.is_empty() && out.ends_with(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("open f: {source}")]
    struct Shows {
        source: std::io::Error,
    }

    #[test]
    fn names_that_could_be_misread_are_quoted() {
        assert_eq!(quoted(b"src/main.rs"), "src/main.rs");
        assert_eq!(quoted("été".as_bytes()), "été");
        assert_eq!(
            quoted(b"harmless\nD README.md"),
            "\"harmless\\nD README.md\""
        );
        assert_eq!(quoted(b"a\xff\xfeb"), "\"a\\377\\376b\"");
        assert_eq!(quoted(b"q\"\\\x1b[31m"), "\"q\\\"\\\\\\033[31m\"");
        assert_eq!(quoted("\u{85}".as_bytes()), "\"\\302\\205\"");
    }

    #[test]
    fn an_os_error_is_said_once() {
        let e = anyhow::Error::new(Shows {
            source: std::io::Error::from_raw_os_error(libc::ENOENT),
        });
        let line = error_line(&e);
        assert_eq!(line.matches("os error 2").count(), 1, "{line}");
        let e = anyhow::Error::new(std::io::Error::from_raw_os_error(libc::ENOENT))
            .context("reading stdin");
        assert!(error_line(&e).starts_with("reading stdin: "), "{e:#}");
    }
}
