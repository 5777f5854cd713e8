//! Cuts a ciphertext stream into segments and tells which one is final.
//!
//! A segment is final when the stream ends right after it. The reader keeps one segment of
//! lookahead so it can also tell the segment before the final one: if that segment fails to
//! open, checking whether it opens as a last segment distinguishes appended bytes from a
//! modified segment. Memory held here: one segment plus one byte.

use std::io::{self, ErrorKind, Read};

use crate::error::DecryptError;

/// One ciphertext segment as read, with its position.
#[derive(Debug)]
pub(crate) struct Chunk {
    pub(crate) index: u32,
    /// Ciphertext offset of the segment's first byte.
    pub(crate) offset: u64,
    pub(crate) data: Vec<u8>,
    /// The stream ends right after this segment.
    pub(crate) is_final: bool,
    /// The next segment is the final one.
    pub(crate) is_penultimate: bool,
}

/// Yields segments 1, 2, ... of a stream whose header and segment 0 were already consumed.
pub(crate) struct SegmentReader<R> {
    source: R,
    segment_size: usize,
    peeked: Option<u8>,
    held: Option<Chunk>,
    next_index: u32,
    offset: u64,
    exhausted: bool,
}

impl<R: Read> SegmentReader<R> {
    /// `offset` is where segment 1 starts in the ciphertext.
    pub(crate) fn new(source: R, segment_size: usize, offset: u64) -> Self {
        SegmentReader {
            source,
            segment_size,
            peeked: None,
            held: None,
            next_index: 1,
            offset,
            exhausted: false,
        }
    }

    /// The next segment, read into a buffer from `buffer`, or `None` at the end of the stream.
    pub(crate) fn next_chunk(
        &mut self,
        mut buffer: impl FnMut() -> Option<Vec<u8>>,
    ) -> Result<Option<Chunk>, DecryptError> {
        let mut current = match self.held.take() {
            Some(chunk) => chunk,
            None => match buffer() {
                Some(buf) => match self.read_chunk(buf)? {
                    Some(chunk) => chunk,
                    None => return Ok(None),
                },
                None => return Ok(None),
            },
        };
        if !current.is_final {
            if let Some(buf) = buffer() {
                // A non-final segment is always followed by at least one byte (the peeked one).
                self.held = self.read_chunk(buf)?;
                current.is_penultimate = self.held.as_ref().is_some_and(|c| c.is_final);
            }
        }
        Ok(Some(current))
    }

    fn read_chunk(&mut self, mut buf: Vec<u8>) -> Result<Option<Chunk>, DecryptError> {
        if self.exhausted {
            return Ok(None);
        }
        let offset = self.offset;
        // Pooled buffers come back at full length: resizing then zeroes nothing, which matters
        // because zeroing 1 MiB per segment cost as much as decrypting it.
        buf.resize(self.segment_size, 0);
        let mut filled = 0;
        if let Some(byte) = self.peeked.take() {
            buf[0] = byte;
            filled = 1;
        }
        let filled = self.fill(&mut buf, filled)?;
        buf.truncate(filled);
        if buf.is_empty() {
            self.exhausted = true;
            return Ok(None);
        }
        let is_final = buf.len() < self.segment_size || !self.peek()?;
        self.exhausted = is_final;
        let index = self.next_index;
        self.next_index = self
            .next_index
            .checked_add(1)
            .ok_or(DecryptError::TooManySegments)?;
        self.offset += buf.len() as u64;
        Ok(Some(Chunk {
            index,
            offset,
            data: buf,
            is_final,
            is_penultimate: false,
        }))
    }

    /// Reads from `filled` until `buf` is full or the source ends; returns the bytes held.
    fn fill(&mut self, buf: &mut [u8], mut filled: usize) -> Result<usize, DecryptError> {
        while filled < buf.len() {
            match self.source.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(source) => return Err(self.read_error(filled, source)),
            }
        }
        Ok(filled)
    }

    /// Reads one byte ahead; `false` at the end of the stream.
    fn peek(&mut self) -> Result<bool, DecryptError> {
        let mut byte = [0u8; 1];
        loop {
            match self.source.read(&mut byte) {
                Ok(0) => return Ok(false),
                Ok(_) => {
                    self.peeked = Some(byte[0]);
                    return Ok(true);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(source) => return Err(self.read_error(self.segment_size, source)),
            }
        }
    }

    fn read_error(&self, within: usize, source: io::Error) -> DecryptError {
        DecryptError::Read {
            offset: self.offset + within as u64,
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(len: usize, segment: usize) -> Vec<(u32, usize, bool, bool)> {
        let data = vec![7u8; len];
        let mut reader = SegmentReader::new(&data[..], segment, 0);
        let mut out = Vec::new();
        while let Some(c) = reader.next_chunk(|| Some(Vec::new())).unwrap() {
            out.push((c.index, c.data.len(), c.is_final, c.is_penultimate));
        }
        out
    }

    #[test]
    fn marks_final_and_penultimate_segments() {
        assert_eq!(chunks(0, 4), vec![]);
        assert_eq!(chunks(3, 4), vec![(1, 3, true, false)]);
        assert_eq!(chunks(4, 4), vec![(1, 4, true, false)]);
        assert_eq!(chunks(5, 4), vec![(1, 4, false, true), (2, 1, true, false)]);
        assert_eq!(
            chunks(12, 4),
            vec![
                (1, 4, false, false),
                (2, 4, false, true),
                (3, 4, true, false)
            ]
        );
    }
}
