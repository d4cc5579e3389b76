#!/usr/bin/env bash
# RG-LCD on the `hard` set (issue 29): eight shapes-sd students distilled side by side on one CUDA GPU.
#
#   OUT=DIR [RUNS='lcm rg ...'] bash examples/lcd-gpu-students.sh [MINUTES]   (repo root; MINUTES per student, default 7;
#   RUNS: a subset of the eight names below, default all)
#
# Every student: full U-Net (unless --lora), a 20-point DDIM grid, lr decayed to 0 over the budget, batch $BATCH (64),
# data = the `hard` mix of Shapes scenes (shapes:hard). What each tests:
#   lcm       plain LCM (no reward)                     } RG-LCM vs LCM: rg − lcm at equal settings
#   rg        RG-LCM, direct Shapes reward, β 0.1        }
#   rg-proxy  RG-LCM through the latent proxy reward    } proxy vs direct: rg-proxy − rg
#   rg-lora   LCM-LoRA (rank 16) instead of a full U-Net (the shipped student's kind)
#   rg-b03    β 0.3 instead of 0.1
#   rg-train  data = the teacher's training mix (shapes:train: 1–2 objects, no held-out pairs) instead of hard
#   rg-n50    the paper's 50-point DDIM grid (skipping interval k = 20) instead of 20 (k = 50)
#   rg-wfix   a fixed distillation guidance w = 4 (= the teacher's CFG 5, what the student samples with)
#             instead of w ~ U[2, 6]
# Students are written to $OUT/lcd-NAME (stdout summary lcd-NAME.json, log lcd-NAME.log), then packed without
# the VAE / text encoder / tokenizer (phase 2 reads only unet/ or the LoRA, plus the metadata) into
# $OUT/students.tar.partNN (15 MiB pieces): cat students.tar.part* | tar xf - -C .cache/lcd-gpu
set -u
: "${OUT:?set OUT to the output folder}"
M=${1:-7}
export OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1
V='{"model":"shapes","device":"'"${DEVICE:-cuda}"'"}'
COMMON=(--minutes "$M" --num-ddim-timesteps 20 --lr-decay --batch-size "${BATCH:-64}" --data shapes:hard --json)
RG=(--reward shapes --beta 0.1)
LIMIT=$(awk "BEGIN {print int($M * 60 + 150)}")  # seconds: a hung run is stopped, the others still get packed
train() {  # NAME ARGS...
  local name=$1; shift
  timeout "$LIMIT" python -m backend finetune lcd --variant "$V" --out "$OUT/lcd-$name" "${COMMON[@]}" "$@" \
    > "$OUT/lcd-$name.json" 2> "$OUT/lcd-$name.log"
}

# 1. The eight students, concurrently (a run that fails, fails in its first steps: its log says why).
declare -A ARGS=(
  [lcm]="" [rg]="${RG[*]}" [rg-proxy]="${RG[*]} --proxy" [rg-lora]="${RG[*]} --lora"
  [rg-b03]="--reward shapes --beta 0.3" [rg-train]="${RG[*]} --data shapes:train"
  [rg-n50]="${RG[*]} --num-ddim-timesteps 50" [rg-wfix]="${RG[*]} --w-min 4 --w-max 4"
)
for name in ${RUNS:-lcm rg rg-proxy rg-lora rg-b03 rg-train rg-n50 rg-wfix}; do
  # shellcheck disable=SC2086  # the flags are words
  train "$name" ${ARGS[$name]} &
done
(sleep 120; command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv) &
wait

# 2. Summaries (a failed run: the end of its log), then pack for the ≤ 8-file channel.
cd "$OUT" || exit 1
for f in lcd-*.json; do
  echo "== $f"; if grep -q '"status"' "$f"; then tr -d '\n ' < "$f"; else tr '\r' '\n' < "${f%.json}.log" | tail -n 8; fi; echo
done
tar cf - --exclude='*/vae' --exclude='*/text_encoder' --exclude='*/tokenizer' --exclude='*.partial' lcd-* \
  | split -b 15m -d - students.tar.part
rm -rf lcd-*
ls -l "$OUT"
