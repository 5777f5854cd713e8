//! `veil kbs`: run the key broker, manage its resources and policies, and fetch a resource
//! as a guest would.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use veil_kbs_client::{fetch_resource, Attester, KbsClientConfig, SampleClaims, Zeroizing};
use veil_keybroker::admin::generate_admin_key;
use veil_keybroker::admin_client::AdminClient;
use veil_keybroker::config::{KbsConfig, TlsConfig};
use veil_keybroker::Broker;

/// Key broker commands.
#[derive(Debug, Args)]
pub struct KbsArgs {
    #[command(subcommand)]
    command: KbsCommand,
}

#[derive(Debug, Subcommand)]
enum KbsCommand {
    /// Run the key broker (prints the address it listens on).
    Serve(ServeArgs),
    /// Create an admin key pair: FILE (private, 0600) and FILE.pub.
    AdminKeygen {
        /// Where to write the private key; the public key goes to FILE.pub.
        #[arg(long)]
        out: PathBuf,
    },
    /// Manage resources.
    #[command(subcommand)]
    Resource(ResourceCommand),
    /// Manage resource policies.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Attest and fetch a resource as a guest; writes the secret to stdout.
    Get(GetArgs),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to listen on; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// State directory (resources, policies, token key).
    #[arg(long)]
    state: PathBuf,
    /// Admin public key (PEM) from `veil kbs admin-keygen`; repeat for several.
    #[arg(long = "admin-pubkey", required = true)]
    admin_pubkey: Vec<PathBuf>,
    /// Offline VCEK directory for SNP evidence that carries no VCEK.
    #[arg(long)]
    vcek_cache: Option<PathBuf>,
    /// Session lifetime in seconds.
    #[arg(long, default_value_t = 300)]
    session_ttl: u64,
    /// Serve HTTPS with this PEM certificate chain (the broker's own certificate first).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum ResourceCommand {
    /// Store FILE as resource REPO/TYPE/TAG.
    Put {
        /// Broker URL, e.g. http://127.0.0.1:8080.
        #[arg(long)]
        url: String,
        /// Admin private key (PEM).
        #[arg(long)]
        admin_key: PathBuf,
        /// PEM CA certificate to verify an https:// broker against (default: WebPKI roots).
        #[arg(long)]
        ca: Option<PathBuf>,
        /// REPO/TYPE/TAG.
        resource: String,
        /// File with the resource bytes.
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Set the CEL policy of REPO/TYPE/TAG.
    Set {
        /// Broker URL.
        #[arg(long)]
        url: String,
        /// Admin private key (PEM).
        #[arg(long)]
        admin_key: PathBuf,
        /// PEM CA certificate to verify an https:// broker against (default: WebPKI roots).
        #[arg(long)]
        ca: Option<PathBuf>,
        /// REPO/TYPE/TAG.
        resource: String,
        /// CEL condition over `claims`, e.g. "claims.tee == 'snp' && claims.measurement in ['..']".
        cel: String,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum AttesterKind {
    /// INSECURE self-reported evidence (development machines without a TEE).
    Sample,
    /// SEV-SNP through /dev/sev-guest.
    Snp,
}

#[derive(Debug, Args)]
struct GetArgs {
    /// Broker URL.
    #[arg(long)]
    url: String,
    /// PEM CA certificate to verify an https:// broker against (default: WebPKI roots).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// How to produce evidence.
    #[arg(long, value_enum)]
    attester: AttesterKind,
    /// Measurement the sample attester claims (ignored for snp).
    #[arg(long, default_value = "")]
    sample_measurement: String,
    /// VMPL for the SNP report (0 without an SVSM).
    #[arg(long, default_value_t = 0)]
    vmpl: u32,
    /// Seconds allowed per HTTP call.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    /// REPO/TYPE/TAG.
    resource: String,
}

/// Runs a `veil kbs` command.
pub fn run(args: KbsArgs) -> anyhow::Result<()> {
    match args.command {
        KbsCommand::Serve(serve_args) => serve(serve_args),
        KbsCommand::AdminKeygen { out } => {
            generate_admin_key(&out)?;
            eprintln!(
                "wrote {} (private, keep it) and {}.pub (give to `veil kbs serve --admin-pubkey`)",
                out.display(),
                out.display()
            );
            Ok(())
        }
        KbsCommand::Resource(ResourceCommand::Put {
            url,
            admin_key,
            ca,
            resource,
            file,
        }) => {
            let bytes = Zeroizing::new(
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?,
            );
            admin_client(&url, &admin_key, ca.as_deref())?.put_resource(&resource, &bytes)?;
            eprintln!("stored {resource} ({} bytes)", bytes.len());
            Ok(())
        }
        KbsCommand::Policy(PolicyCommand::Set {
            url,
            admin_key,
            ca,
            resource,
            cel,
        }) => {
            admin_client(&url, &admin_key, ca.as_deref())?.set_policy(&resource, &cel)?;
            eprintln!("policy of {resource} set");
            Ok(())
        }
        KbsCommand::Get(get_args) => {
            let secret = get(&get_args)?;
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(&secret)?;
            stdout.flush()?;
            Ok(())
        }
    }
}

/// The trust anchors in the PEM file given with `--ca`.
fn read_ca(path: &Path) -> anyhow::Result<veil_kbs_client::roots::RootCerts> {
    let pem = std::fs::read(path).with_context(|| format!("reading --ca {}", path.display()))?;
    veil_kbs_client::root_certs_from_pem(&pem).with_context(|| format!("--ca {}", path.display()))
}

/// An admin client for `url`, trusting the `--ca` file when one is given.
fn admin_client(url: &str, key: &Path, ca: Option<&Path>) -> anyhow::Result<AdminClient> {
    let client = AdminClient::from_key_file(url, key)?;
    Ok(match ca {
        Some(ca) => client.trusting(read_ca(ca)?),
        None => client,
    })
}

/// The broker configuration `veil kbs serve` runs with.
fn serve_config(args: ServeArgs) -> KbsConfig {
    let mut config = KbsConfig::new(args.listen, args.state, args.admin_pubkey);
    config.session_ttl_secs = args.session_ttl;
    config.snp.vcek_cache_dir = args.vcek_cache;
    config.tls = TlsConfig::from_flags(args.tls_cert, args.tls_key);
    config
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = serve_config(args);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let broker = Broker::start(&config).await?;
        println!("listening on {}", broker.local_addr);
        std::io::stdout().flush()?;
        broker.wait().await?;
        bail!("the key broker stopped serving")
    })
}

fn get(args: &GetArgs) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    let attester = match args.attester {
        AttesterKind::Sample => Attester::Sample(SampleClaims {
            measurement: args.sample_measurement.clone(),
            host_data: String::new(),
        }),
        AttesterKind::Snp => Attester::Snp {
            vmpl: args.vmpl,
            expected_host_data: None,
        },
    };
    let config = KbsClientConfig {
        url: args.url.clone(),
        attester,
        timeout: Duration::from_secs(args.timeout),
        resolver: None,
        root_certs: args.ca.as_deref().map(read_ca).transpose()?,
    };
    Ok(fetch_resource(&config, &args.resource)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct TestCli {
        #[command(subcommand)]
        command: KbsCommand,
    }

    fn parse(args: &[&str]) -> KbsArgs {
        let cli = TestCli::parse_from(std::iter::once("kbs").chain(args.iter().copied()));
        KbsArgs {
            command: cli.command,
        }
    }

    fn serve_args(extra: &[&str]) -> ServeArgs {
        let mut args = vec!["serve", "--state", "/s", "--admin-pubkey", "/a.pub"];
        args.extend_from_slice(extra);
        match parse(&args).command {
            KbsCommand::Serve(serve) => serve,
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn serve_takes_a_tls_certificate_and_key_together() {
        assert_eq!(serve_config(serve_args(&[])).tls, None);
        let tls = serve_config(serve_args(&["--tls-cert", "/c.pem", "--tls-key", "/k.pem"])).tls;
        assert_eq!(
            tls,
            Some(TlsConfig {
                certificate: PathBuf::from("/c.pem"),
                private_key: PathBuf::from("/k.pem"),
            })
        );
        let alone = TestCli::try_parse_from([
            "kbs",
            "serve",
            "--state",
            "/s",
            "--admin-pubkey",
            "/a.pub",
            "--tls-cert",
            "/c.pem",
        ]);
        assert!(alone.is_err(), "a certificate without its key was accepted");
    }

    /// A CA and a certificate it issued for 127.0.0.1, written as ca.pem, server.crt and
    /// server.key in `dir`.
    fn private_ca(dir: &Path) -> TlsConfig {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![SanType::IpAddress([127, 0, 0, 1].into())];
        let certificate = params.signed_by(&key, &ca, &ca_key).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.join("server.crt"), certificate.pem()).unwrap();
        std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
        TlsConfig {
            certificate: dir.join("server.crt"),
            private_key: dir.join("server.key"),
        }
    }

    #[test]
    fn put_policy_and_get_reach_an_https_broker_through_ca() {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
        run(parse(&["admin-keygen", "--out", &path("admin.key")])).unwrap();
        let mut config = KbsConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            dir.path().join("state"),
            vec![dir.path().join("admin.key.pub")],
        );
        config.tls = Some(private_ca(dir.path()));
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let broker = runtime.block_on(Broker::start(&config)).unwrap();
        let url = broker.url();
        assert!(url.starts_with("https://"), "{url}");
        std::fs::write(path("model.key"), b"k3y").unwrap();
        let (key, ca, secret) = (path("admin.key"), path("ca.pem"), path("model.key"));
        let admin = |command: &[&str], rest: &[&str]| {
            let mut args = command.to_vec();
            args.extend(["--url", url.as_str(), "--admin-key", key.as_str()]);
            args.extend_from_slice(rest);
            run(parse(&args))
        };

        let untrusted = admin(&["resource", "put"], &["models/key/m", &secret]);
        assert!(
            untrusted.is_err(),
            "an https broker under a private CA was trusted without --ca"
        );
        admin(
            &["resource", "put"],
            &["--ca", &ca, "models/key/m", &secret],
        )
        .unwrap();
        let policy = "claims.tee == 'sample'";
        admin(&["policy", "set"], &["--ca", &ca, "models/key/m", policy]).unwrap();
        let get_args = match parse(&[
            "get",
            "--url",
            &url,
            "--ca",
            &ca,
            "--attester",
            "sample",
            "models/key/m",
        ])
        .command
        {
            KbsCommand::Get(args) => args,
            other => panic!("parsed as {other:?}"),
        };
        assert_eq!(get(&get_args).unwrap().as_slice(), b"k3y");

        let not_a_ca = admin(
            &["policy", "set"],
            &["--ca", &secret, "models/key/m", "true"],
        )
        .unwrap_err();
        assert!(format!("{not_a_ca:#}").contains("--ca"), "{not_a_ca:#}");
    }

    #[test]
    fn keygen_put_policy_and_get_against_a_live_broker() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("admin.key");
        let key_str = key.to_str().unwrap();
        run(parse(&["admin-keygen", "--out", key_str])).unwrap();

        let config = KbsConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            dir.path().join("state"),
            vec![dir.path().join("admin.key.pub")],
        );
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let broker = runtime.block_on(Broker::start(&config)).unwrap();
        let url = broker.url();

        let secret_file = dir.path().join("model.key");
        std::fs::write(&secret_file, b"k3y").unwrap();
        run(parse(&[
            "resource",
            "put",
            "--url",
            &url,
            "--admin-key",
            key_str,
            "models/key/m",
            secret_file.to_str().unwrap(),
        ]))
        .unwrap();
        run(parse(&[
            "policy",
            "set",
            "--url",
            &url,
            "--admin-key",
            key_str,
            "models/key/m",
            "claims.tee == 'sample' && claims.measurement == 'ok'",
        ]))
        .unwrap();

        let good = parse(&[
            "get",
            "--url",
            &url,
            "--attester",
            "sample",
            "--sample-measurement",
            "ok",
            "models/key/m",
        ]);
        let KbsCommand::Get(good) = good.command else {
            panic!("not a get")
        };
        assert_eq!(get(&good).unwrap().as_slice(), b"k3y");

        let bad = GetArgs {
            sample_measurement: "nope".into(),
            ..good
        };
        let err = get(&bad).unwrap_err().to_string();
        assert!(err.contains("policy-denied"), "{err}");
        assert!(err.contains("claims.measurement == 'ok'"), "{err}");

        let bad_policy = run(parse(&[
            "policy",
            "set",
            "--url",
            &url,
            "--admin-key",
            key_str,
            "models/key/m",
            "claims.tee ==",
        ]))
        .unwrap_err()
        .to_string();
        assert!(bad_policy.contains("policy-syntax"), "{bad_policy}");
    }
}
