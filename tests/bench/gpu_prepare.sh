#!/usr/bin/env bash
# Stage what tests/bench/gpu_suite.sh needs on a GPU machine that has no network, into the
# git-ignored folder .gpu-bench/ of this checkout (run it here, on a machine with PyPI and
# with the ../shared assets):
#
#   .gpu-bench/whl/      wheels for CPython 3.12 / manylinux x86-64 of the project's runtime
#                        dependencies that such a machine usually lacks (pydantic and its
#                        parts, datasets and its parts, gguf for the SmolLM2 conversion),
#                        at the versions installed in this environment ($PYTHON);
#   .gpu-bench/data/     the calibration text (C4 validation, 2,000 docs) and WikiText-2 test;
#   .gpu-bench/smollm2/  SmolLM2-135M-Instruct's two GGUF parts (49 MB each) and to_hf.py.
#
# A single transfer to the GPU machine may be limited (64 MiB here), so the two model parts
# travel in two calls (see tests/bench/gpu_suite.sh and docs/benchmarks.md, "GPU").
#
#   PYTHON=.venv/bin/python bash tests/bench/gpu_prepare.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
SHARED=${SHARED:-$(cd .. && pwd)/shared}
STAGE=.gpu-bench
mkdir -p "$STAGE/whl" "$STAGE/data" "$STAGE/smollm2"

version() { "$PYTHON" -c "import importlib.metadata as m; print(m.version('$1'))"; }
pins=()
for name in pydantic pydantic-core annotated-types typing-inspection datasets dill multiprocess gguf; do
    pins+=("$name==$(version "$name")")
done
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
         manylinux1_x86_64; do
    platforms+=(--platform "$p")
done
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${platforms[@]}" -d "$STAGE/whl" "${pins[@]}"

cp "$SHARED/data/c4-en-validation-2k/c4_validation_2k.jsonl.gz" "$STAGE/data/"
cp "$SHARED/data/wikitext-2-raw/wiki.test.raw" "$STAGE/data/"
cp "$SHARED/models/smollm2-135m/"*.gguf.part* "$SHARED/models/smollm2-135m/to_hf.py" "$STAGE/smollm2/"
chmod -R u+w "$STAGE"
du -sh "$STAGE"/* >&2
echo "staged: ${pins[*]}" >&2
