//! Encryption: a `Write` adapter that seals plaintext into Tink's streaming format.

use std::io::{self, ErrorKind, Read, Write};

use crate::cipher::{Header, SegmentCipher};
use crate::error::EncryptError;
use crate::keyset::{Keyset, StreamingKey};

/// Encrypts everything written to it into `inner`, segment by segment, with a keyset's primary
/// key. Call [`EncryptingWriter::finish`] at the end: it seals the last segment, which carries
/// the flag that makes truncation detectable. Dropping the writer without `finish` leaves an
/// incomplete ciphertext that will not decrypt.
pub struct EncryptingWriter<W: Write> {
    inner: W,
    cipher: SegmentCipher,
    buf: Vec<u8>,
    index: u32,
    first_plaintext_len: usize,
    plaintext_len: usize,
    plaintext_bytes: u64,
}

impl<W: Write> std::fmt::Debug for EncryptingWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncryptingWriter")
            .field("segment", &self.index)
            .finish_non_exhaustive()
    }
}

impl<W: Write> EncryptingWriter<W> {
    /// Starts a stream with the keyset's primary key and writes its header to `inner`.
    pub fn new(inner: W, keyset: &Keyset, associated_data: &[u8]) -> Result<Self, EncryptError> {
        let key = keyset.primary().ok_or(EncryptError::NoPrimaryKey {
            primary_key_id: keyset.primary_key_id(),
        })?;
        EncryptingWriter::with_key(inner, key, associated_data)
    }

    /// Starts a stream with a given key and writes its header to `inner`.
    pub fn with_key(
        mut inner: W,
        key: &StreamingKey,
        associated_data: &[u8],
    ) -> Result<Self, EncryptError> {
        let params = key.params();
        let header = Header::random(params).map_err(|_| EncryptError::Random)?;
        inner
            .write_all(&header.to_bytes())
            .map_err(EncryptError::Write)?;
        Ok(EncryptingWriter {
            inner,
            cipher: SegmentCipher::derive(key, &header, associated_data),
            buf: Vec::with_capacity(params.segment_size()),
            index: 0,
            first_plaintext_len: params.first_plaintext_len(),
            plaintext_len: params.plaintext_len(),
            plaintext_bytes: 0,
        })
    }

    fn segment_capacity(&self) -> usize {
        if self.index == 0 {
            self.first_plaintext_len
        } else {
            self.plaintext_len
        }
    }

    fn emit_segment(&mut self, last: bool) -> io::Result<()> {
        self.cipher.seal(self.index, last, &mut self.buf);
        self.inner.write_all(&self.buf)?;
        self.buf.clear();
        self.index = self
            .index
            .checked_add(1)
            .ok_or_else(|| io::Error::other(EncryptError::TooManySegments))?;
        Ok(())
    }

    /// Seals the last segment and returns the inner writer and the plaintext length.
    pub fn finish(mut self) -> Result<(W, u64), EncryptError> {
        self.emit_segment(true).map_err(EncryptError::Write)?;
        self.inner.flush().map_err(EncryptError::Write)?;
        Ok((self.inner, self.plaintext_bytes))
    }
}

impl<W: Write> Write for EncryptingWriter<W> {
    fn write(&mut self, mut data: &[u8]) -> io::Result<usize> {
        let total = data.len();
        while !data.is_empty() {
            // A full segment is sealed only once more data arrives: until then it may be the last.
            if self.buf.len() == self.segment_capacity() {
                self.emit_segment(false)?;
            }
            let take = (self.segment_capacity() - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
        }
        self.plaintext_bytes += total as u64;
        Ok(total)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Outcome of [`encrypt`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EncryptReport {
    /// Plaintext bytes read.
    pub plaintext_bytes: u64,
    /// Id of the key that encrypted.
    pub key_id: u32,
}

/// Encrypts all of `source` into `out` with the keyset's primary key.
pub fn encrypt<R: Read, W: Write>(
    mut source: R,
    keyset: &Keyset,
    associated_data: &[u8],
    out: W,
) -> Result<EncryptReport, EncryptError> {
    let key_id = keyset.primary_key_id();
    let mut writer = EncryptingWriter::new(out, keyset, associated_data)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match source.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(EncryptError::Read(e)),
        };
        writer.write_all(&buf[..n]).map_err(EncryptError::Write)?;
    }
    let (_, plaintext_bytes) = writer.finish()?;
    Ok(EncryptReport {
        plaintext_bytes,
        key_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::KeyTemplate;

    #[test]
    fn ciphertext_length_matches_the_layout_for_any_write_pattern() {
        let keyset = Keyset::generate(KeyTemplate::Aes128GcmHkdf4Kb).unwrap();
        let params = *keyset.primary().unwrap().params();
        for len in [0usize, 1, 4055, 4056, 4057, 4056 + 4080, 20_000] {
            let data = vec![3u8; len];
            let mut one = Vec::new();
            encrypt(&data[..], &keyset, b"", &mut one).unwrap();
            assert_eq!(
                one.len() as u64,
                params.ciphertext_len(len as u64).unwrap(),
                "{len}"
            );
            // Byte-by-byte writes give the same layout.
            let mut writer = EncryptingWriter::new(Vec::new(), &keyset, b"").unwrap();
            for byte in &data {
                writer.write_all(std::slice::from_ref(byte)).unwrap();
            }
            let (many, written) = writer.finish().unwrap();
            assert_eq!((many.len(), written), (one.len(), len as u64));
            let mut back = Vec::new();
            crate::decrypt_sequential(&many[..], &keyset, b"", &mut back).unwrap();
            assert_eq!(back, data);
        }
    }

    #[test]
    fn a_keyset_without_enabled_primary_cannot_encrypt() {
        let mut keyset = Keyset::generate(KeyTemplate::Aes128GcmHkdf4Kb).unwrap();
        let other = keyset.add_generated(KeyTemplate::Aes128GcmHkdf4Kb).unwrap();
        keyset
            .set_status(keyset.primary_key_id(), crate::KeyStatus::Disabled)
            .unwrap();
        assert!(matches!(
            EncryptingWriter::new(Vec::new(), &keyset, b""),
            Err(EncryptError::NoPrimaryKey { .. })
        ));
        keyset.set_primary(other).unwrap();
        assert!(EncryptingWriter::new(Vec::new(), &keyset, b"").is_ok());
    }
}
