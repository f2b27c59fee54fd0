//! The Linux CPU/node list format (`0-3,8,10-11`), as cpuset files, sysfs and the kernel command
//! line write it.

use std::{collections::BTreeSet, fmt, str::FromStr};

use crate::TopologyError;

/// A set of CPU (or NUMA node) ids. Displays in the kernel's canonical list format.
#[derive(
    Debug,
    Clone,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(into = "String", try_from = "String")]
pub struct CpuSet(BTreeSet<u32>);

/// The largest id accepted in a list: far above any real machine, low enough that a hostile
/// `0-4294967295` cannot allocate a set of billions.
pub const MAX_ID: u32 = 65_535;

impl CpuSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses the list format; the empty string (or only whitespace) is the empty set.
    pub fn parse(list: &str) -> Result<Self, TopologyError> {
        let invalid = |reason: String| TopologyError::InvalidList {
            list: list.to_string(),
            reason,
        };
        let mut set = BTreeSet::new();
        let trimmed = list.trim();
        if trimmed.is_empty() {
            return Ok(Self(set));
        }
        for part in trimmed.split(',') {
            let part = part.trim();
            let (first, last) = match part.split_once('-') {
                Some((a, b)) => (a, b),
                None => (part, part),
            };
            let number = |text: &str| {
                text.parse::<u32>()
                    .map_err(|_| invalid(format!("{part:?} is not a number or a range")))
            };
            let (first, last) = (number(first)?, number(last)?);
            if first > last {
                return Err(invalid(format!("range {part:?} runs backwards")));
            }
            if last > MAX_ID {
                return Err(invalid(format!("{last} is above the largest id {MAX_ID}")));
            }
            set.extend(first..=last);
        }
        Ok(Self(set))
    }

    pub fn contains(&self, id: u32) -> bool {
        self.0.contains(&id)
    }

    pub fn insert(&mut self, id: u32) -> bool {
        self.0.insert(id)
    }

    pub fn remove(&mut self, id: u32) -> bool {
        self.0.remove(&id)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().copied()
    }

    pub fn first(&self) -> Option<u32> {
        self.0.first().copied()
    }

    pub fn union(&self, other: &CpuSet) -> CpuSet {
        Self(self.0.union(&other.0).copied().collect())
    }

    pub fn intersection(&self, other: &CpuSet) -> CpuSet {
        Self(self.0.intersection(&other.0).copied().collect())
    }

    pub fn difference(&self, other: &CpuSet) -> CpuSet {
        Self(self.0.difference(&other.0).copied().collect())
    }

    pub fn is_subset(&self, other: &CpuSet) -> bool {
        self.0.is_subset(&other.0)
    }

    pub fn is_disjoint(&self, other: &CpuSet) -> bool {
        self.0.is_disjoint(&other.0)
    }
}

impl FromIterator<u32> for CpuSet {
    fn from_iter<I: IntoIterator<Item = u32>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

impl Extend<u32> for CpuSet {
    fn extend<I: IntoIterator<Item = u32>>(&mut self, iter: I) {
        self.0.extend(iter)
    }
}

impl fmt::Display for CpuSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ids = self.0.iter().copied().peekable();
        let mut first = true;
        while let Some(start) = ids.next() {
            let mut end = start;
            while ids.peek() == Some(&(end + 1)) {
                end += 1;
                ids.next();
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if start == end {
                write!(f, "{start}")?;
            } else {
                write!(f, "{start}-{end}")?;
            }
        }
        Ok(())
    }
}

impl FromStr for CpuSet {
    type Err = TopologyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl From<CpuSet> for String {
    fn from(set: CpuSet) -> String {
        set.to_string()
    }
}

impl TryFrom<String> for CpuSet {
    type Error = TopologyError;

    fn try_from(list: String) -> Result<Self, Self::Error> {
        Self::parse(&list)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_the_kernel_format() {
        let set = CpuSet::parse("0-3,8, 10-11\n").expect("valid");
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![0, 1, 2, 3, 8, 10, 11]);
        assert_eq!(set.to_string(), "0-3,8,10-11");
        assert_eq!(CpuSet::parse("").expect("empty").to_string(), "");
        assert_eq!(CpuSet::parse("5,4,3").expect("valid").to_string(), "3-5");
    }

    #[test]
    fn refuses_what_is_not_a_list() {
        for bad in ["a", "3-1", "1-", "-1", "1,,2", "0-4294967295", "1-2-3"] {
            let err = CpuSet::parse(bad).expect_err(bad);
            assert!(err.to_string().contains(bad), "{bad}: {err}");
        }
    }

    #[test]
    fn set_algebra() {
        let a = CpuSet::parse("0-5").expect("valid");
        let b = CpuSet::parse("4-7").expect("valid");
        assert_eq!(a.intersection(&b).to_string(), "4-5");
        assert_eq!(a.difference(&b).to_string(), "0-3");
        assert_eq!(a.union(&b).to_string(), "0-7");
        assert!(!a.is_disjoint(&b));
        assert!(CpuSet::parse("1-2").expect("valid").is_subset(&a));
    }
}
