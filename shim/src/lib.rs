//! containerd-shim-veil-v2: runs each pod in its own VM and drives it through veil-agent.
