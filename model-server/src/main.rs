//! `veil-model-server`: serve a demo model over HTTP, generate one, or query a running server.

use std::error::Error;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tracing::info;
use tracing_subscriber::EnvFilter;
use veil_model_server::server::stop_on_termination_signals;
use veil_model_server::{
    query_prediction, wait_until_healthy, write_demo_model, DemoModelOptions, Model, ModelServer,
};

/// veil's demo serving container: a static HTTP inference server for a small safetensors MLP.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write DIR/model.safetensors, the same bytes for the same arguments; prints "<sha256>  <path>".
    DemoModel {
        /// Directory to write model.safetensors into (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Marker text stored in the model's metadata [default: veil-canary-model-plaintext-<seed>].
        #[arg(long)]
        canary: Option<String>,
        /// Seed of the weight generator.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// MiB of incompressible padding to add, for benchmarks that need a large model.
        #[arg(long, default_value_t = 0)]
        pad_mib: u32,
    },
    /// Serve the model over HTTP until SIGTERM or SIGINT; prints "listening on <addr>" once bound.
    Serve {
        /// The .safetensors file, or a directory holding model.safetensors.
        #[arg(long)]
        model: PathBuf,
        /// Address to listen on; port 0 picks a free port.
        #[arg(long, default_value = "0.0.0.0:8080")]
        listen: SocketAddr,
    },
    /// Ask a running server for a prediction (prints its JSON answer) or wait until it is healthy.
    Query {
        /// Base URL of the server, e.g. http://127.0.0.1:8080 (use an IP address: the static
        /// binary has no name resolution in an empty container).
        #[arg(long)]
        url: String,
        /// Comma-separated input values, e.g. 5.1,3.5,1.4,0.2.
        #[arg(
            long,
            value_delimiter = ',',
            allow_hyphen_values = true,
            required_unless_present = "health",
            conflicts_with = "health"
        )]
        input: Vec<f32>,
        /// Wait until GET /healthz answers 200 instead of predicting.
        #[arg(long)]
        health: bool,
        /// Seconds to wait for the server (health polling, or the prediction request).
        #[arg(long, default_value_t = 30)]
        wait_secs: u64,
        /// Ask for the prediction this many times (a load for soak measurements); every
        /// answer must be the same, and the last is printed.
        #[arg(long, default_value_t = 1, conflicts_with = "health", value_parser = clap::value_parser!(u32).range(1..))]
        repeat: u32,
    },
}

fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("veil-model-server: error: {}", error_chain(error.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<(), Box<dyn Error>> {
    match command {
        Command::DemoModel {
            out,
            canary,
            seed,
            pad_mib,
        } => demo_model(
            out,
            DemoModelOptions {
                seed,
                canary,
                pad_mib,
            },
        ),
        Command::Serve { model, listen } => serve(model, listen),
        Command::Query {
            url,
            input,
            health,
            wait_secs,
            repeat,
        } => {
            let wait = Duration::from_secs(wait_secs);
            if health {
                wait_until_healthy(&url, wait)?;
                println!("ok");
                Ok(())
            } else {
                predict(&url, &input, wait, repeat)
            }
        }
    }
}

fn demo_model(out: PathBuf, options: DemoModelOptions) -> Result<(), Box<dyn Error>> {
    let written = write_demo_model(&out, &options)?;
    println!("{}  {}", written.sha256, written.path.display());
    Ok(())
}

fn serve(model_path: PathBuf, listen: SocketAddr) -> Result<(), Box<dyn Error>> {
    let model = Model::load(&model_path)?;
    info!(
        path = %model_path.display(),
        name = model.name(),
        sha256 = model.sha256(),
        parameters = model.parameter_count(),
        "model loaded"
    );
    let server = ModelServer::bind(model, listen)?;
    stop_on_termination_signals(server.stop_handle())?;
    announce_address(server.local_addr())?;
    server.run();
    Ok(())
}

/// The one stdout line tests and scripts read to learn the port; flushed because stdout is a pipe.
fn announce_address(addr: SocketAddr) -> std::io::Result<()> {
    info!(%addr, "listening");
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on {addr}")?;
    stdout.flush()
}

fn predict(url: &str, input: &[f32], wait: Duration, repeat: u32) -> Result<(), Box<dyn Error>> {
    let started = std::time::Instant::now();
    let first = query_prediction(url, input, wait)?;
    for n in 2..=repeat {
        let answer = query_prediction(url, input, wait)?;
        if answer != first {
            return Err(format!(
                "answer {n} of {repeat} differs from the first: {answer:?} after {first:?}"
            )
            .into());
        }
    }
    if repeat > 1 {
        info!(
            answers = repeat,
            seconds = started.elapsed().as_secs_f64(),
            "all answers the same"
        );
    }
    println!("{}", first.trim_end());
    Ok(())
}

fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Container logs are files: escape codes would only clutter them.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn error_chain(error: &dyn Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // thiserror messages here already embed their source; skip repeats.
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
