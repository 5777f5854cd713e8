#!/usr/bin/env bash
# Runs benches/seal/throughput.sh on a lent machine that has no network and no Rust, then a
# thread-scaling table for the decrypt without digest from a tmpfs file into a tmpfs file.
#
# Carry (the `run` tool's `carry`, relative to the repository root) $CARRY, default
# target/seal-device/carry.tar.xz, holding bin/veil (a static release build), bin/time (GNU
# time) and wheels/*.whl (Tink for Python and its dependencies). Writes into $OUT:
# seal-throughput.md/.json, scaling.txt and seal.log.
# Usage: benches/seal/device-run.sh [SIZE_MIB]   (default 1024)
set -euo pipefail

size_mib=${1:-1024}
carry=${CARRY:-target/seal-device/carry.tar.xz}
out=${OUT:?set OUT to the folder that receives the results}
opt=$(mktemp -d /tmp/veil-seal-device.XXXXXX)
tar -xJf "$carry" -C "$opt"
mkdir -p "$opt/py"
for wheel in "$opt"/wheels/*.whl; do (cd "$opt/py" && python3 -m zipfile -e "$wheel" .); done
export PYTHONPATH=$opt/py PATH=$opt/bin:$PATH GNU_TIME=$opt/bin/time VEIL=$opt/bin/veil

OUT_MD=$out/seal-throughput.md benches/seal/throughput.sh "$size_mib" 2>"$out/seal.log"

# Thread scaling, best of 2 each: --no-sha256 into a new tmpfs file (the positional path).
w=$(mktemp -d /dev/shm/veil-seal-scale.XXXXXX)
trap 'rm -rf "$w" "$opt"' EXIT
head -c $((size_mib << 20)) /dev/urandom >"$w/plain"
veil seal keygen --template aes256-gcm-hkdf-1mb >"$w/k.json" 2>/dev/null
veil seal encrypt --keyset "$w/k.json" "$w/plain" "$w/sealed" 2>/dev/null
want=$(sha256sum "$w/plain" | cut -d' ' -f1)
{
    echo "threads wall_s user_s sys_s MiB/s (--no-sha256, tmpfs file into tmpfs file, best of 2)"
    for t in 1 2 3 4 6 8 12 16; do
        best=""
        for _ in 1 2; do
            rm -f "$w/out"
            line=$("$GNU_TIME" -f '%e %U %S' veil seal decrypt --keyset "$w/k.json" --threads "$t" \
                --no-sha256 "$w/sealed" "$w/out" 2>&1 >/dev/null | tail -1)
            if [[ -z $best ]] || python3 -c "import sys; sys.exit(0 if ${line%% *} < ${best%% *} else 1)"; then
                best=$line
            fi
        done
        echo "$t $best $(python3 -c "print(round($size_mib / max(${best%% *}, 0.01)))")"
    done
    [[ $(sha256sum "$w/out" | cut -d' ' -f1) == "$want" ]] && echo "output checked: sha256 matches"
} >"$out/scaling.txt" 2>&1
cat "$out/seal-throughput.md" "$out/scaling.txt"
tail -5 "$out/seal.log"
