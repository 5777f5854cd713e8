//! Guest side of the key broker protocol: evidence, attestation and secret retrieval.
