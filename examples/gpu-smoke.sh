#!/usr/bin/env bash
# One minute on the lent GPU before examples/gpu-session.sh: the carried wheels import, and each CUDA path the session
# trains through runs a few steps (shapes-dit's trainer with its export and judge; an RG-LCD student with the proxy
# reward, and a LoRA student). Prints SMOKE OK or the failing step's log. Carry .whl; timeout_s ≈ 150.
set -u
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
source examples/gpu-env.sh
python -c "import numpy, torch, diffusers, transformers, peft, scipy; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, torch.cuda.get_device_name())" || exit 1
V='{"model":"shapes","device":"cuda"}'
timeout 120 python -m backend.world.train_dit --config tiny --device cuda --minutes 0.1 --n-scenes 3000 --workers 2 \
  --eval-n 4 --work /tmp/smoke-dit > /tmp/smoke-dit.log 2>&1 & P1=$!
timeout 120 python -m backend finetune lcd --variant "$V" --out /tmp/smoke-rg --max-steps 3 --minutes 1 --batch-size 16 \
  --data shapes:hard --reward shapes --beta 0.1 --proxy --num-ddim-timesteps 20 --lr-decay --json > /tmp/smoke-rg.log 2>&1 & P2=$!
timeout 120 python -m backend finetune lcd --variant "$V" --out /tmp/smoke-lora --max-steps 3 --minutes 1 --batch-size 16 \
  --data shapes:hard --reward shapes --beta 0.1 --lora --json > /tmp/smoke-lora.log 2>&1 & P3=$!
ok=1
for p in "$P1:dit" "$P2:rg" "$P3:lora"; do
  wait "${p%%:*}" || { ok=0; echo "== ${p#*:} FAILED"; tr '\r' '\n' < "/tmp/smoke-${p#*:}.log" | tail -n 25; }
done
tr '\r' '\n' < /tmp/smoke-dit.log | grep -E 'data:|hard accuracy'; tail -c 300 /tmp/smoke-rg.log; echo
[ "$ok" = 1 ] && echo "SMOKE OK"
