//! Guest side of the key broker protocol: evidence, attestation and secret retrieval.
//!
//! The in-guest agent calls [`fetch_resource`] (blocking):
//!
//! ```no_run
//! use veil_kbs_client::{fetch_resource, Attester, KbsClientConfig};
//! let attester = Attester::Snp { vmpl: 0, expected_host_data: Some([0; 32]) };
//! let config = KbsClientConfig::new("http://10.0.2.2:8080", attester);
//! let key = fetch_resource(&config, "models/key/llama")?; // Zeroizing<Vec<u8>>
//! # Ok::<(), veil_kbs_client::ClientError>(())
//! ```
//!
//! It generates an ephemeral P-256 key, runs the Trustee KBS protocol 0.4.0 (`/auth`,
//! `/attest`, `/resource`) with Trustee-shaped evidence, binds the evidence to SHA-384 of the
//! canonical runtime data (`{additional-evidence, nonce, tee-pubkey}`), and decrypts the
//! `ECDH-ES+A256KW`/`A256GCM` JWE. It works against `veil-kbs` and against a Trustee KBS. The secret is returned in a `Zeroizing`
//! buffer and never written to disk. Transport is plain HTTP unless the `tls` feature is on.
//!
//! The wire types in [`wire`] and [`evidence`] are shared with the broker (`veil-keybroker`).

#![forbid(unsafe_code)]

pub mod client;
pub mod evidence;
pub mod jwe;
pub mod roots;
pub mod wire;

pub use client::{fetch_resource, ClientError, Connection, KbsClientConfig, ResourcePath};
pub use evidence::{Attester, SampleClaims};
pub use roots::{is_tls_failure, root_certs_from_pem, CaPemError};
pub use wire::{Tee, TeePubKey};
pub use zeroize::Zeroizing;
