//! `image ls | pull | rm | prune`.

use std::collections::HashSet;

use berth_node_agent::image::ImageRef;
use berth_proto::model::format_memory;

use super::{Node, Output};

#[derive(Debug, clap::Subcommand)]
pub enum ImageCommand {
    /// List pulled images.
    Ls {
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Pull an image: NAME[:TAG][@DIGEST] from a registry, or oci:PATH[:TAG].
    Pull { reference: String },
    /// Forget an image (its layers stay until pruned).
    Rm { reference: String },
    /// Delete layers that no image or container uses.
    Prune,
}

pub async fn run(node: &Node, command: ImageCommand) -> anyhow::Result<u8> {
    match command {
        ImageCommand::Ls { output } => {
            let images = node.store.list()?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&images)?),
                Output::Table => {
                    println!("{:<48} {:<20} {:>7} {:>10}", "REFERENCE", "DIGEST", "LAYERS", "SIZE");
                    for i in images {
                        let short =
                            i.digest.strip_prefix("sha256:").unwrap_or(&i.digest).chars().take(12).collect::<String>();
                        println!(
                            "{:<48} {:<20} {:>7} {:>10}",
                            i.reference,
                            short,
                            i.layers.len(),
                            format_memory(i.size)
                        );
                    }
                }
            }
        }
        ImageCommand::Pull { reference } => {
            let reference: ImageRef = reference.parse()?;
            let image = node.store.pull(&reference, &node.registries).await?;
            println!("{} {}", image.reference, image.digest);
        }
        ImageCommand::Rm { reference } => {
            let reference: ImageRef = reference.parse()?;
            let containers = node.runtime.list()?;
            let image = node
                .store
                .remove(&reference, |image| {
                    containers.iter().find(|c| c.config.image_digest == image.digest).map(|c| c.config.name.clone())
                })
                .await?;
            println!("{}", image.reference);
        }
        ImageCommand::Prune => {
            let keep: HashSet<String> = node.runtime.list()?.into_iter().flat_map(|c| c.config.layer_digests).collect();
            for digest in node.store.prune(&keep).await? {
                println!("deleted {digest}");
            }
        }
    }
    Ok(0)
}
