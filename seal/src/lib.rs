//! Sealed models: Tink-compatible streaming AEAD, keysets and a parallel decrypting pipeline.
