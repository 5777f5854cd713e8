//! Block devices the agent makes in the guest: read-only loop devices over files the node
//! shares, and dm-verity devices over them, so that a file system image from the node can
//! be mounted with every block checked against a hash tree root the agent holds.
//!
//! Both speak the kernel's ioctls directly (`LOOP_CONFIGURE`, four device-mapper
//! commands). The `loopdev` and `devicemapper` crates generate their bindings with bindgen
//! at build time, which needs libclang (and libdevmapper's headers) on every build machine
//! for what is a handful of fixed, stable structures; Android's `apkdmverity` made the same
//! choice for the same reason.

pub mod device_mapper;
pub mod loop_device;
