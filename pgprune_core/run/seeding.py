"""Seeds derived from the run's seed, one per independent random draw."""

from __future__ import annotations

import hashlib


def derived_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed from ``seed`` and labels, so independent draws (the calibration offsets,
    the order of each epoch, a random initializer) never share a random stream."""
    text = "/".join(str(p) for p in (seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1
