"""``python -m pgprune_core.demo``: build, rebuild or verify the cached demo model.

    python -m pgprune_core.demo                    # build if missing; print where it is
    python -m pgprune_core.demo --rebuild          # build afresh, replacing the cache
    python -m pgprune_core.demo --rebuild --check  # ... then build again and compare bytes

``--check`` builds a second copy in a temporary directory and compares every file with
the cached one byte for byte (by sha256; ``PROVENANCE.json`` is left out, it records the
build time).  Exit status 0: identical; 1: they differ (the files are listed); 2: a user
error.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from pgprune_core.demo.build import build_demo_model, ensure_demo_model, rebuild_demo_model
from pgprune_core.demo.cache import file_hashes, read_provenance
from pgprune_core.demo.corpus import demo_corpus
from pgprune_core.demo.recipe import RECIPES, default_recipe
from pgprune_core.errors import PgpruneError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m pgprune_core.demo",
        description="Build, rebuild or verify pgprune's cached demo model.",
    )
    parser.add_argument("--rebuild", action="store_true",
                        help="build afresh and replace the cached model")
    parser.add_argument("--check", action="store_true",
                        help="build a second copy and compare it byte for byte with the cache")
    parser.add_argument("--cache-dir", default=None,
                        help="cache root (default: $PGPRUNE_CACHE, $XDG_CACHE_HOME/pgprune "
                             "or ~/.cache/pgprune)")
    parser.add_argument("--recipe", choices=sorted(RECIPES), default=None,
                        help="recipe to build (default: $PGPRUNE_DEMO_RECIPE or 'demo')")
    return parser.parse_args(argv)


def compare(cached: Path, fresh: Path) -> list[str]:
    """Names of the files (``PROVENANCE.json`` aside) that differ or exist on one side only."""
    left, right = file_hashes(cached), file_hashes(fresh)
    return sorted(name for name in left.keys() | right.keys() if left.get(name) != right.get(name))


def main(argv: list[str] | None = None) -> int:
    from pgprune_core.report.progress import RichReporter

    args = parse_args(argv)
    reporter = RichReporter()
    try:
        recipe = RECIPES[args.recipe] if args.recipe else default_recipe()
        if args.rebuild:
            path = rebuild_demo_model(reporter, args.cache_dir, recipe)
        else:
            path = ensure_demo_model(reporter, args.cache_dir, recipe)
    except PgpruneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    provenance = read_provenance(path)
    if provenance is None:
        print(f"error: the demo model at {path} failed its own integrity check", file=sys.stderr)
        return 1
    evaluation = provenance["evaluation"]
    print(f"{path}\n  final training loss {provenance['training']['final_loss']}, held-out "
          f"perplexity {evaluation['perplexity']} (unigram {evaluation['unigram_perplexity']}), "
          f"built in {provenance['build']['wall_s']} s")
    if not args.check:
        return 0
    with tempfile.TemporaryDirectory(prefix="pgprune-demo-check-") as tmp:
        reporter.phase("building a second copy to compare with the cache")
        build_demo_model(Path(tmp), recipe, demo_corpus(), reporter)
        differing = compare(path, Path(tmp))
    if differing:
        print(f"NOT byte-identical: {', '.join(differing)} differ between two builds", file=sys.stderr)
        return 1
    print(f"byte-identical: {len(provenance['files'])} files "
          f"(model.safetensors sha256 {provenance['files']['model.safetensors'][:16]}...)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
