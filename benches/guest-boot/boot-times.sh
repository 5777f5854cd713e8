#!/bin/bash
# Boot-time of guest images under QEMU TCG: QEMU start -> the smoke /init's first console line,
# and -> QEMU exit (the smoke init loads modules, mounts 9p, finds the virtio-serial port and
# powers off). Prints one line per run; summarize with the median.
#
# usage: benches/guest-boot/boot-times.sh MACHINE KERNEL INITRAMFS [RUNS]
#   MACHINE: q35 (virtio-pci) or microvm (virtio-mmio via ACPI; minimal kernel only)
#   KERNEL/INITRAMFS: outputs of `veil-guest-image build` whose --agent is the smoke init
#   (guest-image/tests/smoke-init/main.rs built with rustc -C target-feature=+crt-static).
set -euo pipefail
machine=$1 kernel=$2 initramfs=$3 runs=${4:-5}
tsc_khz=$(awk -F: '/^cpu MHz/ {printf "%d", $2 * 1000; exit}' /proc/cpuinfo)
case $machine in
  q35) machine_args=(-M q35) transport=pci extra="" ;;
  microvm) machine_args=(-M microvm,acpi=on) transport=device extra=" reboot=t tsc_early_khz=$tsc_khz" ;;
  *) echo "MACHINE must be q35 or microvm" >&2; exit 2 ;;
esac
for run in $(seq "$runs"); do
  dir=$(mktemp -d)
  mkdir "$dir/share"
  start=$(date +%s%N)
  timeout 120 qemu-system-x86_64 "${machine_args[@]}" -accel tcg -nographic -no-reboot -m 512 \
    -monitor none -serial "file:$dir/console.log" -kernel "$kernel" -initrd "$initramfs" \
    -append "console=ttyS0 panic=-1 quiet$extra" \
    -fsdev "local,id=share,path=$dir/share,security_model=none" \
    -device "virtio-9p-$transport,fsdev=share,mount_tag=veilshare" \
    -chardev "socket,id=agent,path=$dir/agent.sock,server=on,wait=off" \
    -device "virtio-serial-$transport" -device virtserialport,chardev=agent,name=veil.agent \
    -device "virtio-rng-$transport" </dev/null >/dev/null &
  qemu=$!
  to_init=""
  while kill -0 "$qemu" 2>/dev/null; do
    if [ -z "$to_init" ] && grep -q 'init started' "$dir/console.log" 2>/dev/null; then
      to_init=$(( ($(date +%s%N) - start) / 1000000 ))
    fi
    sleep 0.01
  done
  wait "$qemu" || true
  to_exit=$(( ($(date +%s%N) - start) / 1000000 ))
  result=$(grep -q '] PASS ' "$dir/console.log" && echo PASS || echo FAIL)
  echo "run=$run machine=$machine kernel=$(basename "$kernel") to_init_ms=$to_init to_exit_ms=$to_exit $result"
  rm -rf "$dir"
done
