//! `containerd-shim-ingot-v2`: the containerd shim v2 of ingot. One process per pod serves the
//! Task API over ttrpc and runs the pod's containers with libcontainer (through a short-lived
//! helper, see `helper`).

mod bootstrap;
mod cgroups;
mod error;
mod helper;
mod io;
mod mount;
mod reaper;
mod service;

fn main() {
    let mut args = std::env::args();
    if args.nth(1).as_deref() == Some(helper::HELPER_ARG) {
        let request = args.next().unwrap_or_default();
        std::process::exit(helper::main(&request));
    }
    if let Err(err) = bootstrap::run() {
        eprintln!("containerd-shim-ingot-v2: {err:#}");
        std::process::exit(1);
    }
}
