//! The shim runs once per pod, so its private memory is multiplied by the pod count. Linked as a
//! position-dependent executable, its `.data.rel.ro` (about 100 KiB of pointers: vtables,
//! string tables) is written by the linker instead of relocated by the loader in every shim, and
//! stays shared page cache; as a PIE each shim dirtied a private copy at start.
fn main() {
    println!("cargo:rustc-link-arg-bin=containerd-shim-ingot-v2=-no-pie");
}
