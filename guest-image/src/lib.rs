//! Builds the guest kernel and a reproducible initramfs with veil-agent as init.
