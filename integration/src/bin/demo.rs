//! `make demo`: a pod in a veil VM serving a sealed model, through a real, private
//! containerd.
//!
//! 1. Runs the same command with runc and with veil, showing that the veil one ran in its
//!    own VM (its own kernel, its own boot id).
//! 2. Plays the model owner: seals a demo model, serves the ciphertext from an HTTP model
//!    store and its key from a real `veil-kbs`.
//! 3. Runs the demo model server with the delivery annotations, approving the serving
//!    image's rootfs digest and command as the model's only reader: inside the VM the agent
//!    fetches, attests, gets the key, decrypts and verifies the model into guest RAM, and
//!    copies and verifies the server's rootfs; only then the server starts. Sends it an
//!    inference request.
//! 4. Scans what the host can read for the model's canary and the key: nothing.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use veil_integration::owner::ModelOwner;
use veil_integration::{
    Containerd, Runtime, MODEL_SERVER_ARGS, MODEL_SERVER_IMAGE, READERS_ANNOTATION,
};

fn show_vm_isolation(containerd: &Containerd) -> Result<()> {
    let host_kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let host_boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    println!(
        "host : kernel {}, boot {}",
        host_kernel.trim(),
        host_boot.trim()
    );
    let command = [
        "sh",
        "-c",
        "echo \"kernel $(uname -r), boot $(cat /proc/sys/kernel/random/boot_id)\"",
    ];
    let started = Instant::now();
    let runc = containerd.run(Runtime::Runc, "demo-runc", &command, None)?;
    println!(
        "runc : {} ({:.2} s)",
        runc.stdout.trim(),
        started.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    let veil = containerd.run(Runtime::Veil, "demo-veil", &command, None)?;
    println!(
        "veil : {} ({:.2} s)",
        veil.stdout.trim(),
        started.elapsed().as_secs_f64()
    );
    if veil.code != 0 {
        bail!("veil run failed ({}): {}", veil.code, veil.stderr);
    }
    if veil.stdout.contains(host_boot.trim()) {
        bail!("the veil container reported the host's boot id: it did not run in a VM");
    }
    println!("== the veil container ran in its own VM: its own kernel boot, not the host's");
    Ok(())
}

fn serve_sealed_model(containerd: &Containerd) -> Result<()> {
    println!("== model owner: sealing a demo model, starting the model store and veil-kbs");
    let owner = ModelOwner::start(1, 0)?;
    println!(
        "owner: model sha256 {}, sealed at {}, key at {}/{}",
        owner.model.sha256,
        owner.sealed_url(),
        owner.kbs.url,
        veil_integration::owner::KEY_RESOURCE
    );
    println!("       (INSECURE sample attester allowed by policy: this machine has no SEV-SNP)");
    containerd.import_model_server()?;
    // The owner approves the serving image and its command as the only reader of the model.
    let approved = containerd.image_rootfs_digest(MODEL_SERVER_IMAGE)?;
    let readers = serde_json::json!([{
        "rootfs": approved,
        "args": MODEL_SERVER_ARGS,
        "env": ["PATH=/bin", "HOSTNAME"],
        "cwd": "/",
    }]);
    let mut annotations = owner.annotations("model");
    annotations.push((READERS_ANNOTATION.to_string(), readers.to_string()));
    for (key, value) in &annotations {
        println!("pod  : {key}={value}");
    }
    let id = "demo-model";
    let started = Instant::now();
    let run = containerd.run_model_server(id, &annotations)?;
    if run.code != 0 {
        containerd.remove(id);
        bail!("the model server did not start: {}", run.stderr.trim());
    }
    let verified = containerd.console_log(id).lines().any(|line| {
        line.contains("rootfs verified as one the model owner approved")
            && line.contains("through dm-verity")
    });
    if !verified {
        containerd.remove(id);
        bail!("the server started without the agent verifying its rootfs image through dm-verity");
    }
    println!(
        "veil : model delivered into guest RAM; the server's rootfs image read through dm-verity, verified as the approved {approved}, and started ({:.2} s)",
        started.elapsed().as_secs_f64()
    );
    let answer = containerd.query_model_server(id, "5.1,3.5,1.4,0.2")?;
    println!(
        "query: from a client container in the pod's VM, predict [5.1, 3.5, 1.4, 0.2] -> {}",
        answer.stdout.trim()
    );
    let peek = containerd.exec(id, "peek", &["cat", "/model/model.safetensors"])?;
    let leaks = owner.secrets_on_host(containerd);
    containerd.remove(id);
    if answer.code != 0 {
        bail!("the inference request failed: {}", answer.stderr.trim());
    }
    if peek.code == 0 || !peek.stderr.contains("refused") {
        bail!(
            "the node could exec into the serving container: exit {}, {}",
            peek.code,
            peek.stderr.trim()
        );
    }
    println!("node : ctr task exec into the server -> refused by the agent (the owner's declaration does not allow exec)");
    if !leaks.is_empty() {
        bail!("the host can read the model or key: {leaks:?}");
    }
    println!("== host scan (containerd root and state, veil state, /tmp, /run, /var/log): no plaintext model, no key");
    Ok(())
}

fn main() -> Result<()> {
    println!("== starting a private containerd with the veil runtime");
    let containerd = Containerd::start()?;
    containerd.import_busybox()?;
    show_vm_isolation(&containerd)?;
    serve_sealed_model(&containerd).context("serving a sealed model")?;
    std::thread::sleep(Duration::from_millis(100));
    Ok(())
}
