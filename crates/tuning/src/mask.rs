//! The kernel's CPU mask text (`default_smp_affinity`, irqbalance's banned CPUs): hex groups
//! of 32 CPUs, most significant first, separated by commas.

use ingot_topology::CpuSet;

/// The CPUs of a mask; `""` is none.
pub fn parse_mask(text: &str) -> Result<CpuSet, String> {
    let text = text.trim().trim_matches('"');
    let mut set = CpuSet::new();
    if text.is_empty() {
        return Ok(set);
    }
    for (index, group) in text.rsplit(',').enumerate() {
        let value = u32::from_str_radix(group.trim(), 16)
            .map_err(|_| format!("{group:?} is not a hex group of a CPU mask"))?;
        let base = u32::try_from(index * 32).map_err(|_| "too many groups".to_string())?;
        for bit in 0..32 {
            if value & (1 << bit) != 0 {
                set.insert(base + bit);
            }
        }
    }
    Ok(set)
}

fn group_value(set: &CpuSet, index: usize) -> u32 {
    let base = index * 32;
    set.iter()
        .filter_map(|cpu| usize::try_from(cpu).ok())
        .filter(|cpu| *cpu >= base && *cpu < base + 32)
        .fold(0, |value, cpu| value | (1 << (cpu - base)))
}

/// `set` in the shape of `like` (as many groups, the first as wide), so a rewritten file reads
/// as the kernel prints it; `groups` full-width groups where `like` is empty.
pub fn format_like(set: &CpuSet, like: &str, groups: usize) -> String {
    let like = like.trim().trim_matches('"');
    let (count, first_width) = if like.is_empty() {
        (groups.max(1), 8)
    } else {
        let parts: Vec<&str> = like.split(',').collect();
        (parts.len(), parts[0].trim().len().clamp(1, 8))
    };
    (0..count)
        .rev()
        .map(|index| {
            let width = if index == count - 1 { first_width } else { 8 };
            format!("{:0width$x}", group_value(set, index), width = width)
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Full-width groups for `cpus` CPUs (irqbalance's `IRQBALANCE_BANNED_CPUS` format).
pub fn format_full(set: &CpuSet, cpus: usize) -> String {
    let highest = set
        .iter()
        .last()
        .and_then(|c| usize::try_from(c).ok())
        .map_or(0, |c| c + 1);
    let groups = cpus.max(highest).div_ceil(32).max(1);
    format_like(set, "", groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(list: &str) -> CpuSet {
        CpuSet::parse(list).expect("list")
    }

    #[test]
    fn masks_read_and_write_as_the_kernel_prints_them() {
        assert_eq!(parse_mask("3").expect("mask"), set("0-1"));
        assert_eq!(parse_mask("ff,ffffffff").expect("mask"), set("0-39"));
        assert_eq!(parse_mask("00000001,00000002").expect("mask"), set("1,32"));
        assert_eq!(parse_mask("").expect("empty"), CpuSet::new());
        assert!(parse_mask("xyz").is_err());
        assert_eq!(format_like(&set("0"), "3", 1), "1");
        assert_eq!(
            format_like(&set("0-31,33-39"), "ff,ffffffff", 2),
            "fe,ffffffff"
        );
        assert_eq!(format_full(&set("1"), 2), "00000002");
        assert_eq!(format_full(&set("1,40"), 2), "00000100,00000002");
    }

    proptest::proptest! {
        #[test]
        fn a_mask_round_trips(cpus in proptest::collection::btree_set(0u32..200, 0..40)) {
            let set: CpuSet = cpus.into_iter().collect();
            let text = format_full(&set, 200);
            proptest::prop_assert_eq!(parse_mask(&text).expect("parse"), set);
        }
    }
}
