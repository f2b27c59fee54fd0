//! The kernel's hex CPU bitmap (`default_smp_affinity`, `smp_affinity`, irqbalance's
//! `IRQBALANCE_BANNED_CPUS`): comma-separated 32-bit groups, most significant first, the lowest
//! CPU the lowest bit of the last group. And the irqbalance environment file around it.

use ingot_topology::{CpuSet, MAX_ID};

/// How many 32-bit groups a mask may have: enough for every id [`CpuSet`] accepts.
const MAX_GROUPS: usize = (MAX_ID as usize + 1) / 32;

/// The irqbalance variable CRI-O sets (irqbalance reads it before `IRQBALANCE_BANNED_CPULIST`).
pub(crate) const BANNED_CPUS: &str = "IRQBALANCE_BANNED_CPUS";
/// The list form newer irqbalance prefers; only read here, as part of the baseline.
pub(crate) const BANNED_CPULIST: &str = "IRQBALANCE_BANNED_CPULIST";

/// Parses a hex bitmap: `f`, `ff,ffffffff`, `00000000,00000003`. Each comma-separated group is
/// 32 bits (at most 8 hex digits), as the kernel's `bitmap_parse` reads it.
pub(crate) fn parse_mask(text: &str) -> Result<CpuSet, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("an empty mask".to_string());
    }
    let groups: Vec<&str> = text.split(',').collect();
    if groups.len() > MAX_GROUPS {
        return Err(format!("more than {MAX_GROUPS} 32-bit groups"));
    }
    let mut set = CpuSet::new();
    for (index, group) in groups.iter().rev().enumerate() {
        let group = group.trim();
        if group.is_empty() || group.len() > 8 {
            return Err(format!(
                "group {group:?} is not 1 to 8 hex digits (one 32-bit word)"
            ));
        }
        if !group.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("group {group:?} is not hexadecimal"));
        }
        let word = u32::from_str_radix(group, 16).map_err(|err| format!("{group:?}: {err}"))?;
        // index < MAX_GROUPS = 2048, so the base fits in a u32.
        let base = u32::try_from(index * 32).map_err(|_| "mask too long".to_string())?;
        set.extend(
            (0..32)
                .filter(|bit| word & (1 << bit) != 0)
                .map(|bit| base + bit),
        );
    }
    Ok(set)
}

/// The 32-bit words of `set`, least significant first, at least enough for `nbits` bits.
fn words(set: &CpuSet, nbits: usize) -> Vec<u32> {
    let top = set.iter().last().map_or(0, |cpu| cpu as usize + 1);
    let nbits = nbits.max(top).max(1);
    let mut words = vec![0u32; nbits.div_ceil(32)];
    for cpu in set.iter() {
        words[cpu as usize / 32] |= 1 << (cpu % 32);
    }
    words
}

/// Prints `set` the way the kernel prints a bitmap of `nbits` bits (`%*pb`): 8-digit groups, the
/// most significant one only as wide as the bits it holds (`f` for 4 CPUs, `ff,ffffffff` for 40).
/// A set reaching beyond `nbits` widens the mask to hold it.
pub(crate) fn format_mask(set: &CpuSet, nbits: usize) -> String {
    let top = set.iter().last().map_or(0, |cpu| cpu as usize + 1);
    let nbits = nbits.max(top).max(1);
    let words = words(set, nbits);
    let head_bits = match nbits % 32 {
        0 => 32,
        bits => bits,
    };
    let mut out = String::new();
    for (index, word) in words.iter().rev().enumerate() {
        if index == 0 {
            out.push_str(&format!("{word:0width$x}", width = head_bits.div_ceil(4)));
        } else {
            out.push_str(&format!(",{word:08x}"));
        }
    }
    out
}

/// Prints `set` in full 8-digit groups (`0000000c`, `00000000,00000003`): what CRI-O writes to
/// `IRQBALANCE_BANNED_CPUS`.
pub(crate) fn format_mask_groups(set: &CpuSet, nbits: usize) -> String {
    words(set, nbits)
        .iter()
        .rev()
        .map(|word| format!("{word:08x}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The value of a `NAME=value` line of the irqbalance file (an environment file for systemd,
/// sourced by shell on older systems): `None` for other lines and comments. Quotes are removed.
fn assignment<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let rest = line.trim_start().strip_prefix(name)?.strip_prefix('=')?;
    let value = rest.trim();
    let unquoted = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
        .unwrap_or(value);
    Some(unquoted.trim())
}

/// The CPUs an irqbalance configuration bans, as irqbalance reads it (`setup_banned_cpus`): a
/// non-empty `IRQBALANCE_BANNED_CPUS` mask wins, else a non-empty `IRQBALANCE_BANNED_CPULIST`,
/// else none (irqbalance then bans the isolated and nohz_full CPUs, which the caller adds). The
/// last assignment of a variable counts, as in shell.
pub(crate) fn irqbalance_banned(config: &str) -> Result<CpuSet, String> {
    let last = |name: &str| {
        config
            .lines()
            .rev()
            .find_map(|line| assignment(line, name))
            .filter(|value| !value.is_empty())
    };
    if let Some(mask) = last(BANNED_CPUS) {
        return parse_mask(mask).map_err(|err| format!("{BANNED_CPUS}={mask:?}: {err}"));
    }
    if let Some(list) = last(BANNED_CPULIST) {
        return CpuSet::parse(list).map_err(|err| format!("{BANNED_CPULIST}={list:?}: {err}"));
    }
    Ok(CpuSet::new())
}

/// `config` with `IRQBALANCE_BANNED_CPUS` set to the CPUs it bans plus `cpus`, the rest kept
/// line for line. Every assignment line is replaced (CRI-O's `updateIrqBalanceConfigFile`); with
/// none, one is appended. The mask is written in full 8-digit groups, unquoted (CRI-O quotes
/// it; systemd's EnvironmentFile and shell read both the same). Unchanged (byte for byte) when the ban already holds every CPU and is
/// set by `IRQBALANCE_BANNED_CPUS` itself.
pub(crate) fn set_irqbalance_banned(
    config: &str,
    cpus: &CpuSet,
    nbits: usize,
) -> Result<String, String> {
    let banned = irqbalance_banned(config)?;
    let wanted = banned.union(cpus);
    let has_mask = config
        .lines()
        .rev()
        .find_map(|line| assignment(line, BANNED_CPUS))
        .is_some_and(|value| !value.is_empty());
    if wanted == banned && (has_mask || wanted.is_empty()) {
        return Ok(config.to_string());
    }
    let line = format!("{BANNED_CPUS}={}", format_mask_groups(&wanted, nbits));
    let mut found = false;
    let mut out: Vec<String> = config
        .split('\n')
        .map(|existing| {
            if assignment(existing, BANNED_CPUS).is_some() {
                found = true;
                let indent = &existing[..existing.len() - existing.trim_start().len()];
                format!("{indent}{line}")
            } else {
                existing.to_string()
            }
        })
        .collect();
    if found {
        return Ok(out.join("\n"));
    }
    // Append, keeping the file's final newline convention: one newline before and after.
    if out.last().is_some_and(|last| last.is_empty()) {
        out.pop();
    }
    out.push(line);
    out.push(String::new());
    let joined = out.join("\n");
    Ok(joined.strip_prefix('\n').unwrap_or(&joined).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn set(list: &str) -> CpuSet {
        CpuSet::parse(list).expect("valid list")
    }

    #[test]
    fn parses_kernel_masks() {
        assert_eq!(parse_mask("f").expect("valid"), set("0-3"));
        assert_eq!(parse_mask("f\n").expect("valid"), set("0-3"));
        assert_eq!(parse_mask("ff,ffffffff").expect("valid"), set("0-39"));
        assert_eq!(parse_mask("00000000,00000003").expect("valid"), set("0-1"));
        assert_eq!(parse_mask("1,00000000").expect("valid"), set("32"));
        assert_eq!(parse_mask("0").expect("valid"), CpuSet::new());
        assert_eq!(parse_mask("C").expect("valid"), set("2-3"));
        for bad in ["", "g", "1,,2", "123456789", "0x3", ",1", "-1"] {
            assert!(parse_mask(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn prints_like_the_kernel() {
        assert_eq!(format_mask(&set("2-3"), 4), "c");
        assert_eq!(format_mask(&set("0-3"), 4), "f");
        assert_eq!(format_mask(&CpuSet::new(), 4), "0");
        assert_eq!(format_mask(&set("0-1"), 64), "00000000,00000003");
        assert_eq!(format_mask(&set("0-39"), 40), "ff,ffffffff");
        assert_eq!(format_mask(&set("2-39"), 40), "ff,fffffffc");
        assert_eq!(format_mask(&set("32"), 33), "1,00000000");
        assert_eq!(format_mask(&set("0-7"), 8), "ff");
        assert_eq!(format_mask(&set("0"), 32), "00000001");
        // A set beyond the CPU count widens the mask.
        assert_eq!(format_mask(&set("5"), 4), "20");
        assert_eq!(format_mask_groups(&set("2-3"), 4), "0000000c");
        assert_eq!(format_mask_groups(&set("0-1"), 64), "00000000,00000003");
    }

    proptest! {
        #[test]
        fn mask_round_trip(cpus in proptest::collection::btree_set(0u32..300, 0..40), extra in 0usize..64) {
            let set: CpuSet = cpus.iter().copied().collect();
            let nbits = set.iter().last().map_or(1, |top| top as usize + 1) + extra;
            let kernel = format_mask(&set, nbits);
            prop_assert_eq!(parse_mask(&kernel).expect("own output parses"), set.clone());
            prop_assert_eq!(kernel.split(',').count(), nbits.div_ceil(32));
            let head = kernel.split(',').next().expect("a group");
            let head_bits = if nbits % 32 == 0 { 32 } else { nbits % 32 };
            prop_assert_eq!(head.len(), head_bits.div_ceil(4));
            prop_assert!(kernel.split(',').skip(1).all(|group| group.len() == 8));
            let grouped = format_mask_groups(&set, nbits);
            prop_assert_eq!(parse_mask(&grouped).expect("own output parses"), set);
            prop_assert!(grouped.split(',').all(|group| group.len() == 8));
        }
    }

    const CONFIG: &str = "# irqbalance is a daemon process\n#IRQBALANCE_ONESHOT=\n\
        # IRQBALANCE_BANNED_CPUS=ffff\nIRQBALANCE_BANNED_CPUS=\n#IRQBALANCE_ARGS=\n";

    #[test]
    fn bans_cpus_keeping_the_rest() {
        let out = set_irqbalance_banned(CONFIG, &set("2-3"), 4).expect("valid");
        assert_eq!(
            out,
            "# irqbalance is a daemon process\n#IRQBALANCE_ONESHOT=\n\
             # IRQBALANCE_BANNED_CPUS=ffff\nIRQBALANCE_BANNED_CPUS=0000000c\n#IRQBALANCE_ARGS=\n"
        );
        assert_eq!(irqbalance_banned(&out).expect("valid"), set("2-3"));
        // Idempotent: already banned, nothing changes.
        assert_eq!(
            set_irqbalance_banned(&out, &set("3"), 4).expect("valid"),
            out
        );
        // Nothing to ban: the file stays as it is.
        assert_eq!(
            set_irqbalance_banned(CONFIG, &CpuSet::new(), 4).expect("valid"),
            CONFIG
        );
    }

    #[test]
    fn ors_with_the_existing_ban() {
        let config = "IRQBALANCE_BANNED_CPUS='1'\nIRQBALANCE_ARGS=\"--foo\"";
        assert_eq!(
            set_irqbalance_banned(config, &set("33"), 40).expect("valid"),
            "IRQBALANCE_BANNED_CPUS=00000002,00000001\nIRQBALANCE_ARGS=\"--foo\""
        );
    }

    #[test]
    fn appends_when_unset_and_honours_the_cpulist() {
        assert_eq!(
            set_irqbalance_banned("# only comments\n", &set("1"), 4).expect("valid"),
            "# only comments\nIRQBALANCE_BANNED_CPUS=00000002\n"
        );
        assert_eq!(
            set_irqbalance_banned("A=b", &set("1"), 4).expect("valid"),
            "A=b\nIRQBALANCE_BANNED_CPUS=00000002\n"
        );
        assert_eq!(
            set_irqbalance_banned("", &set("1"), 4).expect("valid"),
            "IRQBALANCE_BANNED_CPUS=00000002\n"
        );
        // The mask wins over the list in irqbalance, so setting it must carry the list's bans.
        let config = "IRQBALANCE_BANNED_CPULIST=0,8\n";
        assert_eq!(
            set_irqbalance_banned(config, &set("1"), 16).expect("valid"),
            "IRQBALANCE_BANNED_CPULIST=0,8\nIRQBALANCE_BANNED_CPUS=00000103\n"
        );
    }

    #[test]
    fn refuses_a_malformed_ban() {
        let err = set_irqbalance_banned("IRQBALANCE_BANNED_CPUS=xyz\n", &set("1"), 4)
            .expect_err("malformed");
        assert!(err.contains("IRQBALANCE_BANNED_CPUS"), "{err}");
    }
}
