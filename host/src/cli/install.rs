//! `agentfs install`, `agentfs completions` and `agentfs man`: putting the
//! binary and its plugins under a prefix, and the shell completions and man
//! pages generated from the command-line definitions.
//!
//! The layout under a prefix is the one `agentfs` searches for plugins
//! (`<exe dir>/../lib/agentfs/plugins`):
//!
//! ```text
//! bin/agentfs
//! lib/agentfs/plugins/libagentfs_<kind>_<name>.so
//! share/man/man1/agentfs.1, agentfs-<command>.1, ...
//! share/bash-completion/completions/agentfs
//! share/zsh/site-functions/_agentfs
//! share/fish/vendor_completions.d/agentfs.fish
//! ```
//!
//! Every file is written under a temporary name in its final directory,
//! synced, then renamed over the old one: a running `agentfs` or a reader
//! never sees a half-written file, and a failure leaves the previous file.

use std::{
    fs::{self, File},
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    process::ExitCode,
};

use agentfs_host::{loader, Host};
use anyhow::{Context, Result};
use clap_complete::Shell;

/// Arguments of `agentfs install`.
#[derive(clap::Args, Debug)]
pub struct InstallArgs {
    /// Installation prefix: the binary goes to DIR/bin, plugins to
    /// DIR/lib/agentfs/plugins, man pages and completions under DIR/share.
    #[arg(long, value_name = "DIR")]
    prefix: PathBuf,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `agentfs man`.
#[derive(clap::Args, Debug)]
pub struct ManArgs {
    /// Write agentfs.1 and one page per subcommand (agentfs-branch.1, ...)
    /// into DIR instead of printing agentfs.1.
    #[arg(long, value_name = "DIR")]
    out_dir: Option<PathBuf>,
}

/// The shells `agentfs install` writes completions for, and where under
/// the prefix each looks for them.
const INSTALLED_SHELLS: [(Shell, &str, &str); 3] = [
    (Shell::Bash, "share/bash-completion/completions", "agentfs"),
    (Shell::Zsh, "share/zsh/site-functions", "_agentfs"),
    (
        Shell::Fish,
        "share/fish/vendor_completions.d",
        "agentfs.fish",
    ),
];

/// Where man pages go under the prefix.
const MAN_DIR: &str = "share/man/man1";

/// The completion script for `shell`.
fn completion_script(mut cmd: clap::Command, shell: Shell) -> Vec<u8> {
    let name = cmd.get_name().to_string();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, name, &mut out);
    out
}

/// Every man page: (file name, roff), the top-level page first.
fn man_pages(cmd: clap::Command) -> Result<Vec<(String, Vec<u8>)>> {
    fn walk(cmd: clap::Command, out: &mut Vec<(String, Vec<u8>)>) -> io::Result<()> {
        let man = clap_mangen::Man::new(cmd.clone());
        let mut roff = Vec::new();
        man.render(&mut roff)?;
        out.push((man.get_filename(), roff));
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            walk(sub.clone(), out)?;
        }
        Ok(())
    }
    // Built, so subcommands carry their full names (`agentfs-branch`).
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let mut out = Vec::new();
    walk(cmd, &mut out).context("render the man pages")?;
    Ok(out)
}

/// `agentfs completions SHELL`: the completion script on stdout.
pub fn completions(cmd: clap::Command, shell: Shell) -> Result<ExitCode> {
    io::stdout()
        .write_all(&completion_script(cmd, shell))
        .context("write to stdout")?;
    Ok(ExitCode::SUCCESS)
}

/// `agentfs man [--out-dir DIR]`: the top-level page on stdout, or every
/// page written into DIR.
pub fn man(cmd: clap::Command, args: ManArgs) -> Result<ExitCode> {
    let pages = man_pages(cmd)?;
    match args.out_dir {
        None => {
            let (_, roff) = &pages[0];
            io::stdout().write_all(roff).context("write to stdout")?;
        }
        Some(dir) => {
            make_dirs(&dir)?;
            for (name, roff) in &pages {
                let p = put_file(&dir, name, 0o644, |f| f.write_all(roff))?;
                println!("{}", p.display());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One plugin `agentfs install` copied.
#[derive(serde::Serialize)]
struct InstalledPlugin {
    name: String,
    kind: String,
    version: String,
    from: PathBuf,
    path: PathBuf,
    /// Why the host would refuse the installed file (e.g. a group-writable
    /// directory on its path), if it would.
    #[serde(skip_serializing_if = "Option::is_none")]
    refused: Option<String>,
}

/// `agentfs install --prefix DIR`: this binary, every plugin in the search
/// path (the first of each file name, as the host would load it), the man
/// pages and the bash, zsh and fish completions.
pub fn install(h: &Host, cmd: clap::Command, args: InstallArgs) -> Result<ExitCode> {
    let prefix = std::path::absolute(&args.prefix)
        .with_context(|| format!("prefix {}", args.prefix.display()))?;
    let exe = std::env::current_exe().context("find the agentfs executable")?;

    // Inspect before writing anything: a plugin the host cannot load is
    // not installed.
    let mut plugins = Vec::new();
    let mut skipped = Vec::new();
    for path in loader::scan_dirs(&h.search) {
        match loader::inspect(&path) {
            Ok(d) => plugins.push(d),
            Err(e) => skipped.push(serde_json::json!({
                "path": path,
                "error": e.to_string(),
            })),
        }
    }

    let bin_dir = prefix.join("bin");
    make_dirs(&bin_dir)?;
    let binary = put_file(&bin_dir, "agentfs", 0o755, |f| copy_from(&exe, f))?;

    let plugin_dir = prefix.join(loader::PREFIX_PLUGIN_DIR);
    make_dirs(&plugin_dir)?;
    let mut installed = Vec::new();
    for d in plugins {
        let name = d.path.file_name().context("a plugin file has a name")?;
        let name = name.to_str().context("plugin file names are UTF-8")?;
        let path = put_file(&plugin_dir, name, 0o755, |f| copy_from(&d.path, f))?;
        let refused = loader::check_file(&path).err().map(|p| p.to_string());
        installed.push(InstalledPlugin {
            name: d.name,
            kind: d.kind,
            version: d.version,
            from: d.path,
            path,
            refused,
        });
    }

    let man_dir = prefix.join(MAN_DIR);
    make_dirs(&man_dir)?;
    let mut man = Vec::new();
    for (name, roff) in man_pages(cmd.clone())? {
        man.push(put_file(&man_dir, &name, 0o644, |f| f.write_all(&roff))?);
    }

    let mut completions = Vec::new();
    for (shell, dir, name) in INSTALLED_SHELLS {
        let dir = prefix.join(dir);
        make_dirs(&dir)?;
        let script = completion_script(cmd.clone(), shell);
        completions.push(put_file(&dir, name, 0o644, |f| f.write_all(&script))?);
    }

    if args.json {
        let v = serde_json::json!({
            "prefix": prefix,
            "binary": binary,
            "plugins": installed,
            "skipped": skipped,
            "man_pages": man,
            "completions": completions,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("installed {} (from {})", binary.display(), exe.display());
        for p in &installed {
            println!(
                "installed {} ({} {} {}, from {})",
                p.path.display(),
                p.kind,
                p.name,
                p.version,
                p.from.display()
            );
        }
        println!("installed {} man pages in {}", man.len(), man_dir.display());
        for c in &completions {
            println!("installed {}", c.display());
        }
        for s in &skipped {
            eprintln!(
                "agentfs: warning: not installed: {}",
                s["error"].as_str().unwrap_or_default()
            );
        }
    }
    for p in installed.iter().filter(|p| p.refused.is_some()) {
        eprintln!(
            "agentfs: warning: {} {}",
            p.path.display(),
            p.refused.as_deref().unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Creates `dir` and its missing parents, mode 0755 (less the umask): a
/// directory others may write to would make the host refuse its plugins.
fn make_dirs(dir: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .with_context(|| format!("create {}", dir.display()))
}

fn copy_from(src: &Path, to: &mut File) -> io::Result<()> {
    io::copy(&mut File::open(src)?, to).map(drop)
}

/// Writes `dir/name` atomically: `fill` writes a temporary file in `dir`,
/// which gets `mode`, is synced, and is renamed over `dir/name`.
fn put_file(
    dir: &Path,
    name: &str,
    mode: u32,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> Result<PathBuf> {
    let dest = dir.join(name);
    let tmp = dir.join(format!(".{name}.agentfs-install-{}", std::process::id()));
    let written = (|| {
        // Left by an earlier run of the same pid that was killed.
        let _ = fs::remove_file(&tmp);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        fill(&mut f)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        fs::rename(&tmp, &dest)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("install {}", dest.display()));
    }
    Ok(dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temporary() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("f"), b"old").unwrap();
        let e = put_file(t.path(), "f", 0o644, |f| {
            f.write_all(b"half")?;
            Err(io::Error::other("disk full"))
        })
        .unwrap_err();
        assert!(format!("{e:#}").contains("disk full"), "{e:#}");
        assert_eq!(fs::read(t.path().join("f")).unwrap(), b"old");
        assert_eq!(fs::read_dir(t.path()).unwrap().count(), 1);
        put_file(t.path(), "f", 0o640, |f| f.write_all(b"new")).unwrap();
        assert_eq!(fs::read(t.path().join("f")).unwrap(), b"new");
        let mode = fs::metadata(t.path().join("f"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o640);
    }
}
