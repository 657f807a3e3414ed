#!/usr/bin/env bash
# Everything only a GPU can show, for one lent GPU machine (see benchmarks/RESULTS.md).
# Run from the repository root with the machine's own CUDA torch and triton:
#   OUT=/some/dir benchmarks/gpu_session.sh STAGE...
# Stages (each fits one 10-minute device call; give several to run them in order):
#   tests   the whole test suite compiled for the card, no interpreter (tests.log)
#   bar     the issue's bar shapes: ELBO fwd+bwd B=65536 D=784 L=64 fp32+bf16, and
#           reparameterize B=65536 L=64 K=1,16, against eager and torch.compile
#           (bar.md, bar.json)
#   grid    fastvae bench's default GPU grid with its plot (grid.md, grid.json, grid.png)
#   pytest  the pytest-benchmark suites at B=65536, D=784, L=32 (pytest-bench.json)
# Each stage's table is printed last, so a tool that keeps only the end of the output
# still has it. Nothing is fetched from the network: the package installs editable
# with --no-deps --no-build-isolation on top of what the machine has.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
unset TRITON_INTERPRET

if ! "$PY" -c "import fastvae.kernels" 2>/dev/null; then
  "$PY" -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/install.log" 2>&1 \
    || { cat "$OUT/install.log"; exit 1; }
fi
"$PY" - <<'EOF' | tee "$OUT/env.txt"
import platform, torch, triton, fastvae
assert torch.cuda.is_available(), "no CUDA device: this script is for a GPU machine"
p = torch.cuda.get_device_properties(0)
print(f"gpu: {p.name}, {p.multi_processor_count} SMs, {p.total_memory / 2**30:.0f} GiB, "
      f"cc {p.major}.{p.minor}")
print(f"torch {torch.__version__}, triton {triton.__version__}, python "
      f"{platform.python_version()}, fastvae {fastvae.__version__}")
print("fastvae backend for CUDA tensors:", fastvae.backends.select("auto", torch.device("cuda")))
EOF
[ "${PIPESTATUS[0]}" -eq 0 ] || exit 1

status=0
for stage in "$@"; do
  echo "== $stage"
  case "$stage" in
    tests)
      "$PY" -m pytest tests -q -p no:cacheprovider -o addopts= 2>&1 | tee "$OUT/tests.log"
      s=${PIPESTATUS[0]} ;;
    bar)
      "$PY" -m fastvae bench --ops elbo --batch 65536 --dim 784 --latent 64 --dtype fp32,bf16 \
        --json "$OUT/bar_elbo.json" >"$OUT/bar.md" 2>&1
      s=$?
      "$PY" -m fastvae bench --ops reparameterize --batch 65536 --latent 64 --k-reparam 1,16 \
        --dtype fp32,bf16 --json "$OUT/bar_reparam.json" >>"$OUT/bar.md" 2>&1
      s=$((s | $?))
      cat "$OUT/bar.md" ;;
    grid)
      "$PY" -m fastvae bench --json "$OUT/grid.json" --plot "$OUT/grid.png" --markdown \
        >"$OUT/grid.md" 2>&1
      s=$?
      cat "$OUT/grid.md" ;;
    pytest)
      # The full CUDA grid holds IWAE K=50 at B=65536, D=3072 (40 GB a tensor): not here.
      "$PY" -m pytest benchmarks -q -p no:cacheprovider -o addopts= \
        -k "B65536 and D784 and L32 and not K50" \
        --benchmark-json "$OUT/pytest-bench.json" --benchmark-columns=median,min,rounds 2>&1 \
        | tail -60
      s=${PIPESTATUS[0]} ;;
    *) echo "unknown stage $stage (tests, bar, grid, pytest)"; s=2 ;;
  esac
  echo "== $stage: exit $s"
  status=$((status | s))
done
exit $status
