//! `ingot-shim-helper`: runs one libcontainer operation for the shim and exits. Its one argument
//! is a JSON request; fds 0-2 are the new process's stdio; fd 3 carries an error back.

fn main() {
    let request = std::env::args().nth(1).unwrap_or_default();
    std::process::exit(containerd_shim_ingot_v2::helper::main(&request));
}
