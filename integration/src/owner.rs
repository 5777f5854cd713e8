//! The model owner's side, for end-to-end tests and the demo: a demo model sealed with a
//! fresh keyset, an HTTP model store serving the ciphertext, and a real `veil-kbs` holding
//! the keyset behind a policy.
//!
//! With [`Transport::Https`] both serve HTTPS under a private CA made for the test ([`tls`]),
//! and the pod trusts that CA through `io.veil.model.ca`.
//!
//! On a real deployment all of this lives off the node. Here it shares the machine, so its
//! files sit in one directory ([`ModelOwner::dir`]) that host-blindness scans leave out.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use base64::Engine;
use veil_model_server::{write_demo_model, DemoModelOptions, WrittenModel};
use veil_seal::{KeyTemplate, Keyset};

pub mod tls;

use tls::{OwnerPki, TlsFront};

/// The key broker resource holding the model's keyset.
pub const KEY_RESOURCE: &str = "models/key/demo";
/// The policy that admits veil's development guests (the INSECURE sample attester). A
/// real owner pins `claims.tee == 'snp'` and the launch measurement instead.
pub const SAMPLE_POLICY: &str = "claims.tee == 'sample'";
/// Associated data the demo model is sealed with.
pub const ASSOCIATED_DATA: &str = "veil-demo-model-v1";

/// A static file server on 127.0.0.1 (the model store).
pub struct ModelStore {
    /// `http://127.0.0.1:<port>`, or `https://` behind a TLS front.
    pub url: String,
    server: Arc<tiny_http::Server>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    // Dropped after the server has stopped (fields drop after `Drop::drop`).
    _front: Option<TlsFront>,
}

impl ModelStore {
    /// Serves the files of `dir` (flat, GET only) until dropped.
    pub fn serve(dir: &Path) -> Result<ModelStore> {
        let server = Arc::new(
            tiny_http::Server::http("127.0.0.1:0")
                .map_err(|e| anyhow::anyhow!("start the model store: {e}"))?,
        );
        let port = server
            .server_addr()
            .to_ip()
            .context("model store address")?
            .port();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (server, stop, dir) = (server.clone(), stop.clone(), dir.to_path_buf());
            std::thread::spawn(move || serve_files(&server, &stop, &dir))
        };
        Ok(ModelStore {
            url: format!("http://127.0.0.1:{port}"),
            server,
            stop,
            thread: Some(thread),
            _front: None,
        })
    }

    /// Like [`ModelStore::serve`], over HTTPS with `pki`'s certificate: only the TLS port
    /// is in [`ModelStore::url`].
    pub fn serve_https(dir: &Path, pki: &OwnerPki) -> Result<ModelStore> {
        let mut store = ModelStore::serve(dir)?;
        let backend = store
            .server
            .server_addr()
            .to_ip()
            .context("model store address")?;
        let front = TlsFront::start(pki, backend)?;
        store.url = format!("https://127.0.0.1:{}", front.port);
        store._front = Some(front);
        Ok(store)
    }
}

fn serve_files(server: &tiny_http::Server, stop: &AtomicBool, dir: &Path) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(Some(request)) = server.recv_timeout(Duration::from_millis(100)) else {
            continue;
        };
        let name = request.url().trim_start_matches('/').to_string();
        let file = (!name.contains('/') && !name.starts_with('.'))
            .then(|| std::fs::File::open(dir.join(&name)).ok())
            .flatten();
        let _ = match file {
            // With a Content-Length, as object stores and web servers send files (tiny_http
            // would stream large ones chunked): the agent checks the model's fit from it.
            Some(file) => request
                .respond(tiny_http::Response::from_file(file).with_chunked_threshold(usize::MAX)),
            None => request.respond(tiny_http::Response::empty(404)),
        };
    }
}

impl Drop for ModelStore {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A running `veil-kbs`.
pub struct KeyBroker {
    /// `http://127.0.0.1:<port>`, or `https://` when started with a certificate.
    pub url: String,
    child: Child,
    admin: veil_keybroker::admin_client::AdminClient,
}

fn kbs_binary() -> Result<PathBuf> {
    let path = std::env::var_os("VEIL_KBS")
        .map(PathBuf::from)
        .or_else(|| crate::target_profile_dir().map(|d| d.join("veil-kbs")))
        .context("cannot tell where veil-kbs is; set VEIL_KBS")?;
    if !path.exists() {
        bail!(
            "{} is missing: run `cargo build -p veil-keybroker` (make test does it)",
            path.display()
        );
    }
    Ok(path)
}

impl KeyBroker {
    /// Starts `veil-kbs` with its state in `dir`, listening on 127.0.0.1 (plain HTTP).
    pub fn start(dir: &Path) -> Result<KeyBroker> {
        KeyBroker::start_with(dir, None)
    }

    /// Like [`KeyBroker::start`]; with `pki`, `veil-kbs` serves HTTPS with its certificate
    /// (`--tls-cert`, `--tls-key`) and the admin calls trust its CA alone.
    pub fn start_with(dir: &Path, pki: Option<&OwnerPki>) -> Result<KeyBroker> {
        let key = dir.join("admin.key");
        veil_keybroker::admin::generate_admin_key(&key).context("admin key")?;
        let mut command = Command::new(kbs_binary()?);
        command
            .args(["--listen", "127.0.0.1:0", "--state"])
            .arg(dir.join("kbs-state"))
            .arg("--admin-pubkey")
            .arg(dir.join("admin.key.pub"));
        if let Some(pki) = pki {
            command
                .arg("--tls-cert")
                .arg(&pki.identity.certificate)
                .arg("--tls-key")
                .arg(&pki.identity.private_key);
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::from(
                std::fs::File::create(dir.join("kbs.log")).context("kbs log")?,
            ))
            .spawn()
            .context("start veil-kbs")?;
        let stdout = child.stdout.take().context("veil-kbs stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                bail!("veil-kbs printed no address within 30 s");
            }
        };
        let Some(addr) = line.trim().strip_prefix("listening on ") else {
            let _ = child.kill();
            bail!("veil-kbs said {line:?} instead of its address");
        };
        let scheme = if pki.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{addr}");
        let mut admin = veil_keybroker::admin_client::AdminClient::from_key_file(&url, &key)
            .context("admin client")?;
        if let Some(pki) = pki {
            admin = admin.trusting(pki.roots());
        }
        Ok(KeyBroker { url, child, admin })
    }

    /// Stores a resource.
    pub fn put_resource(&self, resource: &str, bytes: &[u8]) -> Result<()> {
        self.admin
            .put_resource(resource, bytes)
            .with_context(|| format!("put {resource}"))
    }

    /// Sets a resource's CEL policy.
    pub fn set_policy(&self, resource: &str, policy: &str) -> Result<()> {
        self.admin
            .set_policy(resource, policy)
            .with_context(|| format!("set the policy of {resource}"))
    }
}

impl Drop for KeyBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the owner seals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packaging {
    /// The model file itself (`io.veil.model.unpack: none`).
    File,
    /// A gzip-compressed tar of the model file plus [`ARCHIVE_EXTRAS`]
    /// (`io.veil.model.unpack: tar.gz`), unpacked at the volume's root.
    TarGz,
}

/// Files the tar.gz packaging adds next to `model.safetensors` (paths in the archive, and
/// contents; each holds the canary after this text).
pub const ARCHIVE_EXTRAS: [(&str, &str); 2] = [
    (
        "config/config.json",
        "{\"architecture\": \"mlp\", \"note\": \"",
    ),
    (
        "config/tokenizer/vocab.txt",
        "setosa\nversicolor\nvirginica\n",
    ),
];

/// How the store and the broker are reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Plain HTTP on 127.0.0.1.
    Http,
    /// HTTPS on 127.0.0.1 under a private CA, which the pod trusts through
    /// `io.veil.model.ca`.
    Https,
}

/// How [`ModelOwner::start_with`] prepares the model.
#[derive(Debug, Clone, Copy)]
pub struct OwnerOptions {
    /// Seed of the demo model's weights.
    pub seed: u64,
    /// MiB of padding added to the model file.
    pub pad_mib: u32,
    /// What is sealed.
    pub packaging: Packaging,
    /// How the store and the broker are reached.
    pub transport: Transport,
}

impl OwnerOptions {
    /// The plain model file for `seed`, no padding.
    pub fn new(seed: u64) -> OwnerOptions {
        OwnerOptions {
            seed,
            pad_mib: 0,
            packaging: Packaging::File,
            transport: Transport::Http,
        }
    }
}

/// Everything the owner has and serves.
pub struct ModelOwner {
    dir: tempfile::TempDir,
    /// The plaintext demo model (owner side only).
    pub model: WrittenModel,
    /// The canary string inside the plaintext.
    pub canary: String,
    /// Byte strings that must never appear on the host: the canary, the keyset's
    /// encoded key data, the raw key.
    pub secrets: Vec<Vec<u8>>,
    /// The sealed model's file name in the store.
    pub sealed_name: String,
    /// What was sealed.
    pub packaging: Packaging,
    /// Every plaintext file the volume must hold once delivered: path relative to the
    /// volume and lowercase hex SHA-256.
    pub files: Vec<(String, String)>,
    /// SHA-256 of the sealed plaintext (the model file, or the archive), what
    /// `io.veil.model.sha256` names.
    pub plaintext_sha256: String,
    /// The model store.
    pub store: ModelStore,
    /// The key broker.
    pub kbs: KeyBroker,
    /// The private CA and server certificate, with [`Transport::Https`].
    pub pki: Option<OwnerPki>,
}

/// The encoded key data and the raw key of a one-key AES-256 keyset: the key value is the
/// last field of Tink's key protobuf, so its 32 bytes end the decoded key data.
fn key_secrets(keyset_json: &str) -> Result<Vec<Vec<u8>>> {
    let json: serde_json::Value = serde_json::from_str(keyset_json)?;
    let value = json["key"][0]["keyData"]["value"]
        .as_str()
        .context("keyset JSON has no key[0].keyData.value")?
        .to_string();
    let proto = base64::engine::general_purpose::STANDARD.decode(&value)?;
    if proto.len() < 32 {
        bail!("key data is shorter than an AES-256 key");
    }
    let raw = proto[proto.len() - 32..].to_vec();
    Ok(vec![value.into_bytes(), raw])
}

impl ModelOwner {
    /// Seals a fresh demo model (`pad_mib` MiB of extra weights) and starts the store and
    /// the broker, with [`SAMPLE_POLICY`] on the key.
    pub fn start(seed: u64, pad_mib: u32) -> Result<ModelOwner> {
        ModelOwner::start_with(OwnerOptions {
            pad_mib,
            ..OwnerOptions::new(seed)
        })
    }

    /// Like [`ModelOwner::start`], sealing what `options` say.
    pub fn start_with(options: OwnerOptions) -> Result<ModelOwner> {
        let OwnerOptions {
            seed,
            pad_mib,
            packaging,
            transport,
        } = options;
        let dir = tempfile::Builder::new()
            .prefix("veil-owner-")
            .tempdir()
            .context("owner directory")?;
        let canary = format!("veil-canary-{}", hex::encode(random_bytes::<12>()?));
        let model = write_demo_model(
            &dir.path().join("plaintext"),
            &DemoModelOptions {
                seed,
                canary: Some(canary.clone()),
                pad_mib,
            },
        )
        .context("write the demo model")?;
        let keyset = Keyset::generate(KeyTemplate::Aes256GcmHkdf1Mb).context("keyset")?;
        let keyset_json = keyset.to_json();
        let store_dir = dir.path().join("store");
        std::fs::create_dir_all(&store_dir)?;
        let sealed_name = "model.sealed".to_string();
        let mut secrets = key_secrets(&keyset_json)?;
        secrets.push(canary.clone().into_bytes());
        let mut files = vec![("model.safetensors".to_string(), model.sha256.clone())];
        let plaintext = match packaging {
            Packaging::File => model.path.clone(),
            Packaging::TarGz => {
                let plaintext_dir = dir.path().join("plaintext");
                files.extend(write_archive_extras(&plaintext_dir, &canary)?);
                let archive = dir.path().join("model.tar.gz");
                pack_tar_gz(&plaintext_dir, &archive)?;
                // The compressed archive does not show the canary: look for its own bytes.
                secrets.push(sample_of(&archive)?);
                archive
            }
        };
        let plaintext_sha256 = sha256_hex_of(&plaintext)?;
        seal_file(&plaintext, &keyset, &store_dir.join(&sealed_name))?;
        let pki = match transport {
            Transport::Http => None,
            Transport::Https => Some(OwnerPki::create(dir.path())?),
        };
        let kbs = KeyBroker::start_with(dir.path(), pki.as_ref())?;
        kbs.put_resource(KEY_RESOURCE, keyset_json.as_bytes())?;
        kbs.set_policy(KEY_RESOURCE, SAMPLE_POLICY)?;
        let store = match &pki {
            None => ModelStore::serve(&store_dir)?,
            Some(pki) => ModelStore::serve_https(&store_dir, pki)?,
        };
        Ok(ModelOwner {
            dir,
            model,
            canary,
            secrets,
            sealed_name,
            packaging,
            files,
            plaintext_sha256,
            store,
            kbs,
            pki,
        })
    }

    /// The owner's directory (plaintext, keyset, broker state): off the node in reality.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The sealed model's URL at the store.
    pub fn sealed_url(&self) -> String {
        format!("{}/{}", self.store.url, self.sealed_name)
    }

    /// The sealed model's path in the store directory.
    pub fn sealed_path(&self) -> PathBuf {
        self.dir.path().join("store").join(&self.sealed_name)
    }

    /// Files a node operator can read that hold any of [`Self::secrets`]: containerd's
    /// directories, veil's state, /tmp, /run and /var/log, minus the owner's own directory.
    pub fn secrets_on_host(&self, containerd: &crate::Containerd) -> Vec<String> {
        let roots: Vec<&Path> = vec![
            containerd.dir(),
            &containerd.veil_state,
            Path::new("/tmp"),
            Path::new("/run"),
            Path::new("/var/log"),
            Path::new("/var/lib/containerd"),
        ];
        files_containing(&roots, &[self.dir()], &self.secrets)
    }

    /// The pod annotations that deliver this model from the store into memory volume
    /// `volume`, as `model.safetensors` (or unpacked at the volume's root for
    /// [`Packaging::TarGz`]); with [`Transport::Https`], `io.veil.model.ca` names the CA.
    pub fn annotations(&self, volume: &str) -> Vec<(String, String)> {
        self.annotations_from(volume, &self.sealed_url())
    }

    /// Like [`Self::annotations`], with exec allowed into the containers that can reach
    /// the model (`io.veil.model.exec: allow`), for tests that look inside the serving
    /// container.
    pub fn annotations_allowing_exec(&self, volume: &str) -> Vec<(String, String)> {
        crate::owner::with_annotation(&self.annotations(volume), crate::EXEC_ANNOTATION, "allow")
    }

    /// Like [`Self::annotations`], with the sealed model read from the node's file
    /// system (`file://`, shared read-only into the VM) instead of the store.
    pub fn file_annotations(&self, volume: &str) -> Vec<(String, String)> {
        let source = format!("file://{}", self.sealed_path().display());
        self.annotations_from(volume, &source)
    }

    fn annotations_from(&self, volume: &str, source: &str) -> Vec<(String, String)> {
        let (path, unpack) = match self.packaging {
            Packaging::File => ("model.safetensors", "none"),
            Packaging::TarGz => ("", "tar.gz"),
        };
        let ca = self
            .pki
            .as_ref()
            .map(|p| p.ca_pem.clone())
            .unwrap_or_default();
        [
            ("source", source.to_string()),
            ("kbs", self.kbs.url.clone()),
            ("key", KEY_RESOURCE.to_string()),
            ("volume", volume.to_string()),
            ("sha256", self.plaintext_sha256.clone()),
            ("path", path.to_string()),
            ("unpack", unpack.to_string()),
            ("aad", ASSOCIATED_DATA.to_string()),
            ("ca", ca),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (format!("io.veil.model.{k}"), v))
        .collect()
    }
}

fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut bytes = [0u8; N];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .context("read /dev/urandom")?;
    Ok(bytes)
}

/// Writes [`ARCHIVE_EXTRAS`] (with the canary) below `dir`; returns their paths and digests.
fn write_archive_extras(dir: &Path, canary: &str) -> Result<Vec<(String, String)>> {
    let mut written = Vec::new();
    for (name, text) in ARCHIVE_EXTRAS {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, format!("{text}{canary}\n"))
            .with_context(|| format!("write {}", path.display()))?;
        written.push((name.to_string(), sha256_hex_of(&path)?));
    }
    Ok(written)
}

/// `tar -czf archive model.safetensors config` in `dir`, with system tar and gzip.
fn pack_tar_gz(dir: &Path, archive: &Path) -> Result<()> {
    let status = Command::new("tar")
        .arg("-C")
        .arg(dir)
        .arg("-czf")
        .arg(archive)
        .args(["model.safetensors", "config"])
        .status()
        .context("run tar (apt-get install tar gzip)")?;
    if !status.success() {
        bail!("tar -czf {} failed: {status}", archive.display());
    }
    Ok(())
}

/// 48 bytes from the middle of `path`: long enough to occur nowhere by chance.
fn sample_of(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    if bytes.len() < 96 {
        bail!("{} is too short to sample", path.display());
    }
    let middle = bytes.len() / 2;
    Ok(bytes[middle..middle + 48].to_vec())
}

fn sha256_hex_of(path: &Path) -> Result<String> {
    use sha2::Digest;
    let mut file = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut file, &mut hasher).with_context(|| format!("read {}", path.display()))?;
    Ok(hex::encode(hasher.finalize()))
}

fn seal_file(plaintext: &Path, keyset: &Keyset, out: &Path) -> Result<()> {
    let source =
        std::fs::File::open(plaintext).with_context(|| format!("open {}", plaintext.display()))?;
    let sink = std::io::BufWriter::new(
        std::fs::File::create(out).with_context(|| format!("create {}", out.display()))?,
    );
    veil_seal::encrypt(source, keyset, ASSOCIATED_DATA.as_bytes(), sink)
        .context("seal the model")?;
    Ok(())
}

/// Files under `roots` (recursively, regular files only, not below `skip`) that contain
/// any of `needles`; each hit names the file and which needle.
pub fn files_containing(roots: &[&Path], skip: &[&Path], needles: &[Vec<u8>]) -> Vec<String> {
    let finders: Vec<memchr::memmem::Finder<'_>> = needles
        .iter()
        .map(|n| memchr::memmem::Finder::new(n.as_slice()))
        .collect();
    let mut hits = Vec::new();
    let mut stack: Vec<PathBuf> = roots.iter().map(|r| r.to_path_buf()).collect();
    let mut visited = 0usize;
    while let Some(path) = stack.pop() {
        visited += 1;
        // Bounded: a runaway tree must not make the test hang.
        if visited > 2_000_000 || skip.iter().any(|s| path.starts_with(s)) {
            continue;
        }
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&path) {
                stack.extend(entries.flatten().map(|e| e.path()));
            }
        } else if meta.is_file() {
            for index in needles_in_file(&path, &finders) {
                hits.push(format!("{} holds secret #{index}", path.display()));
            }
        }
    }
    hits
}

/// Which needles occur in the file at `path`, read in chunks that overlap by the longest
/// needle so that none is missed at a chunk boundary.
fn needles_in_file(path: &Path, finders: &[memchr::memmem::Finder<'_>]) -> Vec<usize> {
    const CHUNK: usize = 8 << 20;
    let Ok(mut file) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let overlap = finders
        .iter()
        .map(|f| f.needle().len())
        .max()
        .unwrap_or(1)
        .saturating_sub(1);
    let mut found = vec![false; finders.len()];
    let mut buffer = Vec::with_capacity(CHUNK + overlap);
    loop {
        let kept = buffer.len();
        buffer.resize(kept + CHUNK, 0);
        let read = match std::io::Read::read(&mut file, &mut buffer[kept..]) {
            Ok(n) => n,
            Err(_) => break,
        };
        buffer.truncate(kept + read);
        for (index, finder) in finders.iter().enumerate() {
            found[index] |= finder.find(&buffer).is_some();
        }
        if read == 0 {
            break;
        }
        let tail = buffer.len().saturating_sub(overlap);
        buffer.drain(..tail);
    }
    found
        .iter()
        .enumerate()
        .filter_map(|(index, hit)| hit.then_some(index))
        .collect()
}

/// `annotations` with `key` set to `value` (replacing any value it had): one pod's
/// declaration changed in one place, as the refusal tests need.
pub fn with_annotation(
    annotations: &[(String, String)],
    key: &str,
    value: &str,
) -> Vec<(String, String)> {
    let mut changed: Vec<(String, String)> = annotations
        .iter()
        .filter(|(k, _)| k != key)
        .cloned()
        .collect();
    changed.push((key.to_string(), value.to_string()));
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scan_finds_a_needle_and_honours_skips() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("a/b")).expect("mkdir");
        std::fs::create_dir_all(dir.path().join("skip")).expect("mkdir");
        std::fs::write(dir.path().join("a/b/f"), b"xx needle yy").expect("write");
        std::fs::write(dir.path().join("skip/f"), b"needle").expect("write");
        let hits = files_containing(
            &[dir.path()],
            &[&dir.path().join("skip")],
            &[b"needle".to_vec(), b"absent".to_vec()],
        );
        assert_eq!(hits.len(), 1, "{hits:?}");
        assert!(hits[0].contains("a/b/f") && hits[0].contains("#0"));
    }

    #[test]
    fn a_needle_across_a_chunk_boundary_is_found() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut data = vec![b'x'; (8 << 20) - 3];
        data.extend_from_slice(b"needle");
        data.extend_from_slice(&[b'y'; 100]);
        std::fs::write(dir.path().join("big"), &data).expect("write");
        let hits = files_containing(&[dir.path()], &[], &[b"needle".to_vec()]);
        assert_eq!(hits.len(), 1, "{hits:?}");
    }
}
