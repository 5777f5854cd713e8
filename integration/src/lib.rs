//! End-to-end test harness: private containerd, images, VMs and guest helpers.
