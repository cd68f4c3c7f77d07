"""The quality setting of ``shared/REFERENCE.md`` shared by the benchmark scripts: where the
proxy model and its calibration / evaluation text live (``../shared``, never committed)."""

from __future__ import annotations

import argparse
from pathlib import Path

SHARED = Path(__file__).resolve().parents[3] / "shared"
PROXY_MODEL = SHARED / "models" / "proxy-llama-7m"
CALIB_FILE = SHARED / "data" / "c4-en-validation-2k" / "c4_validation_2k.jsonl.gz"
CALIB_SLICE = "1800:2000"  # C4 docs the proxy was not trained on
EVAL_FILE = SHARED / "data" / "wikitext-2-raw" / "wiki.test.raw"


def add_proxy_setting(parser: argparse.ArgumentParser) -> None:
    """``--model --calib-file --calib-slice --eval-file``, defaulting to the proxy setting."""
    parser.add_argument("--model", default=str(PROXY_MODEL))
    parser.add_argument("--calib-file", default=str(CALIB_FILE))
    parser.add_argument("--calib-slice", default=CALIB_SLICE)
    parser.add_argument("--eval-file", default=str(EVAL_FILE))


# -- the real pretrained model -------------------------------------------------------------

SMOLLM2_ASSET = SHARED / "models" / "smollm2-135m"
#: where the HF directory converted from the GGUF asset is kept between benchmark runs
SMOLLM2_CACHE = Path.home() / ".cache" / "pgprune-bench" / "smollm2-135m"


def smollm2_dir() -> Path | None:
    """The SmolLM2-135M-Instruct HF directory, converted once from ``shared/``'s GGUF asset
    with its own ``to_hf.py`` (needs ``pip install gguf``); None when the asset or ``gguf``
    is missing (the benchmarks then skip)."""
    import importlib.util
    import subprocess
    import sys

    if (SMOLLM2_CACHE / "config.json").is_file():
        return SMOLLM2_CACHE
    if not (SMOLLM2_ASSET / "to_hf.py").is_file() or importlib.util.find_spec("gguf") is None:
        return None
    SMOLLM2_CACHE.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, str(SMOLLM2_ASSET / "to_hf.py"), str(SMOLLM2_CACHE)],
                   check=True, stdout=sys.stderr)
    return SMOLLM2_CACHE


def skipped_for_missing_assets(args: argparse.Namespace) -> bool:
    """Print ``{"skipped": ...}`` and return True when a model or text of the setting is
    missing (``../shared`` is never part of the project)."""
    import json

    for path in (args.model, args.calib_file, args.eval_file):
        if not Path(path).exists():
            print(json.dumps({"skipped": f"missing benchmark asset: {path}"}))
            return True
    return False
