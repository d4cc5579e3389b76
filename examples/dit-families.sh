#!/usr/bin/env bash
# Issue 28, Shows 3: `generate` on tiny-pixart, tiny-sd3 and tiny-flux with block caching, PTQ W8A8, real int8
# kernels, an EfficientDM checkpoint and (where the family supports one) an LCD student — each checkpoint trained
# here by the project's own finetune commands (a few iterations: this checks the path, not the quality).
# Prints one line per run: model, method, family, latency, kernels; a refusal prints its one line and exit code.
# CPU, about 8 minutes.   bash examples/dit-families.sh [WORKDIR]
set -u
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
W=${1:-runs/dit-families}
mkdir -p "$W"
fail=0

summary() {  # the generate --json line → one readable line
  python -c 'import json, sys
r = json.loads(sys.stdin.read().strip().splitlines()[-1])
print("  ok  {:5s} {:.2f} s  {}".format(r["family"], r["latency_s"], r.get("kernels", "")))'
}

gen() {  # MODEL LABEL VARIANT_JSON
  printf '%-11s %-22s' "$1" "$2"
  if out=$(python -m backend generate --variant "$3" --prompt "a red circle above a blue square" --seed 0 \
      --out "$W/$1-$2.png" --json 2>"$W/$1-$2.err"); then
    echo "$out" | summary
  else
    echo "  FAILED: $(tail -n 1 "$W/$1-$2.err")"; fail=1
  fi
}

for m in tiny-pixart tiny-sd3 tiny-flux; do
  gen "$m" block-cache-n3-k1-m1 "{\"model\":\"$m\",\"deepcache\":{\"interval\":3,\"first_blocks\":1,\"last_blocks\":1}}"
  gen "$m" ptq-w8a8 "{\"model\":\"$m\",\"quant\":{\"weight_bits\":8,\"act_bits\":8}}"
  gen "$m" real-int8-w8a8 "{\"model\":\"$m\",\"quant\":{\"weight_bits\":8,\"act_bits\":8,\"kernels\":\"real\"}}"
  if python -m backend finetune efficientdm --variant "{\"model\":\"$m\"}" --w-bits 4 --a-bits 4 --max-iters 4 \
      --minutes 1 --watch-every 0 --out "$W/$m-efficientdm" --restart --json > "$W/$m-efficientdm.log" 2>&1; then
    gen "$m" efficientdm-w4a4 "{\"model\":\"$m\",\"quant\":{\"checkpoint\":\"$W/$m-efficientdm\"}}"
  else
    echo "$m efficientdm finetune FAILED: $(tail -n 1 "$W/$m-efficientdm.log")"; fail=1
  fi
  python -m backend finetune lcd --variant "{\"model\":\"$m\"}" --max-steps 4 --minutes 1 --num-ddim-timesteps 10 \
      --out "$W/$m-lcd" --json > "$W/$m-lcd.log" 2>&1
  rc=$?
  if [ "$rc" = 0 ]; then
    gen "$m" lcd-student-4-steps \
      "{\"model\":\"$m\",\"scheduler\":\"lcm\",\"steps\":4,\"consistency\":{\"checkpoint\":\"$W/$m-lcd\"}}"
  else
    printf '%-11s %-22s  refused (exit %s): %s\n' "$m" lcd-student "$rc" "$(tail -n 1 "$W/$m-lcd.log")"
    [ "$m" = tiny-flux ] && [ "$rc" = 2 ] || fail=1  # Flux is refused by design (one line, exit 2)
  fi
done
[ "$fail" = 0 ] && echo "ALL OK" || { echo "SOME FAILED (logs in $W)"; exit 1; }
