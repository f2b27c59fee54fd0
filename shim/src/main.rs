//! `containerd-shim-ingot-v2`: the containerd shim v2 of ingot. One process per pod serves the
//! Task API over ttrpc; libcontainer runs in `ingot-shim-helper` children (the first in a spare
//! forked at start, see `spare`).

fn main() {
    // One malloc arena per thread would be the largest part of an idle shim's private memory;
    // the shim's threads mostly sleep, so two shared arenas serve them.
    // SAFETY: mallopt only tunes the allocator; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    if let Err(err) = containerd_shim_ingot_v2::bootstrap::run() {
        eprintln!("containerd-shim-ingot-v2: {err:#}");
        std::process::exit(1);
    }
}
