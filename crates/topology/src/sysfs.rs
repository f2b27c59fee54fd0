//! Reading sysfs and procfs files under a root path. This is the one place that decides what an
//! absent file means (only `NotFound` is "absent"; any other failure is an error), how numbers,
//! lists and link names are read, and that every error names the full path it came from.

use std::{
    fmt::Display,
    fs, io,
    path::{Path, PathBuf},
    str::FromStr,
};

use crate::{CpuSet, TopologyError};

pub(crate) fn read_error(path: &Path, source: io::Error) -> TopologyError {
    TopologyError::Read {
        path: path.to_path_buf(),
        source,
    }
}

pub(crate) fn malformed(path: &Path, reason: impl Into<String>) -> TopologyError {
    TopologyError::Malformed {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// A file every kernel that has the directory writes.
pub(crate) fn read(path: &Path) -> Result<String, TopologyError> {
    fs::read_to_string(path).map_err(|source| read_error(path, source))
}

/// A file some kernels, configurations or devices do not have: None where it is absent.
pub(crate) fn read_optional(path: &Path) -> Result<Option<String>, TopologyError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(source) if source.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(read_error(path, source)),
    }
}

/// Parses one number as sysfs writes it: decimal, followed by a newline.
pub(crate) fn parse_number<T>(path: &Path, text: &str) -> Result<T, TopologyError>
where
    T: FromStr,
    T::Err: Display,
{
    let trimmed = text.trim();
    trimmed
        .parse()
        .map_err(|err| malformed(path, format!("{trimmed:?} is not a valid number: {err}")))
}

pub(crate) fn read_number<T>(path: &Path) -> Result<T, TopologyError>
where
    T: FromStr,
    T::Err: Display,
{
    parse_number(path, &read(path)?)
}

pub(crate) fn read_optional_number<T>(path: &Path) -> Result<Option<T>, TopologyError>
where
    T: FromStr,
    T::Err: Display,
{
    read_optional(path)?
        .map(|text| parse_number(path, &text))
        .transpose()
}

/// Parses a CPU or node list; a bad list names the file it came from.
pub(crate) fn parse_list(path: &Path, text: &str) -> Result<CpuSet, TopologyError> {
    CpuSet::parse(text).map_err(|err| malformed(path, err.to_string()))
}

pub(crate) fn read_list(path: &Path) -> Result<CpuSet, TopologyError> {
    parse_list(path, &read(path)?)
}

/// The last component of a symlink's target (`driver -> ../../bus/pci/drivers/ice` gives
/// `ice`), None where there is no link. The target is never followed: sysfs links are names, and
/// a fixture tree need not hold what they point at.
pub(crate) fn link_name(path: &Path) -> Result<Option<String>, TopologyError> {
    let target = match fs::read_link(path) {
        Ok(target) => target,
        Err(source) if source.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(read_error(path, source)),
    };
    match target.file_name().and_then(|name| name.to_str()) {
        Some(name) => Ok(Some(name.to_string())),
        None => Err(malformed(
            path,
            format!("link target {} has no last component", target.display()),
        )),
    }
}

/// The names of a directory's entries, sorted; None where the directory is absent. Names that
/// are not UTF-8 are left out: sysfs writes none, and nothing here could match them.
pub(crate) fn entry_names(dir: &Path) -> Result<Option<Vec<String>>, TopologyError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(source) if source.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(read_error(dir, source)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| read_error(dir, source))?;
        if let Ok(name) = entry.file_name().into_string() {
            names.push(name);
        }
    }
    names.sort();
    Ok(Some(names))
}

/// The entries of `dir` named `<prefix><number><suffix>` (`node3`, `virtfn12`,
/// `hugepages-2048kB`), by number; other entries are left out. None where `dir` is absent.
pub(crate) fn numbered_entries(
    dir: &Path,
    prefix: &str,
    suffix: &str,
) -> Result<Option<Vec<(u64, PathBuf)>>, TopologyError> {
    let Some(names) = entry_names(dir)? else {
        return Ok(None);
    };
    let mut numbered: Vec<(u64, PathBuf)> = names
        .iter()
        .filter_map(|name| Some((entry_number(name, prefix, suffix)?, dir.join(name))))
        .collect();
    numbered.sort();
    Ok(Some(numbered))
}

/// `node3` with prefix `node` → 3. Only plain decimal digits count: `node`, `node+1` and
/// `node01x` are other entries, not malformed ones.
fn entry_number(name: &str, prefix: &str, suffix: &str) -> Option<u64> {
    let digits = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
    if digits.is_empty() || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// A number that names a node, CPU or group must fit the id type; sysfs never writes one that
/// does not, so one that does not is malformed.
pub(crate) fn id_from(path: &Path, number: u64) -> Result<u32, TopologyError> {
    u32::try_from(number).map_err(|_| malformed(path, format!("{number} is too large for an id")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_numbers_take_only_plain_digits() {
        assert_eq!(entry_number("node3", "node", ""), Some(3));
        assert_eq!(entry_number("virtfn12", "virtfn", ""), Some(12));
        assert_eq!(
            entry_number("hugepages-2048kB", "hugepages-", "kB"),
            Some(2048)
        );
        for other in [
            "node",
            "node+1",
            "node01x",
            "nodes",
            "possible",
            "hugepages-2048",
        ] {
            let number =
                entry_number(other, "node", "").or(entry_number(other, "hugepages-", "kB"));
            assert_eq!(number, None, "{other}");
        }
    }

    #[test]
    fn numbers_name_the_file() {
        let path = Path::new("/x/core_id");
        let err = parse_number::<u32>(path, "abc\n").expect_err("not a number");
        assert!(err.to_string().contains("/x/core_id"), "{err}");
        assert_eq!(parse_number::<u32>(path, " 7\n").expect("a number"), 7);
    }
}
