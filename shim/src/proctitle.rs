//! Renaming a forked process: its command line (`/proc/<pid>/cmdline`, what `ps` shows and what
//! operators and tests match on) and its thread name (`comm`). A process forked without an exec
//! keeps its parent's, which would make a spare helper, or a shim forked by the zygote, look
//! like the process it was forked from.
//!
//! The command line is rewritten in place, in the memory of the arguments the process was
//! started with (`arg_start`..`arg_end` in `/proc/self/stat`): what does not fit is cut. Only for
//! a process that no longer reads its own `std::env::args`.

/// Fields 48 and 49 of `/proc/self/stat`: where the argument strings lie.
fn argument_area() -> Option<(usize, usize)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // pid (comm) state ...: comm may hold spaces and parentheses, so from the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // After the ')' the first field is the third (state): field n is at index n - 3.
    let start = fields.get(45)?.parse().ok()?;
    let end = fields.get(46)?.parse().ok()?;
    (end > start).then_some((start, end))
}

/// The bytes of a command line `args` in an area of `len` bytes: NUL-separated, cut to fit, the
/// rest zeroed, the last byte NUL (else the kernel reads on into the environment).
fn layout(args: &[&[u8]], len: usize) -> Vec<u8> {
    let mut text = Vec::with_capacity(len);
    for arg in args {
        text.extend_from_slice(arg);
        text.push(0);
    }
    text.truncate(len.saturating_sub(1));
    text.resize(len, 0);
    text
}

/// Sets this process's command line to `args` and its thread name to `comm` (cut to 15 bytes
/// by the kernel). Best effort: a process whose area cannot be found keeps its command line.
///
/// # Safety
/// Nothing in the process may read the original argument strings afterwards (`std::env::args`
/// would see the new ones, cut at NULs) or hold references into them.
pub unsafe fn set(args: &[&[u8]], comm: &str) {
    if let Ok(name) = std::ffi::CString::new(comm) {
        let _ = nix::sys::prctl::set_name(&name);
    }
    let Some((start, end)) = argument_area() else {
        return;
    };
    let text = layout(args, end - start);
    // SAFETY: [start, end) is this process's argument area (the kernel's record of it), mapped
    // and writable (it lies in the initial stack); the caller guarantees nothing reads it.
    unsafe { std::ptr::copy_nonoverlapping(text.as_ptr(), start as *mut u8, text.len()) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_separates_with_nuls_cuts_and_zero_fills() {
        assert_eq!(layout(&[b"ab", b"c"], 8), b"ab\0c\0\0\0\0");
        // Cut: the last byte stays NUL.
        assert_eq!(layout(&[b"abcdef"], 4), b"abc\0");
        assert_eq!(layout(&[], 2), b"\0\0");
    }

    #[test]
    fn the_argument_area_is_found() {
        let (start, end) = argument_area().expect("area");
        let cmdline = std::fs::read("/proc/self/cmdline").expect("cmdline");
        assert_eq!(end - start, cmdline.len());
    }
}
