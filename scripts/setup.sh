#!/usr/bin/env bash
# Installs everything veil's build, tests and demo need on a fresh Debian 12 machine.
# Idempotent: installed packages are skipped quickly.
set -euo pipefail

APT_PACKAGES=(
  containerd runc            # the container runtime veil plugs into (and runc for parity tests)
  qemu-system-x86            # the hypervisor
  busybox-static             # test and demo container image contents
  cpio xz-utils zstd kmod    # guest image build (initramfs, kernel and module handling)
  make gcc libc6-dev flex bison bc libelf-dev libssl-dev  # the minimal guest kernel build
  util-linux                 # script(1) for terminal tests, mount/umount, unshare/nsenter
  systemd dbus               # a real systemd (in namespaces) for the systemd cgroup driver test
  iproute2 socat             # test helpers
  openssl gnupg time         # seal throughput comparisons (GNU time for CPU seconds)
  ovmf                       # SNP launch-digest tests (veil measure vs sev-snp-measure)
  protobuf-compiler          # protoc for the CRI API bindings (k8s-cri) the CRI tests use
  containernetworking-plugins  # CNI bridge + host-local for the pod-network tests
  nftables                   # nft: the shim's kubectl port-forward redirect in the pod netns
  erofs-utils cryptsetup-bin # approved readers' rootfs images (mkfs.erofs, veritysetup)
)
# Google's Tink (sealed-format interop) and sev-snp-measure (independent SNP launch digest).
PIP_PACKAGES=(tink sev-snp-measure)

missing=()
for package in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

for package in "${PIP_PACKAGES[@]}"; do
  python3 -m pip show -q "$package" >/dev/null 2>&1 || { echo "setup: pip install $package"; python3 -m pip install -q "$package"; }
done
echo "setup: done"
