//! The command line, parsed by hand (two flags with values do not justify a parser dependency):
//! which command runs with which options, and the usage texts. Nothing here touches the node.

use std::{
    ffi::{OsStr, OsString},
    os::unix::ffi::OsStrExt,
    path::PathBuf,
};

/// Where `ingot node report` reads allocations by default: the copy of the placement
/// checkpoint ingotd keeps there.
pub const DEFAULT_ALLOCATIONS: &str = "/run/ingot/placement.json";

pub const USAGE: &str = "\
Usage: ingot <command>

Commands:
  node report    the node's CPUs, NUMA nodes, memory, hugepages, devices and CPU allocations

Options:
  -h, --help     print this help

Run `ingot node report --help` for its options.
";

pub const NODE_REPORT_USAGE: &str = "\
Usage: ingot node report [--json] [--root DIR] [--allocations FILE]

Shows the node's topology (sockets, cores, SMT, isolated CPUs, per NUMA node its CPUs, memory,
hugepages and devices) and the CPU allocations ingotd holds (exclusive CPUs per container, the
shared pool, kubelet-pinned containers).

Options:
  --json               one JSON object for a machine instead of the table
  --root DIR           discover the topology under DIR instead of / (a captured sysfs tree)
  --allocations FILE   the placement checkpoint to read [default: /run/ingot/placement.json];
                       a missing file means no allocations
  -h, --help           print this help
";

/// Which usage text a help request or a usage error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic {
    Main,
    NodeReport,
}

impl Topic {
    pub fn usage(self) -> &'static str {
        match self {
            Topic::Main => USAGE,
            Topic::NodeReport => NODE_REPORT_USAGE,
        }
    }
}

/// The options of `ingot node report`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportArgs {
    pub json: bool,
    pub root: PathBuf,
    pub allocations: PathBuf,
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Help(Topic),
    NodeReport(ReportArgs),
}

/// A command line that asks for nothing this binary does; printed with the topic's usage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError {
    pub message: String,
    pub topic: Topic,
}

fn usage_error(topic: Topic, message: String) -> UsageError {
    UsageError { message, topic }
}

fn is_help(arg: &OsStr) -> bool {
    arg == "-h" || arg == "--help"
}

/// Parses the arguments after the program name. Arguments are `OsString`s because a path need
/// not be UTF-8, and `std::env::args` would panic on one that is not.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Command, UsageError> {
    let mut args = args.into_iter();
    let Some(command) = args.next() else {
        return Err(usage_error(Topic::Main, "no command given".into()));
    };
    if is_help(&command) || command == "help" {
        return Ok(Command::Help(Topic::Main));
    }
    if command != "node" {
        return Err(usage_error(
            Topic::Main,
            format!("unknown command {:?}", command.to_string_lossy()),
        ));
    }
    // `report` is the only `node` command, so `ingot node --help` shows its usage.
    match args.next() {
        None => Err(usage_error(
            Topic::NodeReport,
            "`ingot node` needs a command: report".into(),
        )),
        Some(arg) if is_help(&arg) => Ok(Command::Help(Topic::NodeReport)),
        Some(arg) if arg == "report" => parse_report(args),
        Some(arg) => Err(usage_error(
            Topic::NodeReport,
            format!("unknown command \"node {}\"", arg.to_string_lossy()),
        )),
    }
}

fn parse_report(mut args: impl Iterator<Item = OsString>) -> Result<Command, UsageError> {
    let error = |message: String| usage_error(Topic::NodeReport, message);
    let mut json = false;
    let mut root: Option<PathBuf> = None;
    let mut allocations: Option<PathBuf> = None;
    while let Some(arg) = args.next() {
        if is_help(&arg) {
            return Ok(Command::Help(Topic::NodeReport));
        }
        if arg == "--json" {
            json = true;
            continue;
        }
        // `--flag VALUE` or `--flag=VALUE`, split on bytes so a non-UTF-8 value survives.
        let bytes = arg.as_bytes();
        let (name, inline) = match bytes.iter().position(|byte| *byte == b'=') {
            Some(at) if bytes.starts_with(b"--") => (
                OsStr::from_bytes(&bytes[..at]),
                Some(OsStr::from_bytes(&bytes[at + 1..]).to_os_string()),
            ),
            _ => (arg.as_os_str(), None),
        };
        let slot = if name == "--root" {
            &mut root
        } else if name == "--allocations" {
            &mut allocations
        } else if bytes.starts_with(b"-") {
            return Err(error(format!("unknown flag {:?}", arg.to_string_lossy())));
        } else {
            return Err(error(format!(
                "unexpected argument {:?}",
                arg.to_string_lossy()
            )));
        };
        let flag = name.to_string_lossy().into_owned();
        let value = match inline.or_else(|| args.next()) {
            Some(value) if !value.is_empty() => value,
            _ => return Err(error(format!("{flag} needs a value"))),
        };
        if slot.replace(PathBuf::from(value)).is_some() {
            return Err(error(format!("{flag} given twice")));
        }
    }
    Ok(Command::NodeReport(ReportArgs {
        json,
        root: root.unwrap_or_else(|| PathBuf::from("/")),
        allocations: allocations.unwrap_or_else(|| PathBuf::from(DEFAULT_ALLOCATIONS)),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_strs(args: &[&str]) -> Result<Command, UsageError> {
        parse(args.iter().map(OsString::from))
    }

    fn report(json: bool, root: &str, allocations: &str) -> Command {
        Command::NodeReport(ReportArgs {
            json,
            root: root.into(),
            allocations: allocations.into(),
        })
    }

    #[test]
    fn node_report_with_defaults_and_with_every_flag() {
        assert_eq!(
            parse_strs(&["node", "report"]),
            Ok(report(false, "/", DEFAULT_ALLOCATIONS))
        );
        assert_eq!(
            parse_strs(&[
                "node",
                "report",
                "--json",
                "--root",
                "/tmp/x",
                "--allocations=a.json"
            ]),
            Ok(report(true, "/tmp/x", "a.json"))
        );
        assert_eq!(
            parse_strs(&[
                "node",
                "report",
                "--root=/r",
                "--allocations",
                "b",
                "--json"
            ]),
            Ok(report(true, "/r", "b"))
        );
    }

    #[test]
    fn help_wherever_it_is_asked_for() {
        for args in [&["--help"][..], &["-h"], &["help"]] {
            assert_eq!(parse_strs(args), Ok(Command::Help(Topic::Main)), "{args:?}");
        }
        for args in [
            &["node", "--help"][..],
            &["node", "report", "--help"],
            &["node", "report", "--json", "-h"],
        ] {
            assert_eq!(
                parse_strs(args),
                Ok(Command::Help(Topic::NodeReport)),
                "{args:?}"
            );
        }
    }

    #[test]
    fn usage_errors_say_what_is_wrong() {
        let cases: &[(&[&str], Topic, &str)] = &[
            (&[], Topic::Main, "no command given"),
            (&["nodes"], Topic::Main, "unknown command \"nodes\""),
            (&["node"], Topic::NodeReport, "needs a command"),
            (&["node", "status"], Topic::NodeReport, "\"node status\""),
            (
                &["node", "report", "--yaml"],
                Topic::NodeReport,
                "unknown flag \"--yaml\"",
            ),
            (
                &["node", "report", "-j"],
                Topic::NodeReport,
                "unknown flag \"-j\"",
            ),
            (
                &["node", "report", "extra"],
                Topic::NodeReport,
                "unexpected argument",
            ),
            (
                &["node", "report", "--root"],
                Topic::NodeReport,
                "--root needs a value",
            ),
            (
                &["node", "report", "--root="],
                Topic::NodeReport,
                "--root needs a value",
            ),
            (
                &["node", "report", "--json=1"],
                Topic::NodeReport,
                "unknown flag",
            ),
            (
                &["node", "report", "--allocations", "a", "--allocations=b"],
                Topic::NodeReport,
                "--allocations given twice",
            ),
        ];
        for (args, topic, message) in cases {
            let err = parse_strs(args).expect_err("a usage error");
            assert_eq!(err.topic, *topic, "{args:?}");
            assert!(err.message.contains(message), "{args:?}: {}", err.message);
        }
    }

    #[test]
    fn a_non_utf8_path_is_kept_as_given() {
        let odd = OsStr::from_bytes(b"/tmp/\xff").to_os_string();
        let mut inline = OsString::from("--root=");
        inline.push(&odd);
        let parsed = parse([OsString::from("node"), OsString::from("report"), inline]);
        match parsed {
            Ok(Command::NodeReport(args)) => assert_eq!(args.root.as_os_str(), odd),
            other => panic!("{other:?}"),
        }
        let bad_flag = parse([
            OsString::from("node"),
            OsString::from("report"),
            OsStr::from_bytes(b"--\xff").to_os_string(),
        ]);
        assert!(bad_flag.is_err());
    }
}
