//! Creates and runs OCI containers inside the veil guest.
