#!/usr/bin/env bash
# The GPU check of issue 12, one command (under 8 minutes on one GPU):
#   1. the CUDA-marked tests (tests/engine/test_cuda.py: fused losses vs autograd on CUDA incl. the general
#      row-dot path and PFL's device assert, PFL / focal with fp16 and bf16 logits, VFNet with torchvision's
#      deformable conv under deform_conv_impl="auto", AMP iterations of every detector, the Trainer under
#      AMP, a 1-GPU NCCL process group through torchrun);
#   2. benchmarks/loss_speed.py, train_step_speed.py (fp32 + bf16 AMP, then fp32 + fp16 AMP) and
#      deform_conv_speed.py with --device cuda.
# Every output goes under $OUT_DIR (default runs/gpu_check): one .txt per step, pytest's junit XML,
# env.txt (GPU, driver, versions) and summary.txt (exit status and seconds of each step).
#
#   benchmarks/gpu_check.sh             # on a GPU machine (exits 2 at once without a GPU)
#   benchmarks/gpu_check.sh --dry-run   # on a CPU: the same steps, CPU equivalents at small sizes
#
# PYTHON defaults to .venv/bin/python if it exists, else python3. The exit status is non-zero if a step failed.
set -u -o pipefail
cd "$(dirname "$0")/.."

DRY_RUN=0
case "${1:-}" in
  --dry-run) DRY_RUN=1 ;;
  "") ;;
  *) echo "usage: $0 [--dry-run]" >&2; exit 64 ;;
esac

if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
OUT_DIR=${OUT_DIR:-runs/gpu_check}
mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD/src:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}"

HAS_CUDA=$("$PYTHON" -c "import torch; print(int(torch.cuda.is_available()))") || exit 1
if [ "$HAS_CUDA" != 1 ] && [ "$DRY_RUN" = 0 ]; then
  echo "gpu_check: no CUDA GPU visible to torch ($("$PYTHON" -c 'import torch; print(torch.__version__)')):" \
       "nothing checked. Run with --dry-run for the CPU equivalents." | tee "$OUT_DIR/summary.txt"
  exit 2
fi
if [ "$DRY_RUN" = 1 ]; then
  DEVICE=cpu
  echo "gpu_check: DRY RUN on CPU (CUDA available: $HAS_CUDA): CUDA tests skip, benchmarks at small sizes"
else
  DEVICE=cuda
fi

{
  date -u +"%Y-%m-%dT%H:%M:%SZ"
  echo "device=$DEVICE dry_run=$DRY_RUN python=$PYTHON"
  "$PYTHON" - <<'EOF'
import platform, torch, torchvision
print(f"python {platform.python_version()} torch {torch.__version__} torchvision {torchvision.__version__} "
      f"cuda {torch.version.cuda} cudnn {torch.backends.cudnn.version()}")
if torch.cuda.is_available():
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        print(f"gpu {i}: {p.name}, {p.total_memory / 2**30:.0f} GiB, capability {p.major}.{p.minor}, "
              f"bf16 {torch.cuda.is_bf16_supported()}")
EOF
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
} > "$OUT_DIR/env.txt" 2>&1
cat "$OUT_DIR/env.txt"

echo "step rc seconds" > "$OUT_DIR/summary.txt"
FAILED=0
# run_step NAME TIMEOUT_SECONDS COMMAND...: output to $OUT_DIR/NAME.txt (and the terminal), status to summary.txt
run_step() {
  local name=$1 limit=$2
  shift 2
  echo; echo "=== $name: $*"
  local start=$SECONDS
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$OUT_DIR/$name.txt"
  local rc=${PIPESTATUS[0]}
  echo "$name $rc $((SECONDS - start))" >> "$OUT_DIR/summary.txt"
  [ "$rc" = 0 ] || { FAILED=1; echo "=== $name FAILED (exit $rc$([ "$rc" = 124 ] && echo ', timed out'))"; }
}

if [ "$DRY_RUN" = 1 ]; then
  # CUDA tests: collected and skipped without a GPU (checks that they import and are marked)
  run_step cuda_tests 120 "$PYTHON" -m pytest -q -p no:cacheprovider -m cuda tests/ \
    --junitxml="$OUT_DIR/cuda_tests.xml"
  run_step loss_speed 180 "$PYTHON" benchmarks/loss_speed.py --device cpu --size 256 --repeats 1
  run_step train_step_speed_bf16 300 "$PYTHON" benchmarks/train_step_speed.py --device cpu --amp-dtype bf16 \
    --image-scale 0.25 --repeats 1 --warmup 0 --no-loss-path
  run_step deform_conv_speed 120 "$PYTHON" benchmarks/deform_conv_speed.py --device cpu --repeats 1
else
  run_step cuda_tests 240 "$PYTHON" -m pytest -q -p no:cacheprovider -m cuda tests/ \
    --junitxml="$OUT_DIR/cuda_tests.xml"
  run_step loss_speed 60 "$PYTHON" benchmarks/loss_speed.py --device cuda --repeats 15
  run_step train_step_speed_bf16 90 "$PYTHON" benchmarks/train_step_speed.py --device cuda --amp-dtype bf16 \
    --repeats 10 --warmup 3 --channels-last
  run_step train_step_speed_fp16 60 "$PYTHON" benchmarks/train_step_speed.py --device cuda --amp-dtype fp16 \
    --repeats 10 --warmup 3 --no-loss-path
  run_step deform_conv_speed 40 "$PYTHON" benchmarks/deform_conv_speed.py --device cuda --repeats 20
fi

echo; echo "=== summary ($OUT_DIR/summary.txt)"; cat "$OUT_DIR/summary.txt"
if grep -q "skipped" "$OUT_DIR/cuda_tests.txt" 2>/dev/null && [ "$DRY_RUN" = 0 ]; then
  echo "note: some CUDA tests were skipped (see cuda_tests.txt)"
fi
exit $FAILED
