# Sourced by the GPU scripts on the device machine: the carried wheels (.whl) on PYTHONPATH, and `python` as a
# wrapper of the machine's python3 (a venv interpreter: a symlink to it would lose the venv).
mkdir -p /tmp/bin
printf '%s\n' '#!/bin/sh' 'exec python3 "$@"' > /tmp/bin/python && chmod +x /tmp/bin/python && export PATH=/tmp/bin:$PATH
if [ ! -d /tmp/site ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
export PYTHONPATH=/tmp/site
python3 -c "import transformers" 2>/dev/null || { echo "carried transformers does not import; using the machine's"; rm -rf /tmp/site/transformers*; }
