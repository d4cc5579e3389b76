#!/usr/bin/env bash
# One GPU lease (H100/H200 of the device tool), one call: shapes-dit trained alone on the GPU by default; optionally
# RG-LCD students (RUNS) and CUDA checks (CHECKS=1) side by side; everything packed into $OUT/res.tar.partNN +
# $OUT/summary.txt.
#
#   carry .whl (diffusers 0.42.1, transformers 5.24.0, peft 0.21.2 wheels for cp312; see the device README) and run
#   `bash examples/gpu-session.sh` with timeout_s ≈ 560 (after `examples/gpu-smoke.sh` has passed on the same machine).
#   Knobs (environment): DIT_MIN / LCD_MIN training minutes (default 8 / 6), DIT_CONFIGS (presets, default "a"),
#   DIT_SCENES (default 200000), RUNS (students, default none; session 10 ran "lcm rg rg-proxy rg-lora rg-n50"),
#   LCD_BATCH (default 128), CHECKS (1 = examples/gpu-cuda-checks.sh beside the trainings; default 0), DEVICE (cuda;
#   cpu for a dry run here).
#
# Session 10's lease ran two presets, five students and the checks side by side: the GPU's time-sliced contexts gave
# shapes-dit ~0.25 s a step (1,462 steps in 6.5 min, hard accuracy 0.02). Hence the default: shapes-dit alone, and
# since session 11 distilled from shapes-sd (--teacher; the CPU run of preset c that way reached 0.78, the shipped
# model): install a GPU run only if its accuracy in ship.log beats 0.78.
#
# Lessons of the first lease (session 9, 2026-12-04), both fixed here: the machine's `python3` is a venv interpreter,
# so a *symlink* named python loses the venv (numpy not found): use a wrapper script; and never wait with `pgrep`
# (killed children stay as zombies there and match forever): wait on the PIDs, each job bounded by `timeout`.
set -u
: "${OUT:?set OUT to the output folder}"
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
DIT_MIN=${DIT_MIN:-8}; LCD_MIN=${LCD_MIN:-6}; DEVICE=${DEVICE:-cuda}; RES=${RES:-/tmp/res}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 DEVICE
mkdir -p "$RES/lcd"
if [ "$DEVICE" = cuda ]; then source examples/gpu-env.sh; fi
python -c "import numpy, torch, diffusers, transformers, peft; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')" 2>&1 | tee "$RES/versions.txt"
LIMIT=$(awk "BEGIN {print int($DIT_MIN * 60 + 120)}")
PIDS=(); WORKS=()
for c in ${DIT_CONFIGS:-a}; do  # 1. shapes-dit, one training per preset
  OMP_NUM_THREADS=2 timeout "$LIMIT" python -m backend.world.train_dit --config "$c" --device "$DEVICE" \
    --minutes "$DIT_MIN" --n-scenes "${DIT_SCENES:-200000}" --workers 6 --work "/tmp/dit-$c" --teacher assets/shapes-sd \
    > "$RES/train-$c.log" 2>&1 & PIDS+=($!); WORKS+=("/tmp/dit-$c")
done
# 2. RG-LCD students (examples/lcd-gpu-students.sh bounds each run with timeout itself)
if [ -n "${RUNS:-}" ]; then
  (OUT=$RES/lcd BATCH=${LCD_BATCH:-128} bash examples/lcd-gpu-students.sh "$LCD_MIN" > "$RES/lcd.log" 2>&1) & PIDS+=($!)
fi
# 3. CUDA paths of the shipped methods (paired quality is unaffected by the trainings; their timings share the GPU)
if [ "${CHECKS:-0}" = 1 ]; then
  (OMP_NUM_THREADS=1 timeout "$LIMIT" bash examples/gpu-cuda-checks.sh > "$RES/cuda.log" 2>&1) & PIDS+=($!)
fi
wait "${PIDS[@]}"; echo "trainings done at $(el) s"
timeout 60 python -m backend.world.train_dit --ship "$RES/ship" --runs "${WORKS[@]}" > "$RES/ship.log" 2>&1
{ echo "elapsed $(el) s"; cat "$RES/versions.txt"
  for f in "$RES"/train-*.log "$RES/ship.log" "$RES"/lcd.log; do
    [ -f "$f" ] || continue; echo "== $f"; tr '\r' '\n' < "$f" | grep -v '^\s*$' | tail -n 12; done
  echo "== cuda.log"; cat "$RES/cuda.log" 2>/dev/null; } > "$OUT/summary.txt" 2>&1
tar cf - -C "$(dirname "$RES")" "$(basename "$RES")" | split -b 15m -d - "$OUT/res.tar.part"
ls -l "$OUT"; tail -c 5000 "$OUT/summary.txt"
