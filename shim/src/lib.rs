//! containerd-shim-veil-v2: the containerd runtime v2 shim that runs each pod in its
//! own VM (QEMU) and drives its containers through `veil-agent` inside the guest.
//!
//! * [`shim`]: the process lifecycle containerd drives (`start`, `delete`, serve).
//! * [`service`]: the Task API (Create, Start, Exec, Kill, Wait, Delete, ...).
//! * [`sandbox`]: one VM per pod, its state directory and shared directory.
//! * [`hypervisor`]: the VM backend trait and QEMU.
//! * [`agent`]: the ttrpc client of the guest agent.
//! * [`io`]: stdio relays between containerd's FIFOs and the agent.

pub mod agent;
pub mod error;
pub mod hypervisor;
pub mod io;
pub mod logging;
pub mod options;
pub mod sandbox;
pub mod service;
pub mod shim;
pub mod stages;
