"""The settings that make ``pgprune run`` (no ``--model``) a complete offline demo.

The library defaults describe the paper's setting: C4 calibration, WikiText-2 evaluation,
one epoch of 120,000 segments.  None of that fits a newcomer's laptop without internet,
so when no model is named :func:`apply_demo_defaults` points calibration and evaluation at
the demo's own text files and shortens the optimisation to what the demo model needs.

It changes only what the user left unset (a key counts as set when it was given at all,
by a config file, a flag or a dotted override, even to its default value), so
``pgprune run --training.steps 50`` or ``--data.eval wikitext2`` behave as written.
Every key it fills is marked as set in the returned config, which makes the function
idempotent and lets ``config.yaml`` of the run directory record the demo paths, so that
``pgprune resume`` continues with the same data.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel

from pgprune_core.config.sections import RunConfig
from pgprune_core.demo.datafiles import demo_data
from pgprune_core.demo.recipe import default_recipe

#: optimisation steps of the demo run (batch 8 x 128 tokens, 2 masks a step): long enough
#: for the policy to move visibly away from its Wanda-sp start, short enough for the whole
#: demo to finish in five minutes on two cores
DEMO_STEPS = 300


def _user_set(section: BaseModel, *keys: str) -> bool:
    return any(key in section.model_fields_set for key in keys)


def apply_demo_defaults(config: RunConfig, cache_dir: str | Path | None = None) -> RunConfig:
    """A copy of ``config`` with the demo's data and run length where the user set none;
    ``config`` itself when a model is named.

    - ``data.calib_file`` = the demo calibration file, unless ``data.calib`` or
      ``data.calib_file`` was set;
    - ``data.eval`` = ``[]`` (no named corpus: they need the internet), unless set;
    - ``data.eval_files`` = ``[the demo evaluation file]``, unless set;
    - ``training.steps`` = :data:`DEMO_STEPS`, unless ``training.steps`` or
      ``training.epochs`` was set;
    - ``training.threads`` = 1, unless set or ``OMP_NUM_THREADS`` is in the environment
      (the demo model is small: a second thread gains little on an idle machine and makes
      every step wait on a shared one, measured 8x slower);
    - every sequence length left unset (``data.seq_len``, ``evaluation.seq_len``, the
      initializer's ``seq_len``, e.g. Wanda-sp's 1024) is capped at the demo model's
      context: it never saw a position beyond it, so scoring or measuring there would
      describe a model that does not exist.
    """
    if config.model.name_or_path is not None:
        return config
    calibration, evaluation = demo_data(cache_dir)
    context = default_recipe().seq_len
    demo = config.model_copy(deep=True)
    data, training = demo.data, demo.training
    sections: tuple[BaseModel, ...] = (data, demo.evaluation, demo.init)
    for section in sections:
        length = getattr(section, "seq_len", None)
        if length is not None and length > context and not _user_set(section, "seq_len"):
            setattr(section, "seq_len", context)  # noqa: B010 (plugin sections vary)
    if not _user_set(data, "calib", "calib_file"):
        data.calib_file = str(calibration)
    if not _user_set(data, "eval"):
        data.eval = []
    if not _user_set(data, "eval_files"):
        data.eval_files = [str(evaluation)]
    if not _user_set(training, "steps", "epochs"):
        training.steps = DEMO_STEPS
    if not _user_set(training, "threads") and "OMP_NUM_THREADS" not in os.environ:
        training.threads = 1  # a small model: threads gain little, and lose a lot when shared
    return demo
