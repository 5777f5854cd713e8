//! `veil seal`: make keysets, seal and open models in Tink's streaming AEAD format, and inspect
//! sealed files without a key.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use veil_seal::{DecryptOptions, KeyTemplate, Keyset};

use crate::progress::Progress;

/// Arguments of `veil seal`.
#[derive(Debug, Args)]
pub struct SealArgs {
    /// Print machine-readable JSON on stdout instead of human-readable text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: SealCommand,
}

#[derive(Debug, Subcommand)]
enum SealCommand {
    /// Print a new Tink JSON keyset with one key (keep it secret; give it to the key broker).
    Keygen {
        /// Tink key template: aes128/aes256 x gcm-hkdf/ctr-hmac-sha256 x 4kb/1mb.
        #[arg(long, default_value = "aes256-gcm-hkdf-1mb")]
        template: KeyTemplate,
    },
    /// Seal a file with the keyset's primary key ("-" for stdin/stdout).
    Encrypt {
        /// Tink keyset, JSON or binary.
        #[arg(long)]
        keyset: PathBuf,
        /// Associated data bound to the ciphertext (e.g. the model name); must match on decrypt.
        #[arg(long, default_value = "")]
        aad: String,
        /// Plaintext to seal.
        input: PathBuf,
        /// Sealed output.
        output: PathBuf,
    },
    /// Open a sealed file, verifying every segment ("-" for stdin/stdout).
    Decrypt {
        /// Tink keyset, JSON or binary.
        #[arg(long)]
        keyset: PathBuf,
        /// Associated data given when sealing.
        #[arg(long, default_value = "")]
        aad: String,
        /// Decryption worker threads (default: one per CPU).
        #[arg(long)]
        threads: Option<NonZeroUsize>,
        /// Expected SHA-256 of the plaintext (64 hex digits); the output is removed on mismatch.
        #[arg(long, conflicts_with = "no_sha256")]
        sha256: Option<String>,
        /// Do not compute the plaintext's SHA-256. Every segment is still authenticated; only
        /// the whole-file digest, which runs on one core and caps the speed at one core's
        /// SHA-256 rate, is left out.
        #[arg(long)]
        no_sha256: bool,
        /// Sealed input.
        input: PathBuf,
        /// Plaintext output; written to a temporary name and renamed only when fully verified.
        output: PathBuf,
    },
    /// Show a sealed file's header and sizes; never decrypts.
    Inspect {
        /// With a keyset: also the matching keys' segment layout and plaintext size.
        #[arg(long)]
        keyset: Option<PathBuf>,
        /// Sealed input.
        input: PathBuf,
    },
}

/// Runs `veil seal`.
pub fn run(args: SealArgs) -> Result<()> {
    match args.command {
        SealCommand::Keygen { template } => keygen(template),
        SealCommand::Encrypt {
            keyset,
            aad,
            input,
            output,
        } => encrypt(&keyset, &aad, &input, &output, args.json),
        SealCommand::Decrypt {
            keyset,
            aad,
            threads,
            sha256,
            no_sha256,
            input,
            output,
        } => {
            let expected_sha256 = sha256
                .map(|hex| {
                    veil_seal::parse_sha256_hex(&hex).context("--sha256 must be 64 hex digits")
                })
                .transpose()?;
            let options = DecryptOptions {
                threads,
                expected_sha256,
                skip_sha256: no_sha256,
                progress: None,
                // A sealed file's own length sizes the output (decrypt_file_to_file); stdin has none.
                sealed_len: None,
            };
            decrypt(&keyset, &aad, options, &input, &output, args.json)
        }
        SealCommand::Inspect { keyset, input } => inspect(keyset.as_deref(), &input, args.json),
    }
}

fn is_stdio(path: &Path) -> bool {
    path.as_os_str() == "-"
}

fn read_keyset(path: &Path) -> Result<Keyset> {
    let bytes = zeroize::Zeroizing::new(
        fs::read(path).with_context(|| format!("cannot read keyset {}", path.display()))?,
    );
    Keyset::parse(&bytes).with_context(|| format!("keyset {} is not usable", path.display()))
}

fn open_input(path: &Path) -> Result<(Box<dyn Read + Send>, Option<u64>)> {
    if is_stdio(path) {
        return Ok((Box::new(io::stdin()), None));
    }
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let len = file.metadata().ok().map(|m| m.len());
    Ok((Box::new(file), len))
}

/// Where `veil seal decrypt` reads the sealed model from.
enum DecryptInput {
    File(File),
    Stdin,
}

/// Opens the sealed input; returns its length too when it is a file.
fn open_decrypt_input(path: &Path) -> Result<(DecryptInput, Option<u64>)> {
    if is_stdio(path) {
        return Ok((DecryptInput::Stdin, None));
    }
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let len = file.metadata().ok().map(|m| m.len());
    Ok((DecryptInput::File(file), len))
}

fn keygen(template: KeyTemplate) -> Result<()> {
    let keyset = Keyset::generate(template).context("cannot generate a key")?;
    let mut stdout = io::stdout().lock();
    stdout
        .write_all(keyset.to_json().as_bytes())
        .context("cannot write the keyset to stdout")?;
    tracing::info!(
        template = template.tink_name(),
        key_id = keyset.primary_key_id(),
        "keyset generated"
    );
    Ok(())
}

/// Counts and reports bytes read through it.
struct Counting<R> {
    inner: R,
    done: u64,
    progress: Option<Progress>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.done += n as u64;
        if let Some(p) = &self.progress {
            p.update(self.done);
        }
        Ok(n)
    }
}

fn encrypt(keyset_path: &Path, aad: &str, input: &Path, output: &Path, json: bool) -> Result<()> {
    let keyset = read_keyset(keyset_path)?;
    let (source, len) = open_input(input)?;
    let mut source = Counting {
        inner: source,
        done: 0,
        progress: Progress::new("sealed", len),
    };
    let started = Instant::now();
    let report = if is_stdio(output) {
        let stdout = BufWriter::with_capacity(1 << 20, io::stdout().lock());
        veil_seal::encrypt(&mut source, &keyset, aad.as_bytes(), stdout)?
    } else {
        let file =
            File::create(output).with_context(|| format!("cannot create {}", output.display()))?;
        let result = veil_seal::encrypt(
            &mut source,
            &keyset,
            aad.as_bytes(),
            BufWriter::with_capacity(1 << 20, file),
        );
        if result.is_err() {
            let _ = fs::remove_file(output);
        }
        result.with_context(|| {
            format!(
                "sealing {} failed; {} removed",
                input.display(),
                output.display()
            )
        })?
    };
    if let Some(p) = &source.progress {
        p.finish();
    }
    let params = keyset.primary().map(|k| *k.params());
    let ciphertext_bytes = params.and_then(|p| p.ciphertext_len(report.plaintext_bytes));
    let seconds = started.elapsed().as_secs_f64();
    if json {
        println!(
            "{}",
            serde_json::json!({
                "plaintext_bytes": report.plaintext_bytes,
                "ciphertext_bytes": ciphertext_bytes,
                "key_id": report.key_id,
                "key_type": params.map(|p| p.kind_name()),
                "segment_size": params.map(|p| p.segment_size()),
                "seconds": seconds,
            })
        );
    } else {
        eprintln!(
            "sealed {} bytes with key {} ({}) in {seconds:.2} s",
            report.plaintext_bytes,
            report.key_id,
            params.map_or("?", |p| p.kind_name())
        );
    }
    Ok(())
}

fn decrypt(
    keyset_path: &Path,
    aad: &str,
    mut options: DecryptOptions,
    input: &Path,
    output: &Path,
    json: bool,
) -> Result<()> {
    let keyset = read_keyset(keyset_path)?;
    let (source, len) = open_decrypt_input(input)?;
    let progress = Progress::new("opened", len).map(std::sync::Arc::new);
    options.progress = progress
        .clone()
        .map(|p| Box::new(move |done| p.update(done)) as veil_seal::ProgressFn);
    let workers = options.worker_count();
    let started = Instant::now();
    let failed_to_file = || {
        format!(
            "decryption of {} failed; no output was written",
            input.display()
        )
    };
    let report = match source {
        _ if is_stdio(output) => {
            let mut stdout = BufWriter::with_capacity(1 << 20, io::stdout().lock());
            let source: Box<dyn Read + Send> = match source {
                DecryptInput::File(file) => Box::new(file),
                DecryptInput::Stdin => Box::new(io::stdin()),
            };
            veil_seal::decrypt_to_writer(source, &keyset, aad.as_bytes(), &mut stdout, &options)
                .context("decryption failed; the verified segments before the failure were already written to stdout: discard them")?
        }
        // From a file into a file the workers can read and write their own segments.
        DecryptInput::File(file) => {
            veil_seal::decrypt_file_to_file(&file, &keyset, aad.as_bytes(), output, &options)
                .with_context(failed_to_file)?
        }
        DecryptInput::Stdin => {
            veil_seal::decrypt_to_file(io::stdin(), &keyset, aad.as_bytes(), output, &options)
                .with_context(failed_to_file)?
        }
    };
    if let Some(p) = &progress {
        p.finish();
    }
    let seconds = started.elapsed().as_secs_f64();
    let mib_per_s = report.plaintext_bytes as f64 / (1 << 20) as f64 / seconds.max(1e-9);
    if json {
        println!(
            "{}",
            serde_json::json!({
                "plaintext_bytes": report.plaintext_bytes,
                "sha256": report.sha256_hex(),
                "segments": report.segments,
                "key_id": report.key_id,
                "threads": workers,
                "seconds": seconds,
                "mib_per_s": mib_per_s,
            })
        );
    } else {
        eprintln!(
            "opened {} bytes ({} segments, key {}) in {seconds:.2} s ({mib_per_s:.0} MiB/s, {workers} threads); sha256 {}",
            report.plaintext_bytes,
            report.segments,
            report.key_id,
            report
                .sha256_hex()
                .unwrap_or_else(|| "not computed (--no-sha256)".into())
        );
    }
    Ok(())
}

fn inspect(keyset_path: Option<&Path>, input: &Path, json: bool) -> Result<()> {
    let (source, _) = open_input(input)?;
    let info = veil_seal::inspect(source)
        .with_context(|| format!("cannot inspect {}", input.display()))?;
    let keyset = keyset_path.map(read_keyset).transpose()?;
    let candidates: Vec<_> = keyset
        .iter()
        .flat_map(|k| k.enabled_keys())
        .filter_map(|key| info.layout(key.params()).map(|layout| (key, layout)))
        .collect();
    if json {
        let keys: Vec<_> = candidates
            .iter()
            .map(|(key, layout)| {
                serde_json::json!({
                    "key_id": key.id(),
                    "key_type": key.params().kind_name(),
                    "segment_size": key.params().segment_size(),
                    "segments": layout.segments,
                    "plaintext_bytes": layout.plaintext_bytes,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "header_len": info.header_len,
                "derived_key_size": info.derived_key_size,
                "ciphertext_bytes": info.ciphertext_bytes,
                "matching_keys": keys,
            })
        );
        return Ok(());
    }
    println!("format: Tink streaming AEAD (AES-GCM-HKDF or AES-CTR-HMAC)");
    println!(
        "header: {} bytes (salt {} bytes, nonce prefix 7 bytes)",
        info.header_len, info.derived_key_size
    );
    println!("derived key: AES-{}", info.derived_key_size * 8);
    println!("ciphertext: {} bytes", info.ciphertext_bytes);
    if keyset.is_some() && candidates.is_empty() {
        bail!("no enabled key of the keyset has this header size and a segment layout that fits this length");
    }
    for (key, layout) in candidates {
        println!(
            "key {} ({}, {}-byte segments): {} segments, {} plaintext bytes",
            key.id(),
            key.params().kind_name(),
            key.params().segment_size(),
            layout.segments,
            layout.plaintext_bytes
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Wrapper {
        #[command(flatten)]
        seal: SealArgs,
    }

    fn veil_seal(args: &[&str]) -> Result<()> {
        let parsed = Wrapper::try_parse_from(std::iter::once("seal").chain(args.iter().copied()))?;
        run(parsed.seal)
    }

    #[test]
    fn encrypt_inspect_decrypt_round_trip_and_failures_leave_no_output() {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
        let keyset = Keyset::generate(KeyTemplate::Aes128GcmHkdf4Kb).unwrap();
        fs::write(path("keyset.json"), keyset.to_json().as_bytes()).unwrap();
        let plaintext: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
        fs::write(path("plain"), &plaintext).unwrap();

        let ks = path("keyset.json");
        veil_seal(&[
            "encrypt",
            "--keyset",
            &ks,
            "--aad",
            "m",
            &path("plain"),
            &path("sealed"),
        ])
        .unwrap();
        veil_seal(&["inspect", "--json", "--keyset", &ks, &path("sealed")]).unwrap();
        veil_seal(&[
            "decrypt",
            "--keyset",
            &ks,
            "--aad",
            "m",
            "--threads",
            "2",
            &path("sealed"),
            &path("out"),
        ])
        .unwrap();
        assert_eq!(fs::read(path("out")).unwrap(), plaintext);

        let wrong = "00".repeat(32);
        let err = veil_seal(&[
            "decrypt",
            "--keyset",
            &ks,
            "--aad",
            "m",
            "--sha256",
            &wrong,
            &path("sealed"),
            &path("out2"),
        ]);
        assert!(err.is_err());
        assert!(!dir.path().join("out2").exists());
        let err = veil_seal(&[
            "decrypt",
            "--keyset",
            &ks,
            "--aad",
            "other",
            &path("sealed"),
            &path("out3"),
        ])
        .unwrap_err();
        assert!(format!("{err:#}").contains("no key matched"), "{err:#}");
        assert!(!dir.path().join("out3").exists());
        assert!(veil_seal(&[
            "decrypt",
            "--keyset",
            &ks,
            "--sha256",
            "xyz",
            &path("sealed"),
            &path("o")
        ])
        .is_err());
        assert!(veil_seal(&["keygen", "--template", "aes512"]).is_err());

        veil_seal(&[
            "decrypt",
            "--keyset",
            &ks,
            "--aad",
            "m",
            "--no-sha256",
            &path("sealed"),
            &path("unhashed"),
        ])
        .unwrap();
        assert_eq!(fs::read(path("unhashed")).unwrap(), plaintext);
        let both = veil_seal(&[
            "decrypt",
            "--keyset",
            &ks,
            "--no-sha256",
            "--sha256",
            &"00".repeat(32),
            &path("sealed"),
            &path("o"),
        ]);
        assert!(both.is_err(), "an expected digest cannot be skipped");

        // From a file into a file without the digest, the workers read and write their own
        // segments: a modified segment still fails by name and leaves nothing.
        let mut tampered = fs::read(path("sealed")).unwrap();
        tampered[2 * 4096 + 9] ^= 1;
        fs::write(path("tampered"), &tampered).unwrap();
        let err = veil_seal(&[
            "decrypt",
            "--keyset",
            &ks,
            "--aad",
            "m",
            "--no-sha256",
            "--threads",
            "3",
            &path("tampered"),
            &path("o4"),
        ])
        .unwrap_err();
        assert!(format!("{err:#}").contains("segment 2 "), "{err:#}");
        assert!(!dir.path().join("o4").exists());
    }
}
