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
