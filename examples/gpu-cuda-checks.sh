#!/usr/bin/env bash
# CUDA paths of the shipped methods on the embedded model, paired against the baseline on `hard` (examples/gpu-session.sh).
set -u
SH='"model":"shapes","device":"cuda"'
run() { echo "### $*"; "$@" 2>&1 | grep -v 'step/s\]' | tail -n 40; echo "### rc=${PIPESTATUS[0]}"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
run python -m backend evaluate --variant "{$SH,\"deepcache\":{\"interval\":3}}" --baseline "{$SH}" --set hard --n 100 --repeats 1 --json
run python -m backend evaluate --variant "{$SH,\"quant\":{\"checkpoint\":\"assets/efficientdm-w4a4\"}}" --baseline "{$SH}" --set hard --n 100 --repeats 1 --json
run python -m backend evaluate --variant "{$SH,\"scheduler\":\"lcm\",\"steps\":4,\"consistency\":{\"checkpoint\":\"assets/rg-lcm-lora\"}}" --baseline "{$SH}" --set hard --n 100 --repeats 1 --json
# real int8 kernels are CPU kernels: on CUDA it runs simulated fake quantization and says so (exit 0)
run python -m backend generate --variant "{$SH,\"quant\":{\"weight_bits\":8,\"act_bits\":8,\"kernels\":\"real\"}}" --prompt "a large red circle" --out /tmp/x.png
