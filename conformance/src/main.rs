//! `agentfs-conformance`: certify a plugin against the AgentFS contract.

use std::{path::PathBuf, process::ExitCode};

use agentfs_conformance::{run, Outcome, Target};
use clap::{Parser, ValueEnum};

/// Runs every conformance check that applies to a plugin's kind and
/// capabilities, prints a report and exits non-zero on any failure.
#[derive(Parser, Debug)]
#[command(name = "agentfs-conformance", version, about)]
struct Args {
    /// Plugin name (found in the search path) or path to its library.
    plugin: String,
    /// TOML file with the plugin's options (its options table).
    #[arg(long, value_name = "FILE")]
    options: Option<PathBuf>,
    /// Report format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Extra plugin directory, searched first (repeatable).
    #[arg(long = "plugin-dir", value_name = "DIR")]
    plugin_dirs: Vec<PathBuf>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Format {
    Text,
    Json,
    Junit,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let options = match &args.options {
        None => String::new(),
        Some(f) => match std::fs::read_to_string(f) {
            Ok(s) => s,
            Err(e) => {
                eprintln!(
                    "agentfs-conformance: error: cannot read options file {}: {e}",
                    f.display()
                );
                return ExitCode::from(2);
            }
        },
    };
    let target = if args.plugin.contains('/') || std::path::Path::new(&args.plugin).is_file() {
        Target::path(&args.plugin)
    } else {
        Target::name(&args.plugin)
    }
    .with_options(&options)
    .with_search_dirs(&args.plugin_dirs);
    let report = run(&target);
    // A plugin that cannot even be loaded: one clear line, exit 2.
    if report.plugin.is_none() {
        if let Some(Outcome::Failed(why)) = report.checks.first().map(|c| &c.outcome) {
            eprintln!("agentfs-conformance: error: {why}");
        }
        if !matches!(args.format, Format::Text) {
            print_report(&report, args.format);
        }
        return ExitCode::from(2);
    }
    print_report(&report, args.format);
    if report.failed() > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn print_report(report: &agentfs_conformance::Report, format: Format) {
    match format {
        Format::Text => print!("{}", report.to_text()),
        Format::Json => println!("{}", report.to_json()),
        Format::Junit => println!("{}", report.to_junit()),
    }
}
