//! berth-image DIR [TAG]: writes a busybox OCI image layout (the same test
//! image the end-to-end tests build) for benchmarks and demos on hosts
//! without a registry. `berth-image --push HOST:PORT/REPO:TAG` pushes it to
//! a plain-HTTP registry instead. Needs Debian's busybox-static.

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let usage = || anyhow::anyhow!("usage: berth-image DIR [TAG] | berth-image --push HOST:PORT/REPO:TAG");
    let mut args = std::env::args().skip(1);
    let first = args.next().ok_or_else(usage)?;
    let image = berth_tests::oci::Image::busybox()?;
    if first == "--push" {
        let target = args.next().ok_or_else(usage)?;
        let (host, rest) = target.split_once('/').ok_or_else(usage)?;
        let (repo, tag) = rest.rsplit_once(':').ok_or_else(usage)?;
        image.push(host, repo, tag).await?;
        println!("{target}");
        return Ok(());
    }
    let tag = args.next().unwrap_or_else(|| "latest".into());
    image.write_layout(std::path::Path::new(&first), &tag)?;
    println!("oci:{first}:{tag}");
    Ok(())
}
