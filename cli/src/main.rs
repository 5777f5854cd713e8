//! The `veil` command line for node operators and model owners.

fn main() {
    println!("veil {}", env!("CARGO_PKG_VERSION"));
}
