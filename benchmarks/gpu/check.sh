#!/usr/bin/env bash
# The GPU check (issue 11): CUDA tests, the main job on CUDA, trials per hour for K = 1, 8, 64.
# Run from the repository root on a machine with one CUDA GPU, in an environment where
# hwsparse and a CUDA build of torch are installed; about 4-5 minutes in all (each part has
# its own time limit). Results go to one file:
#
#   bash benchmarks/gpu/check.sh                 # -> benchmarks/gpu/results.md
#   PY=.venv/bin/python bash benchmarks/gpu/check.sh /tmp/gpu-results.md
set -u
OUT=${1:-benchmarks/gpu/results.md}
PY=${PY:-python}
WORK=$(mktemp -d)
mkdir -p "$(dirname "$OUT")"
{
  echo "# GPU check, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null)"
  echo
  echo '```'
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
torch.cuda.get_device_name(0), 'bf16 supported:', torch.cuda.is_bf16_supported())" 2>&1
  echo "load: $(uptime)"
  echo '```'
  echo
  echo "## 1. CUDA tests (tests/test_cuda.py), limit 90 s"
  echo '```'
  timeout 90 "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tail -20
  echo "exit code: ${PIPESTATUS[0]}"
  echo '```'
  echo
  echo "## 2. The main job on CUDA: hwsparse search --device cuda --trials 16, limit 75 s"
  echo '```'
  start=$(date +%s)
  timeout 75 "$PY" -m hwsparse search --device cuda --trials 16 --study gpu-main \
    --storage "$WORK/main.journal" 2>&1 | tail -25
  echo "exit code: ${PIPESTATUS[0]}; wall: $(( $(date +%s) - start )) s"
  echo '```'
  echo
  echo "## 3. Trials per hour, K = 1, 8, 64 (--epochs 2: 2 search + 2 ticket epochs), limit 150 s"
  echo
  timeout 150 "$PY" benchmarks/throughput/run.py speed --device cuda --k 1,8,64 --epochs 2 \
    --trials 8 2>&1 | grep -v '^\[W'
  echo
  echo "exit code: ${PIPESTATUS[0]}"
} > "$OUT"
rm -rf "$WORK"
echo "wrote $OUT"
