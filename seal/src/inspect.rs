//! What can be told about a ciphertext without decrypting it.

use std::io::{self, ErrorKind, Read};

use crate::params::{StreamingParams, NONCE_PREFIX_LEN};

/// Why a ciphertext could not be inspected.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// Reading the ciphertext failed.
    #[error("reading the ciphertext failed: {0}")]
    Read(#[from] io::Error),
    /// The first byte is not a Tink streaming header length.
    #[error("not a Tink streaming ciphertext: header length byte is {0}, expected 24 or 40")]
    NotStreaming(u8),
    /// The ciphertext is shorter than its header.
    #[error("ciphertext of {0} bytes is shorter than its header")]
    Truncated(u64),
}

/// Header facts and size of a ciphertext.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamInfo {
    /// Header length (24 for 16-byte derived keys, 40 for 32-byte ones).
    pub header_len: usize,
    /// Derived AES key size implied by the header (the salt length).
    pub derived_key_size: usize,
    /// Total ciphertext length.
    pub ciphertext_bytes: u64,
}

/// Segment layout implied by a ciphertext length under given key parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamLayout {
    /// Number of segments.
    pub segments: u64,
    /// Plaintext length.
    pub plaintext_bytes: u64,
}

/// Reads the header and counts the bytes of a ciphertext; never decrypts.
pub fn inspect<R: Read>(mut source: R) -> Result<StreamInfo, InspectError> {
    let mut first = [0u8; 1];
    let got = loop {
        match source.read(&mut first) {
            Ok(n) => break n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    };
    if got == 0 {
        return Err(InspectError::Truncated(0));
    }
    let header_len = usize::from(first[0]);
    if header_len != 24 && header_len != 40 {
        return Err(InspectError::NotStreaming(first[0]));
    }
    let ciphertext_bytes = 1 + io::copy(&mut source, &mut io::sink())?;
    if ciphertext_bytes < header_len as u64 {
        return Err(InspectError::Truncated(ciphertext_bytes));
    }
    Ok(StreamInfo {
        header_len,
        derived_key_size: header_len - 1 - NONCE_PREFIX_LEN,
        ciphertext_bytes,
    })
}

impl StreamInfo {
    /// Segments and plaintext length if the stream was made with `params`; `None` when the
    /// length cannot come from such a key (wrong key type, or a truncated stream).
    pub fn layout(&self, params: &StreamingParams) -> Option<StreamLayout> {
        if params.header_len() != self.header_len {
            return None;
        }
        let tag = params.tag_len() as u64;
        let first = params.first_segment_len() as u64;
        let full = params.segment_size() as u64;
        let body = self.ciphertext_bytes - self.header_len as u64;
        if body <= first {
            return (body >= tag).then(|| StreamLayout {
                segments: 1,
                plaintext_bytes: body - tag,
            });
        }
        let rest = body - first;
        let more = rest.div_ceil(full);
        let last = rest - (more - 1) * full;
        if last < tag {
            return None;
        }
        let plaintext_bytes = (first - tag) + (more - 1) * (full - tag) + (last - tag);
        Some(StreamLayout {
            segments: 1 + more,
            plaintext_bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::KeyTemplate;

    #[test]
    fn layout_inverts_ciphertext_len() {
        for template in [
            KeyTemplate::Aes128GcmHkdf4Kb,
            KeyTemplate::Aes256CtrHmacSha2564Kb,
        ] {
            let p = template.params();
            for len in [0u64, 1, 4000, p.first_plaintext_len() as u64, 4097, 40_000] {
                let ct = p.ciphertext_len(len).unwrap();
                let info = StreamInfo {
                    header_len: p.header_len(),
                    derived_key_size: p.derived_key_size(),
                    ciphertext_bytes: ct,
                };
                assert_eq!(
                    info.layout(&p).unwrap().plaintext_bytes,
                    len,
                    "{template} {len}"
                );
            }
        }
    }
}
