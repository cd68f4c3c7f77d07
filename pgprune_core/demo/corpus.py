"""The demo corpus: Python's own help topics, split into training, calibration and evaluation.

Every CPython installation ships ``pydoc_data.topics.topics``, a dict from help-topic name
("assignment", "exceptions", ...) to several kilobytes of English technical prose: about
half a megabyte in all, enough to train a small language model and to measure it, and
present on a machine without internet.  The split is by *topic*, never inside one, so the
held-out perplexity is measured on subjects the model never read.

The split rule (documented in ``docs/demo.md``): walk the topics in sorted key order and
give each one to the part that is furthest below its target share of the characters seen
so far (training 80 %, calibration 10 %, evaluation 10 %; ties go to the earlier part in
that order).  The parts interleave over the alphabet, their sizes land near the targets
although topics differ fifty-fold in length, and the result is a pure function of the
topics dict.  The topics change between Python versions, so the corpus is identified by a
hash of its content (:attr:`CorpusSplit.sha256`), which names the cache entries built from it.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

Part = Literal["train", "calibration", "evaluation"]

#: target share of the characters of each part, in the order that breaks ties
TARGET_SHARES: dict[Part, float] = {"train": 0.8, "calibration": 0.1, "evaluation": 0.1}
#: what separates two topics in the text files and in the training stream
TOPIC_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class CorpusSplit:
    """The topic names of each part, and the texts they map to."""

    topics: Mapping[str, str]
    parts: Mapping[Part, tuple[str, ...]]
    sha256: str

    def documents(self, part: Part) -> list[str]:
        """The texts of one part's topics, in key order (one document per topic)."""
        return [self.topics[key] for key in self.parts[part]]

    def text(self, part: Part) -> str:
        """One part as a single text, topics separated by a blank line."""
        return TOPIC_SEPARATOR.join(self.documents(part))

    def describe(self) -> dict[str, object]:
        """The split as plain data, for ``PROVENANCE.json``."""
        return {
            "source": "pydoc_data.topics.topics",
            "python": sys.version.split()[0],
            "sha256": self.sha256,
            "rule": "topics in sorted key order, each to the part furthest below its target "
                    "share of the characters seen so far",
            "target_shares": dict(TARGET_SHARES),
            "chars": {part: sum(len(self.topics[k]) for k in keys)
                      for part, keys in self.parts.items()},
            "topics": {part: list(keys) for part, keys in self.parts.items()},
        }


def split_topics(topics: Mapping[str, str]) -> CorpusSplit:
    """Split ``topics`` into the three parts by the deficit rule of the module docstring."""
    parts: dict[Part, list[str]] = {part: [] for part in TARGET_SHARES}
    chars: dict[Part, int] = dict.fromkeys(TARGET_SHARES, 0)
    seen = 0
    for key in sorted(topics):
        seen += len(topics[key])
        part = max(TARGET_SHARES, key=lambda p: TARGET_SHARES[p] * seen - chars[p])
        parts[part].append(key)
        chars[part] += len(topics[key])
    digest = hashlib.sha256(
        json.dumps(sorted(topics.items()), ensure_ascii=False).encode("utf-8")
    ).hexdigest()
    return CorpusSplit(
        topics=dict(topics),
        parts={part: tuple(keys) for part, keys in parts.items()},
        sha256=digest,
    )


def demo_corpus() -> CorpusSplit:
    """The split of this Python's help topics."""
    from pydoc_data.topics import topics

    return split_topics(topics)
