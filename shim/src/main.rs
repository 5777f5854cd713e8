//! containerd-shim-veil-v2 entry point.

#[tokio::main]
async fn main() {
    containerd_shim::asynchronous::run::<veil_shim::shim::VeilShim>(veil_shim::shim::RUNTIME_ID, None).await;
}
