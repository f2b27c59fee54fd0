//! `ingot`, the person-facing command. This file owns the process edges only: the arguments
//! in, reading the node and the allocations file, output and exit codes (0 done, 1 failed,
//! 2 usage). The CDI spec is `ingot_devices::nvidia`'s. What the report says and how it looks is `report`'s; the grammar is `args`'.

use std::{
    ffi::OsString,
    fs,
    io::{self, Write},
    path::Path,
    process::ExitCode,
};

use anyhow::Context;
use ingot_placement::CheckpointEntry;

mod args;
mod report;

use args::{CdiGenerateArgs, Command, ReportArgs};

fn main() -> ExitCode {
    let argv: Vec<OsString> = std::env::args_os().skip(1).collect();
    match args::parse(argv) {
        Ok(Command::Help(topic)) => print(topic.usage()),
        Ok(Command::NodeReport(args)) => match node_report(&args) {
            Ok(text) => print(&text),
            Err(err) => {
                eprint(&format!("ingot: {err:#}\n"));
                ExitCode::FAILURE
            }
        },
        Ok(Command::CdiGenerateNvidia(args)) => match cdi_generate(&args) {
            Ok(Some(json)) => print(&json),
            Ok(None) => ExitCode::SUCCESS,
            Err(err) => {
                eprint(&format!("ingot: {err:#}\n"));
                ExitCode::FAILURE
            }
        },
        Err(usage) => {
            eprint(&format!(
                "ingot: {}\n\n{}",
                usage.message,
                usage.topic.usage()
            ));
            ExitCode::from(2)
        }
    }
}

fn node_report(args: &ReportArgs) -> anyhow::Result<String> {
    let topology = ingot_topology::discover(&args.root)
        .with_context(|| format!("discovering the node under {}", args.root.display()))?;
    let entries = read_allocations(&args.allocations)?;
    let readiness = ingot_rt::assess(&args.root)
        .with_context(|| format!("real-time checks under {}", args.root.display()))?;
    let report = report::with_held_devices(
        report::with_readiness(
            report::with_tuning(
                report::build(topology, entries),
                read_tuning(&args.allocations.with_file_name(TUNING_FILE))?,
            ),
            readiness,
        ),
        read_held(&args.allocations.with_file_name(DEVICES_FILE))?,
    );
    if args.json {
        report::render_json(&report).context("writing the report as JSON")
    } else {
        Ok(report::render_table(&report))
    }
}

/// The NVIDIA CDI spec of the node under `args.root`: written to `args.output` (None returned),
/// or returned as JSON for stdout.
fn cdi_generate(args: &CdiGenerateArgs) -> anyhow::Result<Option<String>> {
    let spec =
        ingot_devices::nvidia::generate(&args.root).context("generating the NVIDIA CDI spec")?;
    match &args.output {
        Some(output) => {
            ingot_devices::nvidia::write_spec(&spec, output)
                .with_context(|| format!("writing the CDI spec to {}", output.display()))?;
            Ok(None)
        }
        None => {
            let mut json =
                serde_json::to_string_pretty(&spec).context("writing the CDI spec as JSON")?;
            json.push('\n');
            Ok(Some(json))
        }
    }
}

/// The checkpoint's containers, or None where the file does not exist: ingotd writes it on
/// the first placement, so its absence is a node without allocations, not a failure.
fn read_allocations(path: &Path) -> anyhow::Result<Option<Vec<CheckpointEntry>>> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => {
            return Err(err).with_context(|| format!("reading allocations {}", path.display()))
        }
    };
    ingot_placement::read_checkpoint(&bytes)
        .map(Some)
        .with_context(|| format!("reading allocations {}", path.display()))
}

/// ingotd's tuning mirror, beside the placement checkpoint.
const TUNING_FILE: &str = "tuning.json";

/// ingotd's devices mirror, beside the placement checkpoint.
const DEVICES_FILE: &str = "devices.json";

/// The PCI functions pods hold, as ingotd's mirror says; none where there is no mirror.
fn read_held(path: &Path) -> anyhow::Result<Vec<report::Held>> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("reading held devices {}", path.display())),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(err) => Err(err).with_context(|| format!("reading held devices {}", path.display())),
    }
}

/// What ingotd's tuning mirror holds; nothing tuned where there is none.
fn read_tuning(path: &Path) -> anyhow::Result<report::Tuned> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("reading tuning {}", path.display())),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(report::Tuned::default()),
        Err(err) => Err(err).with_context(|| format!("reading tuning {}", path.display())),
    }
}

/// Writes to stdout. A reader that went away (`ingot node report | head`) is not an error
/// worth a message; `println!` would panic on it.
fn print(text: &str) -> ExitCode {
    let mut stdout = io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(err) => {
            eprint(&format!("ingot: writing the output: {err}\n"));
            ExitCode::FAILURE
        }
    }
}

/// Writes to stderr; if even that fails there is nowhere left to say so.
fn eprint(text: &str) {
    let _ = io::stderr().write_all(text.as_bytes());
}
