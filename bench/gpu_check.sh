#!/usr/bin/env bash
# One-run GPU check, sized to finish in under 8 minutes on one H100 with no network:
#   1. the Triton kernel tests (tests/kernels) on CUDA;
#   2. bench/attention_kernels.py --quick: our kernels against a device copy and torch SDPA;
#   3. bench/streams.py --compute cuda at 50/100/200/300 streams for tiny.en (the built-in
#      model) and for random-glm-nano, a random-weight model of GLM-ASR-Nano-2512's size.
#
#     bash bench/gpu_check.sh        (from the repository root, or from anywhere)
#
# Uses .venv/bin/python when the checkout has one, else `python`. Each section prints its
# command, runs under `timeout` and may fail without stopping the others; a summary of every
# section (ok / failed / timed out) ends the run, and the exit status is 0 only when all were
# ok. Exits 2 at once when torch sees no CUDA device. Settings (environment variables):
#   GPU_CHECK_BUDGET_S (465)      seconds for the whole run, header included
#   GPU_CHECK_STREAMS (50,100,200,300), GPU_CHECK_SECONDS (5)   rounds of bench/streams.py
#   GPU_CHECK_MAX_BATCH (64)      rows of the scheduler's continuous batch
# The streams sections need the held-out corpus (bench/.corpus, built by bench/corpus.py; it
# is not in git, so copy it to the GPU machine). random-glm-nano is built once into the model
# cache ($STREAMASR_CACHE_DIR, default ~/.cache/streamasr; 4.5 GB).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH="$ROOT/bench"
if [[ -x "$ROOT/.venv/bin/python" ]]; then
    PY="$ROOT/.venv/bin/python"
else
    PY="$(command -v python || command -v python3 || echo python)"
fi
BUDGET_S="${GPU_CHECK_BUDGET_S:-465}"
STREAMS="${GPU_CHECK_STREAMS:-50,100,200,300}"
ROUND_S="${GPU_CHECK_SECONDS:-5}"
MAX_BATCH="${GPU_CHECK_MAX_BATCH:-64}"
START=$(date +%s)

unset TRITON_INTERPRET STREAMASR_KERNELS # Triton on CUDA, not its CPU interpreter
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1

# PYTHONSAFEPATH: `python -` and `python -m` must not put the checkout on sys.path, where its
# kernels/ folder would shadow PyPI's `kernels` package (the bench scripts run from bench/).
if ! (cd "$ROOT" && PYTHONSAFEPATH=1 "$PY" - <<'EOF'
import sys

try:
    import torch
except ImportError as exc:
    print(f"gpu_check.sh: cannot import torch with {sys.executable}: {exc}", file=sys.stderr)
    sys.exit(1)
if not torch.cuda.is_available():
    print(
        f"gpu_check.sh: torch {torch.__version__} (built for CUDA {torch.version.cuda or 'none'}) "
        "sees no CUDA device; this check needs a GPU. Nothing was run.",
        file=sys.stderr,
    )
    sys.exit(1)
EOF
); then
    exit 2
fi

echo "=== header ==="
echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC'), host $(hostname), nproc $(nproc)"
if command -v git >/dev/null && git -C "$ROOT" rev-parse --git-dir >/dev/null 2>&1; then
    dirty=$(git -C "$ROOT" status --porcelain --untracked-files=no | wc -l)
    echo "commit: $(git -C "$ROOT" rev-parse --short HEAD) ($dirty tracked files changed)"
fi
if command -v nvidia-smi >/dev/null; then
    nvidia-smi
else
    echo "nvidia-smi: not found"
fi
(cd "$ROOT" && PYTHONSAFEPATH=1 "$PY" - <<'EOF'
import os
import platform
import sys

import torch

print(f"python {platform.python_version()} ({sys.executable})")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
try:
    import triton

    print(f"triton {triton.__version__}")
except ImportError as exc:
    print(f"triton: not importable ({exc}); the kernels fall back to the torch reference")
try:
    import transformers

    print(f"transformers {transformers.__version__}")
except ImportError:
    print("transformers: not installed")
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"cuda:{i} {p.name}, {p.total_memory / 2**30:.1f} GiB, sm_{p.major}{p.minor}, {p.multi_processor_count} SMs")
print(f"TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '(unset)')}")
EOF
)
if ! (cd "$BENCH" && "$PY" -c 'import sys; from corpus import DEFAULT_OUT as d; sys.exit(0 if (d / "manifest.jsonl").is_file() else 1)' 2>/dev/null); then
    echo "note: the held-out corpus (bench/.corpus) is missing: the streams sections will fail;"
    echo "      build it with 'python bench/corpus.py' where there is network, and copy it here"
fi
echo "budget: ${BUDGET_S} s for the whole run; header took $(($(date +%s) - START)) s"

NAMES=()
RESULTS=()

# show_cmd ARGS...: the command as one line to paste back into a shell.
show_cmd() {
    local arg out=()
    for arg in "$@"; do
        if [[ $arg =~ ^[A-Za-z0-9_./:,=+-]+$ ]]; then out+=("$arg"); else out+=("$(printf '%q' "$arg")"); fi
    done
    echo "${out[*]}"
}

# section NAME LIMIT_S DIR CMD...: run CMD in DIR under `timeout`, within the run's budget.
section() {
    local name=$1 limit=$2 dir=$3
    shift 3
    local left=$((BUDGET_S - ($(date +%s) - START) - 5))
    ((limit > left)) && limit=$left
    echo
    echo "=== $name ==="
    local rel=${dir#"$ROOT"}
    rel=${rel#/}
    echo "\$ cd ${rel:-.} && $(show_cmd "$@")  # timeout ${limit} s"
    NAMES+=("$name")
    if ((limit < 15)); then
        echo "skipped: the run's ${BUDGET_S} s budget is spent"
        RESULTS+=("skipped (no time left)")
        return
    fi
    local t0 rc
    t0=$(date +%s)
    (cd "$dir" && timeout -k 5 "$limit" "$@")
    rc=$?
    local took=$(($(date +%s) - t0))
    case $rc in
        0) RESULTS+=("ok, ${took} s") ;;
        124 | 137) RESULTS+=("timed out after ${took} s (limit ${limit} s)") ;;
        *) RESULTS+=("failed, exit ${rc}, ${took} s") ;;
    esac
    echo "--- $name: ${RESULTS[-1]}"
}

STREAM_ARGS=(--compute cuda --streams "$STREAMS" --seconds "$ROUND_S" --max-batch "$MAX_BATCH"
    --no-stop --max-lag 2 --warm-streams 50)

section "kernel tests on CUDA (tests/kernels)" 85 "$ROOT" \
    env PYTHONSAFEPATH=1 "$PY" -m pytest tests/kernels -q -rfE -p no:cacheprovider
section "attention kernels vs copy and SDPA (--quick)" 85 "$BENCH" \
    "$PY" attention_kernels.py --quick
section "streams tiny.en on CUDA" 80 "$BENCH" \
    "$PY" streams.py --model tiny.en "${STREAM_ARGS[@]}"
section "streams random-glm-nano on CUDA" 205 "$BENCH" \
    "$PY" streams.py --model random-glm-nano "${STREAM_ARGS[@]}"

echo
echo "=== summary ($(($(date +%s) - START)) s in all) ==="
status=0
for i in "${!NAMES[@]}"; do
    printf '%-48s %s\n' "${NAMES[$i]}" "${RESULTS[$i]}"
    [[ ${RESULTS[$i]} == ok* ]] || status=1
done
exit $status
