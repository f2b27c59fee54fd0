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
  node report          the node's CPUs, NUMA nodes, memory, hugepages, devices and CPU allocations
  cdi generate nvidia  a CDI spec (nvidia.com/gpu) for the node's NVIDIA GPUs

Options:
  -h, --help     print this help

Run `ingot node report --help` or `ingot cdi generate --help` for their options.
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

pub const CDI_GENERATE_USAGE: &str = "\
Usage: ingot cdi generate nvidia [--root DIR] [--output FILE]

Writes a CDI spec (kind nvidia.com/gpu, JSON) for the NVIDIA GPUs the driver lists: a device
per GPU by index (PCI bus order, as nvidia-smi numbers them) and by UUID, each with its device
node and its PCI address and NUMA node as annotations, and `all`; what every device shares: the
control device nodes, the driver's libraries, binaries and firmware (read-only bind mounts) and,
where nvidia-cdi-hook or nvidia-ctk is installed, the hook that updates the ld cache. Reads the
node, writes nothing but the output.

Options:
  --root DIR      read the node under DIR instead of / (a captured tree); the spec names the
                  node's own paths
  --output FILE   write the spec to FILE (a temporary file beside it, then renamed) instead of
                  stdout, e.g. /etc/cdi/nvidia.json
  -h, --help      print this help
";

/// Which usage text a help request or a usage error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic {
    Main,
    NodeReport,
    CdiGenerate,
}

impl Topic {
    pub fn usage(self) -> &'static str {
        match self {
            Topic::Main => USAGE,
            Topic::NodeReport => NODE_REPORT_USAGE,
            Topic::CdiGenerate => CDI_GENERATE_USAGE,
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

/// The options of `ingot cdi generate nvidia`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CdiGenerateArgs {
    pub root: PathBuf,
    /// None: stdout.
    pub output: Option<PathBuf>,
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Help(Topic),
    NodeReport(ReportArgs),
    CdiGenerateNvidia(CdiGenerateArgs),
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
    if command == "cdi" {
        return parse_cdi(args);
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

fn parse_report(args: impl Iterator<Item = OsString>) -> Result<Command, UsageError> {
    let Some(mut flags) = parse_flags(
        args,
        Topic::NodeReport,
        &["--json"],
        &["--root", "--allocations"],
    )?
    else {
        return Ok(Command::Help(Topic::NodeReport));
    };
    Ok(Command::NodeReport(ReportArgs {
        json: flags.has("--json"),
        root: flags.take("--root").unwrap_or_else(|| PathBuf::from("/")),
        allocations: flags
            .take("--allocations")
            .unwrap_or_else(|| PathBuf::from(DEFAULT_ALLOCATIONS)),
    }))
}

/// `cdi generate nvidia`: `generate` is the only `cdi` command and `nvidia` its only vendor, so
/// `ingot cdi --help` and `ingot cdi generate --help` show its usage.
fn parse_cdi(mut args: impl Iterator<Item = OsString>) -> Result<Command, UsageError> {
    let error = |message: String| usage_error(Topic::CdiGenerate, message);
    match args.next() {
        None => return Err(error("`ingot cdi` needs a command: generate".into())),
        Some(arg) if is_help(&arg) => return Ok(Command::Help(Topic::CdiGenerate)),
        Some(arg) if arg == "generate" => {}
        Some(arg) => {
            return Err(error(format!(
                "unknown command \"cdi {}\"",
                arg.to_string_lossy()
            )))
        }
    }
    match args.next() {
        None => Err(error("`ingot cdi generate` needs a vendor: nvidia".into())),
        Some(arg) if is_help(&arg) => Ok(Command::Help(Topic::CdiGenerate)),
        Some(arg) if arg == "nvidia" => {
            let Some(mut flags) =
                parse_flags(args, Topic::CdiGenerate, &[], &["--root", "--output"])?
            else {
                return Ok(Command::Help(Topic::CdiGenerate));
            };
            Ok(Command::CdiGenerateNvidia(CdiGenerateArgs {
                root: flags.take("--root").unwrap_or_else(|| PathBuf::from("/")),
                output: flags.take("--output"),
            }))
        }
        Some(arg) if arg.as_bytes().starts_with(b"-") => Err(error(format!(
            "`ingot cdi generate` needs a vendor before {:?}: nvidia",
            arg.to_string_lossy()
        ))),
        Some(arg) => Err(error(format!(
            "unknown vendor {:?}: only nvidia",
            arg.to_string_lossy()
        ))),
    }
}

/// The flags one command was given.
struct Flags {
    switches: Vec<&'static str>,
    values: Vec<(&'static str, PathBuf)>,
}

impl Flags {
    fn has(&self, switch: &str) -> bool {
        self.switches.contains(&switch)
    }

    fn take(&mut self, flag: &str) -> Option<PathBuf> {
        let at = self.values.iter().position(|(name, _)| *name == flag)?;
        Some(self.values.remove(at).1)
    }
}

/// A command's flags: `switches` (`--json`, given any number of times) and `valued` ones
/// (`--root DIR` or `--root=DIR`, at most once, not empty). None where help is asked for.
fn parse_flags(
    mut args: impl Iterator<Item = OsString>,
    topic: Topic,
    switches: &[&'static str],
    valued: &[&'static str],
) -> Result<Option<Flags>, UsageError> {
    let error = |message: String| usage_error(topic, message);
    let mut flags = Flags {
        switches: Vec::new(),
        values: Vec::new(),
    };
    while let Some(arg) = args.next() {
        if is_help(&arg) {
            return Ok(None);
        }
        if let Some(switch) = switches.iter().find(|switch| arg == **switch) {
            flags.switches.push(switch);
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
        let Some(flag) = valued.iter().find(|flag| name == **flag) else {
            if bytes.starts_with(b"-") {
                return Err(error(format!("unknown flag {:?}", arg.to_string_lossy())));
            }
            return Err(error(format!(
                "unexpected argument {:?}",
                arg.to_string_lossy()
            )));
        };
        let value = match inline.or_else(|| args.next()) {
            Some(value) if !value.is_empty() => value,
            _ => return Err(error(format!("{flag} needs a value"))),
        };
        if flags.values.iter().any(|(name, _)| name == flag) {
            return Err(error(format!("{flag} given twice")));
        }
        flags.values.push((flag, PathBuf::from(value)));
    }
    Ok(Some(flags))
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

    fn cdi(root: &str, output: Option<&str>) -> Command {
        Command::CdiGenerateNvidia(CdiGenerateArgs {
            root: root.into(),
            output: output.map(PathBuf::from),
        })
    }

    #[test]
    fn cdi_generate_nvidia_with_defaults_and_with_every_flag() {
        assert_eq!(
            parse_strs(&["cdi", "generate", "nvidia"]),
            Ok(cdi("/", None))
        );
        assert_eq!(
            parse_strs(&[
                "cdi",
                "generate",
                "nvidia",
                "--root",
                "/tmp/x",
                "--output=/etc/cdi/nvidia.json"
            ]),
            Ok(cdi("/tmp/x", Some("/etc/cdi/nvidia.json")))
        );
        assert_eq!(
            parse_strs(&[
                "cdi",
                "generate",
                "nvidia",
                "--output",
                "o.json",
                "--root=/r"
            ]),
            Ok(cdi("/r", Some("o.json")))
        );
    }

    #[test]
    fn cdi_generate_help_wherever_it_is_asked_for() {
        for args in [
            &["cdi", "--help"][..],
            &["cdi", "-h"],
            &["cdi", "generate", "--help"],
            &["cdi", "generate", "nvidia", "-h"],
            &["cdi", "generate", "nvidia", "--root", "/r", "--help"],
        ] {
            assert_eq!(
                parse_strs(args),
                Ok(Command::Help(Topic::CdiGenerate)),
                "{args:?}"
            );
        }
        assert!(USAGE.contains("cdi generate nvidia"));
        assert!(CDI_GENERATE_USAGE.contains("--output FILE"));
    }

    #[test]
    fn cdi_generate_usage_errors_say_what_is_wrong() {
        let cases: &[(&[&str], &str)] = &[
            (&["cdi"], "needs a command: generate"),
            (&["cdi", "list"], "unknown command \"cdi list\""),
            (&["cdi", "generate"], "needs a vendor: nvidia"),
            (&["cdi", "generate", "amd"], "unknown vendor \"amd\""),
            (
                &["cdi", "generate", "--root", "/r"],
                "needs a vendor before \"--root\"",
            ),
            (
                &["cdi", "generate", "nvidia", "--json"],
                "unknown flag \"--json\"",
            ),
            (
                &["cdi", "generate", "nvidia", "extra"],
                "unexpected argument \"extra\"",
            ),
            (
                &["cdi", "generate", "nvidia", "--output"],
                "--output needs a value",
            ),
            (
                &["cdi", "generate", "nvidia", "--root="],
                "--root needs a value",
            ),
            (
                &["cdi", "generate", "nvidia", "--root", "a", "--root=b"],
                "--root given twice",
            ),
        ];
        for (args, message) in cases {
            let err = parse_strs(args).expect_err("a usage error");
            assert_eq!(err.topic, Topic::CdiGenerate, "{args:?}");
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
