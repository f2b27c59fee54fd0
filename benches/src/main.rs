//! `ingot-bench`: benchmarks of ingot against runc and crun under the same containerd.

use anyhow::{bail, Result};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("image") => {
            let path = args.get(1).map_or("busybox-oci.tar", String::as_str);
            ingot_tests::busybox_oci_archive(std::path::Path::new(path), ingot_tests::TEST_IMAGE)?;
            println!("wrote {path} ({})", ingot_tests::TEST_IMAGE);
            Ok(())
        }
        _ => bail!("usage: ingot-bench image [ARCHIVE]"),
    }
}
