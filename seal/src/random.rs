//! The system random generator, for salts, nonce prefixes, keys and key ids.

use ring::rand::{SecureRandom, SystemRandom};

/// Fills `out` from the operating system's CSPRNG.
pub(crate) fn fill(out: &mut [u8]) -> Result<(), ring::error::Unspecified> {
    SystemRandom::new().fill(out)
}
