#!/usr/bin/env bash
# One GPU lease (H100/H200 of the device tool), one call: shapes-dit (two presets) and RG-LCD students trained side by
# side, CUDA checks of the shipped methods beside them, everything packed into $OUT/res.tar.partNN + $OUT/summary.txt.
#
#   carry .whl (diffusers 0.42.1, transformers 5.24.0, peft 0.21.2 wheels for cp312; see the device README) and run
#   `bash examples/gpu-session.sh` with timeout_s ≈ 560.  DIT_MIN / LCD_MIN: training minutes (default 4.5 / 5).
#
# Lessons of the first lease (session 9, 2026-12-04), both fixed here: the machine's `python3` is a venv interpreter,
# so a *symlink* named python loses the venv (numpy not found): use a wrapper script; and never wait with `pgrep`
# (killed children stay as zombies there and match forever): wait on the PIDs, each job bounded by `timeout`.
set -u
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
DIT_MIN=${DIT_MIN:-4.5}; LCD_MIN=${LCD_MIN:-5}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
mkdir -p /tmp/bin /tmp/res/lcd
printf '%s\n' '#!/bin/sh' 'exec python3 "$@"' > /tmp/bin/python && chmod +x /tmp/bin/python && export PATH=/tmp/bin:$PATH
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site
python3 -c "import transformers" 2>/dev/null || { echo "carried transformers does not import; using the machine's"; rm -rf /tmp/site/transformers*; }
python -c "import numpy, torch, diffusers, transformers, peft; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, torch.cuda.get_device_name())" 2>&1 | tee /tmp/res/versions.txt
LIMIT=$(awk "BEGIN {print int($DIT_MIN * 60 + 150)}")
PIDS=()
for c in a b; do  # 1. shapes-dit, two presets
  OMP_NUM_THREADS=4 timeout "$LIMIT" python -m backend.world.train_dit --config $c --device cuda --minutes "$DIT_MIN" \
    --workers 7 --work /tmp/dit-$c > /tmp/res/train-$c.log 2>&1 & PIDS+=($!)
done
# 2. RG-LCD students (examples/lcd-gpu-students.sh bounds each run with timeout itself)
(OUT=/tmp/res/lcd RUNS="${RUNS:-lcm rg rg-proxy rg-lora rg-n50}" bash examples/lcd-gpu-students.sh "$LCD_MIN" \
  > /tmp/res/lcd.log 2>&1) & PIDS+=($!)
# 3. CUDA paths of the shipped methods (paired quality is unaffected by the trainings; their timings share the GPU)
(OMP_NUM_THREADS=1 timeout "$LIMIT" bash examples/gpu-cuda-checks.sh > /tmp/res/cuda.log 2>&1) & PIDS+=($!)
wait "${PIDS[@]}"; echo "trainings done at $(el) s"
timeout 60 python -m backend.world.train_dit --ship /tmp/res/ship --runs /tmp/dit-a /tmp/dit-b > /tmp/res/ship.log 2>&1
{ echo "elapsed $(el) s"; cat /tmp/res/versions.txt
  for f in /tmp/res/train-*.log /tmp/res/ship.log /tmp/res/lcd.log; do
    echo "== $f"; tr '\r' '\n' < "$f" | grep -v '^\s*$' | tail -n 12; done
  echo "== cuda.log"; cat /tmp/res/cuda.log; } > "$OUT/summary.txt" 2>&1
tar cf - -C /tmp res | split -b 15m -d - "$OUT/res.tar.part"
ls -l "$OUT"; tail -c 4000 "$OUT/summary.txt"
