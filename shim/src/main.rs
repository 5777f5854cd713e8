//! containerd-shim-veil-v2 entry point.

#[tokio::main]
async fn main() {
    std::process::exit(veil_shim::shim::run().await);
}
