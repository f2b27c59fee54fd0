//! Both binaries are linked as position-dependent executables:
//! - the shim runs once per pod, so its private memory is multiplied by the pod count. Its
//!   `.data.rel.ro` (about 100 KiB of pointers: vtables, string tables) is written by the linker
//!   instead of relocated by the loader in every shim, and stays shared page cache; as a PIE
//!   each shim dirtied a private copy at start;
//! - the helper runs once per container create (and for execs the shim cannot start itself), so
//!   its start-up is on every pod start's path: as a PIE, the loader's relocation of its 4 MiB
//!   image and the copy-on-write faults that follow were a tenth of its CPU time.
fn main() {
    for binary in ["containerd-shim-ingot-v2", "ingot-shim-helper"] {
        println!("cargo:rustc-link-arg-bin={binary}=-no-pie");
    }
}
