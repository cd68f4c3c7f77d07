"""The built-in demo: a small LLaMA trained on Python's own help topics, offline.

``pgprune run`` with no ``--model`` prunes this model, so a newcomer without internet sees
the whole pipeline work.  The model is built on first use (about two minutes on two CPU
cores, deterministically) and cached; ``python -m pgprune_core.demo --rebuild --check``
rebuilds it and checks that the bytes are identical.  See ``docs/demo.md``.
"""

from __future__ import annotations

from pgprune_core.demo.build import demo_model_path, ensure_demo_model, rebuild_demo_model
from pgprune_core.demo.corpus import CorpusSplit, demo_corpus, split_topics
from pgprune_core.demo.datafiles import demo_data
from pgprune_core.demo.defaults import DEMO_STEPS, apply_demo_defaults
from pgprune_core.demo.recipe import DEMO, RECIPES, TINY, DemoRecipe, default_recipe

__all__ = [
    "DEMO",
    "DEMO_STEPS",
    "RECIPES",
    "TINY",
    "CorpusSplit",
    "DemoRecipe",
    "apply_demo_defaults",
    "default_recipe",
    "demo_corpus",
    "demo_data",
    "demo_model_path",
    "ensure_demo_model",
    "rebuild_demo_model",
    "split_topics",
]
