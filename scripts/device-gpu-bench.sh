#!/usr/bin/env bash
# Prepares the one device call that measures the WebGPU engine on the lent GPU: bundles
# src/bench/gpu.ts with Node, Dawn and the Vulkan loaders into .devpack/ and prints the carry and
# command for the device tool's run (results come back in $OUT/gpu-bench.json).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
../shared/tools/device-pack.sh --bundle src/bench/gpu.ts
echo
echo 'device run: carry [".devpack"], timeout_s 540, command:'
echo '  source .devpack/setup.sh && cd /tmp/app && timeout 500 node gpu.mjs webgpu 256 32 5'
