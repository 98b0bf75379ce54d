//! berth-image DIR [TAG]: writes a busybox OCI image layout (the same test
//! image the end-to-end tests build) for benchmarks and demos on hosts
//! without a registry. Needs Debian's busybox-static.

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().ok_or_else(|| anyhow::anyhow!("usage: berth-image DIR [TAG]"))?;
    let tag = args.next().unwrap_or_else(|| "latest".into());
    berth_tests::oci::Image::busybox()?.write_layout(std::path::Path::new(&dir), &tag)?;
    println!("oci:{dir}:{tag}");
    Ok(())
}
