//! The attestation-gated key broker (Trustee KBS protocol) and its policy engine.
