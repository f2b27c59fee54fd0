//! RT group-scheduling budgets (`cpu.rt_runtime_us`, cgroup v1 with `CONFIG_RT_GROUP_SCHED`).
//!
//! A fresh v1 cgroup has an RT runtime of 0, so `SCHED_FIFO`/`SCHED_RR` fail with EPERM inside
//! it; and a cgroup's children may together hold at most its own runtime. Giving a container a
//! budget therefore raises its ancestors as far up as needed, each by what the level below it
//! lacks, taken from the first ancestor with room; giving it back lowers what was raised, from
//! the bottom up. The plans here are pure: the caller reads the levels and writes the plan.

use std::path::PathBuf;

/// One cgroup on the way from the hierarchy's root down to the container's parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Level {
    pub path: PathBuf,
    /// Its `cpu.rt_runtime_us` (-1: unlimited, only the root may have it).
    pub runtime: i64,
    /// The sum of its children's `cpu.rt_runtime_us`.
    pub children: i64,
    /// Whether ingot may write it (a cgroup ingot made: its parent or a pod's).
    pub writable: bool,
}

/// Why a budget cannot be granted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BudgetError {
    #[error(
        "{path} has {free} µs of RT runtime free of {runtime}, {needed} µs are needed; give it \
         more in cpu.rt_runtime_us (or lower kernel.sched_rt_runtime_us' claim elsewhere)"
    )]
    NoRoom {
        path: PathBuf,
        runtime: i64,
        free: i64,
        needed: i64,
    },
    #[error("no cgroup levels to grant an RT budget under")]
    Empty,
}

/// The writes (path, new `cpu.rt_runtime_us`), top-down, that let a new child of the last level
/// have `budget` µs. Levels run from the root down; a level that lacks room is raised by what it
/// lacks, which its parent must have free in turn. A level ingot may not write, or the root,
/// without room is refused naming it.
pub fn grant(levels: &[Level], budget: i64) -> Result<Vec<(PathBuf, i64)>, BudgetError> {
    let mut writes = Vec::new();
    // What the level below asks of this one.
    let mut extra = budget;
    for (index, level) in levels.iter().enumerate().rev() {
        if level.runtime < 0 {
            break;
        }
        let free = level.runtime - level.children;
        if free >= extra {
            break;
        }
        let lacking = extra - free;
        let is_root = index == 0;
        if !level.writable || is_root {
            return Err(BudgetError::NoRoom {
                path: level.path.clone(),
                runtime: level.runtime,
                free,
                needed: extra,
            });
        }
        writes.push((level.path.clone(), level.runtime + lacking));
        extra = lacking;
    }
    if levels.is_empty() {
        return Err(BudgetError::Empty);
    }
    writes.reverse();
    Ok(writes)
}

/// The writes, bottom-up, that give back what [`grant`] raised, once the child holding the
/// budget is gone: each raised level is lowered by what it was raised, never below what its
/// children still hold. `raised` is what the grant wrote with each level's runtime before
/// (path, before, after); `now` the levels as they are now.
pub fn release(raised: &[(PathBuf, i64, i64)], now: &[Level]) -> Vec<(PathBuf, i64)> {
    let mut writes = Vec::new();
    // What the level just lowered gave back to its parent.
    let mut freed_below: Option<(PathBuf, i64)> = None;
    for (path, before, after) in raised.iter().rev() {
        let Some(level) = now.iter().find(|l| &l.path == path) else {
            freed_below = None;
            continue;
        };
        let children = match &freed_below {
            Some((child, freed)) if child.parent() == Some(path.as_path()) => {
                level.children - freed
            }
            _ => level.children,
        };
        let target = (level.runtime - (after - before)).max(children).max(0);
        if target < level.runtime {
            writes.push((path.clone(), target));
        }
        freed_below = Some((path.clone(), level.runtime - target.min(level.runtime)));
    }
    writes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn level(path: &str, runtime: i64, children: i64, writable: bool) -> Level {
        Level {
            path: PathBuf::from(path),
            runtime,
            children,
            writable,
        }
    }

    #[test]
    fn fresh_levels_are_raised_top_down_from_the_first_ancestor_with_room() {
        let levels = [
            level("/", 950_000, 0, false),
            level("/ingot", 0, 0, true),
            level("/ingot/pod", 0, 0, true),
        ];
        assert_eq!(
            grant(&levels, 100_000).expect("room at the root"),
            vec![
                (PathBuf::from("/ingot"), 100_000),
                (PathBuf::from("/ingot/pod"), 100_000)
            ]
        );
    }

    #[test]
    fn a_level_with_room_is_left_alone_and_only_what_is_lacking_is_taken() {
        // The pod already holds 100 ms for one container; a second one needs 50 ms more.
        let levels = [
            level("/", 950_000, 100_000, false),
            level("/ingot", 100_000, 100_000, true),
            level("/ingot/pod", 100_000, 100_000, true),
        ];
        assert_eq!(
            grant(&levels, 50_000).expect("room"),
            vec![
                (PathBuf::from("/ingot"), 150_000),
                (PathBuf::from("/ingot/pod"), 150_000)
            ]
        );
        // With room in the pod already, nothing is written.
        let roomy = [
            level("/", 950_000, 300_000, false),
            level("/ingot", 300_000, 300_000, true),
            level("/ingot/pod", 300_000, 100_000, true),
        ];
        assert_eq!(grant(&roomy, 50_000).expect("room"), vec![]);
        // An unlimited root gives what is asked.
        let unlimited = [level("/", -1, 0, false), level("/ingot", 0, 0, true)];
        assert_eq!(
            grant(&unlimited, 10).expect("room"),
            vec![(PathBuf::from("/ingot"), 10)]
        );
    }

    #[test]
    fn no_room_is_refused_naming_the_level_and_the_numbers() {
        let levels = [
            level("/", 950_000, 900_000, false),
            level("/ingot", 0, 0, true),
        ];
        let err = grant(&levels, 100_000).expect_err("the root is nearly full");
        assert_eq!(
            err,
            BudgetError::NoRoom {
                path: PathBuf::from("/"),
                runtime: 950_000,
                free: 50_000,
                needed: 100_000
            }
        );
        assert!(err.to_string().contains("50000 µs"), "{err}");
        // A level ingot did not make is never raised.
        let foreign = [
            level("/", 950_000, 0, false),
            level("/kubepods", 0, 0, false),
            level("/kubepods/pod", 0, 0, true),
        ];
        let err = grant(&foreign, 1).expect_err("kubepods is not ingot's");
        assert!(
            matches!(err, BudgetError::NoRoom { ref path, .. } if path == &PathBuf::from("/kubepods"))
        );
        assert_eq!(grant(&[], 1), Err(BudgetError::Empty));
    }

    #[test]
    fn release_lowers_what_was_raised_bottom_up_but_not_below_the_children() {
        // A holds 50 ms in the pod, B was given 100 ms more: both levels were raised for B.
        let raised = vec![
            (PathBuf::from("/ingot"), 50_000, 150_000),
            (PathBuf::from("/ingot/pod"), 50_000, 150_000),
        ];
        // B is gone, A stays.
        let now = [
            level("/", 950_000, 150_000, false),
            level("/ingot", 150_000, 150_000, true),
            level("/ingot/pod", 150_000, 50_000, true),
        ];
        assert_eq!(
            release(&raised, &now),
            vec![
                (PathBuf::from("/ingot/pod"), 50_000),
                (PathBuf::from("/ingot"), 50_000),
            ]
        );
        // The last one gone: back to nothing.
        let raised_a = vec![
            (PathBuf::from("/ingot"), 0, 50_000),
            (PathBuf::from("/ingot/pod"), 0, 50_000),
        ];
        let now = [
            level("/", 950_000, 50_000, false),
            level("/ingot", 50_000, 50_000, true),
            level("/ingot/pod", 50_000, 0, true),
        ];
        assert_eq!(
            release(&raised_a, &now),
            vec![
                (PathBuf::from("/ingot/pod"), 0),
                (PathBuf::from("/ingot"), 0)
            ]
        );
        // A pod cgroup already removed: its parent still gets its share back.
        let now = [
            level("/", 950_000, 50_000, false),
            level("/ingot", 50_000, 0, true),
        ];
        assert_eq!(release(&raised_a, &now), vec![(PathBuf::from("/ingot"), 0)]);
    }
}
