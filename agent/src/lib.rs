//! veil-agent: the guest's PID 1; creates containers and runs model delivery inside the VM.
