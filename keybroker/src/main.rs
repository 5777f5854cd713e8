//! `veil-kbs`: the standalone key broker. Same as `veil kbs serve`.

use std::path::PathBuf;

use clap::Parser;
use veil_keybroker::config::{KbsConfig, TlsConfig};
use veil_keybroker::Broker;

/// veil-kbs: attestation-gated key broker (Trustee KBS protocol).
#[derive(Debug, Parser)]
#[command(name = "veil-kbs", version, about)]
struct Args {
    /// Address to listen on (port 0 picks a free port; the chosen address is printed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
    /// State directory: resources, policies, token key.
    #[arg(long)]
    state: Option<PathBuf>,
    /// Admin public key (PEM, from `veil kbs admin-keygen`); repeat for several.
    #[arg(long = "admin-pubkey")]
    admin_pubkey: Vec<PathBuf>,
    /// JSON configuration file instead of the flags above.
    #[arg(long, conflicts_with_all = ["state", "admin_pubkey"])]
    config: Option<PathBuf>,
    /// Offline directory of VCEK certificates for SNP evidence that carries none.
    #[arg(long)]
    vcek_cache: Option<PathBuf>,
    /// Serve HTTPS with this PEM certificate chain (own certificate first); needs --tls-key.
    /// Without it the broker serves plain HTTP, for loopback demos only.
    #[arg(long, requires = "tls_key", conflicts_with = "config")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, requires = "tls_cert", conflicts_with = "config")]
    tls_key: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("VEIL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match run(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("veil-kbs: {message}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let config = match &args.config {
        Some(path) => KbsConfig::load(path).map_err(|e| e.to_string())?,
        None => {
            let state = args
                .state
                .ok_or("--state DIR is required (or --config FILE)")?;
            let mut config = KbsConfig::new(args.listen, state, args.admin_pubkey);
            config.snp.vcek_cache_dir = args.vcek_cache;
            config.tls = TlsConfig::from_flags(args.tls_cert, args.tls_key);
            config
        }
    };
    let broker = Broker::start(&config).await.map_err(|e| e.to_string())?;
    // The address alone, as scripts and the integration harness read it; the scheme follows
    // from whether a certificate was given (and is in the log).
    println!("listening on {}", broker.local_addr);
    broker.wait().await.map_err(|e| e.to_string())
}
