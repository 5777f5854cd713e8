# veil: two commands do everything on a fresh Debian 12 machine.
#   make demo   a container in a veil VM through a private containerd
#   make test   every test (unit, interop, end to end)

CARGO        ?= cargo
TARGET_DIR   ?= $(CURDIR)/target
BUILD_DIR    ?= $(CURDIR)/build
IMAGE_DIR    := $(BUILD_DIR)/image
# Downloaded packages and the built minimal kernel, shared by `make image` and the tests.
IMAGE_CACHE  := $(BUILD_DIR)/cache
# minimal (veil's all-built-in kernel, built once and cached) or debian (the stock kernel).
GUEST_KERNEL ?= minimal
AGENT_TARGET := x86_64-unknown-linux-gnu
AGENT_DIR    := $(TARGET_DIR)/agent-static
AGENT_BIN    := $(AGENT_DIR)/$(AGENT_TARGET)/release/veil-agent

export CARGO_TARGET_DIR := $(TARGET_DIR)
export VEIL_GUEST_IMAGE_DIR := $(IMAGE_DIR)
export VEIL_GUEST_IMAGE_CACHE := $(IMAGE_CACHE)

.PHONY: all setup build agent image test demo bench lint clean

all: build image

setup:
	./scripts/setup.sh

build:
	$(CARGO) build --workspace --all-targets

# The agent is the guest's init: one static binary. Built apart so its RUSTFLAGS do not
# invalidate the host build. The demo serving container's server is built the same way
# (its image has no libc).
agent:
	RUSTFLAGS="-C target-feature=+crt-static" CARGO_PROFILE_RELEASE_STRIP=true \
	CARGO_PROFILE_RELEASE_DEBUG=false CARGO_TARGET_DIR=$(AGENT_DIR) \
	$(CARGO) build --release -p veil-agent -p veil-model-server --target $(AGENT_TARGET)

# The first build compiles the minimal kernel (about 6 minutes on 2 cores); later builds
# reuse it from $(IMAGE_CACHE) until its inputs change.
image: agent
	$(CARGO) run --quiet -p veil-guest-image -- build --agent $(AGENT_BIN) --out $(IMAGE_DIR) \
		--kernel $(GUEST_KERNEL)

test: setup build image
	$(CARGO) test --workspace --no-fail-fast -- --test-threads=2

demo: setup image
	$(CARGO) run --quiet -p veil-integration --bin veil-demo

# Cold start (veil vs runc) and sealed-model decrypt throughput (veil vs openssl, Tink, gpg);
# results in benches/results/.
bench: setup image
	$(CARGO) build --release --workspace --bins
	$(CARGO) run --quiet --release -p veil-benches --bin veil-bench-cold-start -- 10
	$(CARGO) run --quiet --release -p veil-benches --bin veil-bench-cold-start -- --only soak --name soak
	VEIL=$(TARGET_DIR)/release/veil benches/seal/throughput.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

clean:
	rm -rf $(BUILD_DIR)
