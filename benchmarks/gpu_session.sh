#!/usr/bin/env bash
# Everything only a GPU can show, in ONE call of under 8 minutes (a lent GPU slot is 15
# minutes in all, start-up included, at most 10 minutes a command). From the repository
# root, with the machine's own CUDA torch and triton:
#     OUT=/some/dir bash benchmarks/gpu_session.sh        # default OUT=gpu_out
# Stages, in this order, each under its own timeout (cut to a 450 s budget, so with the
# kill grace and nvidia-smi the call ends within 8 minutes even when every stage hangs;
# a stage that ends early leaves its time to the tests; a failed or timed-out stage
# does not stop the next):
#   env      40 s  card, SMs, memory, driver, torch/triton/python versions; fastvae from
#                  this tree (PYTHONPATH, fastvae/kernels linked to kernels/), installed
#                  offline (pip -e --no-deps --no-index) only when that does not import
#                                                                  -> env.txt
#   bar     155 s  the issue's bar: fastvae bench, ELBO fwd+bwd B=65536 D=784 L=64 fp32,bf16
#                  (eager, compile, fastvae) and reparameterize B=65536 L=64 K=1,16 fp32
#                  (eager, fastvae: its bar is against eager)
#                                                                  -> bar.md, bar_*.json
#   captured 110 s gpu_probe.py --captured-bar: the bar's cases again (ELBO fp32, bf16;
#                  reparameterize K=1, 16), each variant's step (eager, compile, fastvae;
#                  checked as bench checks them) captured in a CUDA graph and replayed: GPU
#                  time without the host                         -> captured_bar.md, .json
#   probe    80 s  benchmarks/gpu_probe.py: per-kernel GPU time, host enqueue time, % of
#                  the copy roofline, CUDA-graph replay; IWAE K=5,50 -> probe.md, probe.json
#   tiles    85 s  benchmarks/gpu_tiles.py: the ELBO row kernel under candidate tiles, warps
#                  and pipeline depths (each checked against the shipped one first), fp32
#                  and bf16: kernel us, % roof, registers, spills      -> tiles.md, .json
#   host     30 s  gpu_probe.py --host-profile: host time of small fused calls (ELBOLoss,
#                  reparameterize, sample_with_kl) and a cProfile of each -> host_profile.txt
#   hvae     70 s  benchmarks/gpu_hvae_loop.py: issue 11's bar, sample_with_kl in a VDVAE-like
#                  loop of 75 groups at batch 16 (eager, fastvae, compile of the whole
#                  step with CUDA graphs, compile of the group function; CUDA-graph
#                  replay; launches per group), single groups -> hvae_loop.md, .json
#   ncu      80 s  ncu on the ELBO row kernel (instructions, issue, DRAM throughput,
#                  registers), fp32 then bf16, and on IWAE K=5's, where ncu exists -> ncu.txt
#   tests   rest   the GPU test modules only (the op suites on the compiled kernels via
#                  FASTVAE_TEST_BACKENDS=triton, and every module with @pytest.mark.gpu),
#                  one pytest process per module (a segfault loses only its module), at
#                  most 90 s each, under faulthandler; no -k filter; 60 s a test where
#                  pytest-timeout exists; a full run leaves them little or nothing: run
#                  FASTVAE_GPU_STAGES=tests for all of them (~6 min) -> tests.txt
#   summary        card, versions, the steps, the bar table, the probe table -> summary.md
#                  (rebuilt after every stage; printed last, so a tool keeping only the end
#                  of the output has it)
# FASTVAE_GPU_STAGES=host,hvae,tests (say) runs only those stages (env always runs; the
# names: env, bar, captured, probe, tiles, host, hvae, ncu, ncu-iwae, tests; any other
# entry is refused before anything runs, exit 2), and
# FASTVAE_GPU_TESTS="tests/test_a.py tests/test_b.py" only those test modules: a rerun of
# what a previous session showed, in a short slot.
# Everything lands in $OUT/0-session.tgz and $OUT/0-summary.md, both rewritten after each stage.
# CPU-only work (the kernel compile test, the interpreter suite) never runs here.
# Without CUDA the GPU stages are skipped with a one-line reason; FASTVAE_GPU_SMOKE=1 also
# runs the CPU smoke modes (tiny shapes) of the probe, the captured bar, the tile sweep, the
# host profile and the hvae loop, to check the script on a machine without a GPU. Nothing is
# fetched from the network. The stages' timeouts add up to more than the budget: in a full
# run the last ones are cut short or skipped (steps.tsv says which); FASTVAE_GPU_STAGES picks.
# Exit status: 1 when a stage that ran failed or timed out (the last line names them; a
# stage skipped for the budget is not a failure), else 2 without CUDA (or when the env
# stage could not tell), else 0. A caller that gets 0 knows every stage it ran ended ok.
set -u
set -o pipefail
cd "$(dirname "$0")/.." || exit 1
STAGE_NAMES="env bar captured probe tiles host hvae ncu ncu-iwae tests"
# A misspelt name would otherwise match nothing and the call would measure nothing.
# "tests, tiles" and "tests tiles" read as "tests,tiles"; commas alone name no stage.
_given=${FASTVAE_GPU_STAGES:-}
if [ -n "$_given" ]; then
  FASTVAE_GPU_STAGES=${FASTVAE_GPU_STAGES//[[:space:]]/,}
  if [ -z "${FASTVAE_GPU_STAGES//,/}" ]; then
    echo "gpu_session: FASTVAE_GPU_STAGES='$_given' names no stage; the names:" \
      "${STAGE_NAMES// /, } (unset it for all)" >&2
    exit 2
  fi
fi
IFS=, read -r -a _picked <<<"${FASTVAE_GPU_STAGES:-}"
_bad=""
for _s in ${_picked[@]+"${_picked[@]}"}; do
  [ -z "$_s" ] || [[ " $STAGE_NAMES " == *" $_s "* ]] || _bad="$_bad${_bad:+, }'$_s'"
done
if [ -n "$_bad" ]; then
  echo "gpu_session: unknown stage $_bad in FASTVAE_GPU_STAGES='$_given'; the" \
    "names: ${STAGE_NAMES// /, }" >&2
  exit 2
fi
OUT=${OUT:-gpu_out}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd) || { echo "cannot create OUT=$OUT"; exit 1; }
# Stages write under $OUT/raw; after each stage the summary is rebuilt, copied to
# $OUT/0-summary.md and raw/ packed into $OUT/0-session.tgz, so a tool that fetches only a
# few files, or a call cut short, still brings back everything up to the last stage that
# ended. raw/ is removed at the end unless FASTVAE_GPU_KEEP_RAW=1.
FINAL=$OUT
OUT=$FINAL/raw
mkdir -p "$OUT" || exit 1
PY=${PYTHON:-python3}
BUDGET=${FASTVAE_GPU_BUDGET_S:-450}
SMOKE=${FASTVAE_GPU_SMOKE:-0}
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
unset TRITON_INTERPRET FASTVAE_BACKEND
T0=$(date +%s)
STEPS="$OUT/steps.tsv"
FAILED=""   # "name (status), ..." of the stages that ran and did not end ok
printf 'stage\tstatus\tseconds\ttimeout\n' >"$STEPS"

elapsed() { echo $(( $(date +%s) - T0 )); }
# stage NAME TIMEOUT LOG CMD...: runs CMD under TIMEOUT (cut to what the budget has
# left), output appended to LOG; records the outcome in steps.tsv.
stage() {
  local name=$1 t=$2 log=$3 left rc s st
  shift 3
  left=$(( BUDGET - $(elapsed) ))
  [ "$t" -gt "$left" ] && t=$left
  if [ "$t" -lt 5 ]; then
    echo "== $name: skipped, the ${BUDGET}s budget is spent"
    printf '%s\tskipped (budget spent)\t0\t0\n' "$name" >>"$STEPS"
    return 99
  fi
  echo "== $name (timeout ${t}s, at $(elapsed)s)"
  s=$(date +%s)
  timeout -k 5 "$t" "$@" >>"$log" 2>&1
  rc=$?
  case $rc in 0) st=ok ;; 124|137) st=TIMEOUT ;; *) st="exit $rc" ;; esac
  printf '%s\t%s\t%s\t%s\n' "$name" "$st" $(( $(date +%s) - s )) "$t" >>"$STEPS"
  echo "== $name: $st in $(( $(date +%s) - s ))s"
  [ "$st" = ok ] || FAILED="$FAILED${FAILED:+, }$name ($st)"
  bundle
  return $rc
}
summarize() {  # summarize WHEN: summary.md from what the stages so far left (greps, cheap)
  {
    echo "# fastvae GPU session summary ($(elapsed) s $1, budget ${BUDGET} s)"
    echo
    grep -E '^(commit|python|triton|fastvae|gpu|cuda|backend)' "$OUT/env.txt"
    echo
    [ -z "$FAILED" ] || echo "failed or timed out: $FAILED"
    echo '```'
    column -t -s "$(printf '\t')" "$STEPS" 2>/dev/null || cat "$STEPS"
    echo '```'
    if [ -s "$OUT/bar.md" ]; then echo; echo "## bar (fastvae bench)"; echo '```'; \
      grep -vE '^\[' "$OUT/bar.md" | tail -n 40; echo '```'; fi
    if [ -s "$OUT/captured_bar.md" ]; then echo; cat "$OUT/captured_bar.md"; fi
    if [ -s "$OUT/probe.md" ]; then echo; cat "$OUT/probe.md"; fi
    if [ -s "$OUT/tiles.md" ]; then echo; cat "$OUT/tiles.md"; fi
    if [ -s "$OUT/host_profile.txt" ]; then echo; echo "## host time per fused call"; \
      grep '^## ' "$OUT/host_profile.txt"; fi
    if [ -s "$OUT/hvae_loop.md" ]; then echo; cat "$OUT/hvae_loop.md"; fi
    if [ -s "$OUT/ncu.txt" ]; then echo; echo "## ncu (ELBO and IWAE row kernels)"; echo '```'; \
      grep -E '^"[0-9]|ncu not' "$OUT/ncu.txt" \
        | awk -F'","' '{print $1"\t"$5"\t"$9"\t"$13"\t"$15}' \
        | tr -d '"' | tail -n 60; echo '```'; fi
    [ -s "$OUT/tests.txt" ] && { echo; echo "## tests"; echo '```'
    grep -E '^(=== |rc=|FAILED|ERROR|Fatal|[0-9]+ (passed|failed)|.*(passed|failed|error).* in )' \
      "$OUT/tests.txt" | tail -n 80 || tail -n 5 "$OUT/tests.txt"
    echo; echo '```'; }
  } >"$OUT/summary.md" 2>&1
  cp "$OUT/summary.md" "$FINAL/0-summary.md"
}
bundle() {  # bundle [WHEN]
  summarize "${1:-so far}"
  tar czf "$FINAL/0-session.tgz.part" -C "$FINAL" raw 2>/dev/null \
    && mv -f "$FINAL/0-session.tgz.part" "$FINAL/0-session.tgz"
}
script_budget() {  # script_budget MAX: a script's own --budget-s, within what the session has
  local left=$(( BUDGET - $(elapsed) - 20 ))
  [ "$left" -gt "$1" ] && left=$1
  [ "$left" -lt 5 ] && left=5
  echo "$left"
}
want() {  # want STAGE: whether FASTVAE_GPU_STAGES (a comma list; default all) names it
  [ -z "${FASTVAE_GPU_STAGES:-}" ] || [[ ",$FASTVAE_GPU_STAGES," == *",$1,"* ]]
}
skip() {  # skip NAME REASON
  echo "== $1: skipped, $2"
  printf '%s\tskipped (%s)\t0\t0\n' "$1" "$2" >>"$STEPS"
}

# ------------------------------------------------------------------ env
ENV_PY='
import platform, sys, torch
print(f"python {platform.python_version()}, torch {torch.__version__}, cuda {torch.version.cuda}")
try:
    import triton; print(f"triton {triton.__version__}")
except ImportError:
    print("triton not installed")
import fastvae, fastvae.kernels
print(f"fastvae {fastvae.__version__} from {fastvae.__file__}")
if not torch.cuda.is_available():
    print("cuda: none (torch.cuda.is_available() is False)"); sys.exit(3)
p = torch.cuda.get_device_properties(0)
print(f"gpu: {p.name}, {p.multi_processor_count} SMs, {p.total_memory / 2**30:.0f} GiB, "
      f"cc {p.major}.{p.minor}, {torch.cuda.device_count()} device(s)")
print("backend for CUDA tensors:", fastvae.backends.select("auto", torch.device("cuda")))
'
{
  echo "# fastvae GPU session, $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "commit: $(git log -1 --format='%H %s' 2>/dev/null || echo unknown)"
  git status --short 2>/dev/null | head -20 | sed 's/^/uncommitted: /'
} >"$OUT/env.txt"
# fastvae from this tree without installing it: the scripts run as benchmarks/X.py (their
# own folder first on sys.path, not the root), and `pip install -e .` needs what a GPU
# machine's Python may lack (setuptools >= 77 for pyproject's license field, with
# --no-build-isolation and no index; a site-packages it may write to). fastvae.kernels is
# the top-level kernels/ folder (setup.py's package_dir): linked in where the tree lacks
# it (the link is git-ignored). pip stays the last resort.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! timeout 60 "$PY" -c "import fastvae.kernels" >/dev/null 2>&1 \
    && [ ! -e fastvae/kernels ] && [ ! -L fastvae/kernels ] && [ -d kernels ]; then
  ln -s ../kernels fastvae/kernels && echo "linked fastvae/kernels -> ../kernels" >>"$OUT/env.txt"
fi
if ! timeout 60 "$PY" -c "import fastvae.kernels" >/dev/null 2>&1; then
  stage "install" 25 "$OUT/env.txt" "$PY" -m pip install -q --no-deps --no-build-isolation \
    --no-index -e .
fi
_failed=$FAILED
stage "env" 40 "$OUT/env.txt" "$PY" -c "$ENV_PY"
HAVE_CUDA=$?
[ "$HAVE_CUDA" = 3 ] && { FAILED=$_failed; bundle; }   # the probe's "no CUDA": exit 2, not a failure
if command -v nvidia-smi >/dev/null 2>&1; then
  timeout 10 nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit,temperature.gpu \
    --format=csv >>"$OUT/env.txt" 2>&1
fi
cat "$OUT/env.txt"
if [ "$HAVE_CUDA" != 0 ]; then
  REASON="no CUDA device (see env.txt)"
  [ "$HAVE_CUDA" = 3 ] || REASON="the env stage failed (exit $HAVE_CUDA, see env.txt)"
fi

# ------------------------------------------------------------------ bar
if want bar; then
  if [ "$HAVE_CUDA" = 0 ]; then
    : >"$OUT/bar.md"
    stage "bar elbo" 110 "$OUT/bar.md" "$PY" -m fastvae bench --ops elbo --batch 65536 --dim 784 \
      --latent 64 --dtype fp32,bf16 --variants eager,compile,fastvae-triton --budget 1 \
      --json "$OUT/bar_elbo.json"
    stage "bar reparameterize" 45 "$OUT/bar.md" "$PY" -m fastvae bench --ops reparameterize \
      --batch 65536 --latent 64 --k-reparam 1,16 --dtype fp32 --variants eager,fastvae-triton \
      --budget 1 --no-extras --json "$OUT/bar_reparam.json"
  else
    skip "bar" "$REASON"
  fi
fi

# ------------------------------------------------------------------ captured
if want captured; then
  if [ "$HAVE_CUDA" = 0 ]; then
    stage "captured bar" 110 "$OUT/probe.log" "$PY" benchmarks/gpu_probe.py --captured-bar \
      --out "$OUT" --budget-s "$(script_budget 95)"
  elif [ "$SMOKE" != 0 ]; then
    stage "captured bar (CPU smoke)" 60 "$OUT/probe.log" "$PY" benchmarks/gpu_probe.py \
      --smoke --captured-bar --out "$OUT" --reps 3
  else
    skip "captured bar" "$REASON"
  fi
fi

# ------------------------------------------------------------------ probe
if want probe; then
  if [ "$HAVE_CUDA" = 0 ]; then
    stage "probe" 80 "$OUT/probe.log" "$PY" benchmarks/gpu_probe.py --out "$OUT" \
      --budget-s "$(script_budget 60)"
  elif [ "$SMOKE" != 0 ]; then
    stage "probe (CPU smoke)" 90 "$OUT/probe.log" "$PY" benchmarks/gpu_probe.py --smoke \
      --out "$OUT" --reps 3
  else
    skip "probe" "$REASON"
  fi
fi

# ------------------------------------------------------------------ tiles
if want tiles; then
  if [ "$HAVE_CUDA" = 0 ]; then
    stage "tiles" 85 "$OUT/tiles.log" "$PY" benchmarks/gpu_tiles.py --out "$OUT" \
      --budget-s "$(script_budget 70)"
  elif [ "$SMOKE" != 0 ]; then
    stage "tiles (CPU smoke)" 60 "$OUT/tiles.log" "$PY" benchmarks/gpu_tiles.py --smoke \
      --out "$OUT" --budget-s "$(script_budget 40)"
  else
    skip "tiles" "$REASON"
  fi
fi

# ------------------------------------------------------------------ host
if want host; then
  if [ "$HAVE_CUDA" = 0 ]; then
    stage "host profile" 30 "$OUT/probe.log" "$PY" benchmarks/gpu_probe.py --host-profile \
      --out "$OUT"
  elif [ "$SMOKE" != 0 ]; then
    stage "host profile (CPU smoke)" 30 "$OUT/probe.log" "$PY" benchmarks/gpu_probe.py \
      --smoke --host-profile --out "$OUT"
  else  # as every GPU stage: in the console and steps.tsv, not silently missing
    skip "host profile" "$REASON"
  fi
fi

# ------------------------------------------------------------------ hvae
if want hvae; then
  if [ "$HAVE_CUDA" = 0 ]; then
    stage "hvae loop" 70 "$OUT/hvae_loop.log" "$PY" benchmarks/gpu_hvae_loop.py --out "$OUT" \
      --budget-s "$(script_budget 55)"
  elif [ "$SMOKE" != 0 ]; then
    stage "hvae loop (CPU smoke)" 60 "$OUT/hvae_loop.log" "$PY" benchmarks/gpu_hvae_loop.py \
      --smoke --out "$OUT" --reps 3
  else
    skip "hvae loop" "$REASON"
  fi
fi

# ------------------------------------------------------------------ ncu
NCU_METRICS=gpu__time_duration.sum,sm__inst_executed.sum,smsp__issue_active.avg.pct_of_peak_sustained_active,dram__throughput.avg.pct_of_peak_sustained_elapsed,dram__bytes_read.sum,dram__bytes_write.sum,launch__registers_per_thread,sm__warps_active.avg.pct_of_peak_sustained_active
if want ncu; then
  if [ "$HAVE_CUDA" != 0 ]; then
    skip "ncu" "$REASON"
  elif ! command -v ncu >/dev/null 2>&1; then
    skip "ncu" "ncu not on PATH"
    echo "ncu not on PATH: no counters this session" >"$OUT/ncu.txt"
  else
    stage "ncu" 45 "$OUT/ncu.txt" ncu --target-processes all --kernel-name regex:elbo_rows \
      --launch-count 4 --csv --metrics \
      "$NCU_METRICS" \
      "$PY" benchmarks/gpu_probe.py --ncu-target
  fi
fi

if want ncu-iwae; then
  if [ "$HAVE_CUDA" != 0 ]; then
    skip "ncu iwae" "$REASON"
  elif ! command -v ncu >/dev/null 2>&1; then
    skip "ncu iwae" "ncu not on PATH"
  else
    stage "ncu iwae" 35 "$OUT/ncu.txt" ncu --target-processes all --kernel-name regex:iwae_bound \
      --launch-count 2 --csv --metrics "$NCU_METRICS" "$PY" benchmarks/gpu_probe.py \
      --ncu-target iwae
  fi
fi

# ------------------------------------------------------------------ tests
MODULES=$("$PY" - <<'EOF'
import ast, glob, os
tree = ast.parse(open("tests/test_triton_interpreter.py").read())
mods = next(ast.literal_eval(n.value) for n in tree.body
            if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "MODULES")
gpu = sorted(os.path.basename(f) for f in glob.glob("tests/test_*.py")
             if "mark.gpu" in open(f).read())
cpu_only = {"test_triton_interpreter.py", "test_kernels_compile.py"}
seen = []
for m in gpu + mods:          # the GPU-marked modules first: they exist only for this
    if m not in seen and m not in cpu_only:
        seen.append(m)
print(" ".join("tests/" + m for m in seen))
EOF
)
[ -n "${FASTVAE_GPU_TESTS:-}" ] && MODULES=$FASTVAE_GPU_TESTS
if want tests; then
  if [ "$HAVE_CUDA" != 0 ]; then
    skip "tests" "$REASON"
    echo "tests not run: $REASON; the modules would be: $MODULES" >"$OUT/tests.txt"
  else
    PT=(-X faulthandler -m pytest -q -p no:cacheprovider -o addopts= -rfEs --maxfail=10
        --durations=5)
    "$PY" -c "import pytest_timeout" >/dev/null 2>&1 && PT+=(--timeout 60)
    echo "# FASTVAE_TEST_BACKENDS=triton $PY ${PT[*]} MODULE, one process per module (a crash" \
      "loses only its module)" >"$OUT/tests.txt"
    for m in $MODULES; do
      t=$(( BUDGET - $(elapsed) - 10 ))
      [ "$t" -gt 90 ] && t=90
      echo "=== $m" >>"$OUT/tests.txt"
      FASTVAE_TEST_BACKENDS=triton stage "tests $(basename "$m" .py)" "$t" "$OUT/tests.txt" \
        "$PY" "${PT[@]}" "$m"
      echo "rc=$?" >>"$OUT/tests.txt"
    done
  fi
fi

# ------------------------------------------------------------------ summary
bundle "in all"
echo
echo "================================================================ summary.md"
cat "$OUT/summary.md"
echo "files in $FINAL/0-session.tgz: $(ls "$OUT" | tr '\n' ' ')"
[ "${FASTVAE_GPU_KEEP_RAW:-0}" = 1 ] || rm -rf "$OUT"
if [ -n "$FAILED" ]; then
  echo "gpu_session: failed or timed out: $FAILED"
  exit 1
fi
[ "$HAVE_CUDA" = 0 ] || exit 2
exit 0
