"""Zero-shot accuracy of the in-memory model through lm-evaluation-harness.

The paper (Sect. 4.4, following SliceGPT) reports lm-eval zero-shot accuracy on PIQA,
WinoGrande, HellaSwag, ARC-easy and ARC-challenge, and their average.  The model is handed
to lm-eval as an object (``HFLM(pretrained=model, tokenizer=tokenizer)``), so a pruned
model is measured exactly as it is in memory, without saving or reloading it.

Tasks run one at a time, so that progress can be shown per task and a task whose dataset
cannot be fetched fails with its own name.  lm-eval's own logging is lowered to errors
while it runs (its request-level tqdm bars remain).
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from pgprune_core import EvalContext, Evaluator, PluginConfig
from pgprune_core.errors import ConfigError, DataError, first_line
from pgprune_core.report.progress import SilentReporter

#: the paper's five zero-shot tasks (Table 1)
DEFAULT_TASKS = ("piqa", "winogrande", "hellaswag", "arc_easy", "arc_challenge")
#: per-task numbers kept from lm-eval's results (under its default filter "none")
KEPT_METRICS = ("acc", "acc_norm", "acc_stderr", "acc_norm_stderr")


def _split(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


@contextlib.contextmanager
def _quiet_lm_eval() -> Iterator[None]:
    """lm-eval logs every task set-up step at INFO/WARNING; keep only its errors."""
    logger = logging.getLogger("lm_eval")
    previous = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(previous)


def task_metrics(entry: dict[str, Any]) -> dict[str, float]:
    """``{"acc,none": 0.61, "alias": ...}`` -> ``{"acc": 0.61}`` (numbers of KEPT_METRICS)."""
    out = {}
    for key, value in entry.items():
        metric, _, filter_name = key.partition(",")
        if metric in KEPT_METRICS and filter_name == "none" and isinstance(value, (int, float)):
            out[metric] = float(value)
    return out


class LmEvalEvaluator(Evaluator):
    """Zero-shot accuracy with lm-evaluation-harness (PIQA, WinoGrande, HellaSwag, ARC-e/c)."""

    name = "lm-eval"

    class Config(PluginConfig):
        #: lm-eval task (or group) names; comma-separated on the command line
        tasks: list[str] = Field(default_factory=lambda: list(DEFAULT_TASKS))
        #: documents per task: a count, or a fraction below 1; None = all (for quick checks only)
        limit: int | float | None = Field(default=None, gt=0)
        #: directories with task YAMLs of your own (searched before lm-eval's built-in tasks)
        include_path: list[str] = Field(default_factory=list)
        #: also index lm-eval's built-in tasks (False starts faster with local tasks only)
        include_defaults: bool = True
        #: requests per forward pass; None = the evaluation section's batch_size
        batch_size: int | None = Field(default=None, gt=0)
        num_fewshot: int = Field(default=0, ge=0)
        #: metric averaged over the tasks into zero_shot_average (the paper: acc)
        average: Literal["acc", "acc_norm"] = "acc"
        #: bootstrap iterations for standard errors (0 = none; lm-eval's default is 100000)
        bootstrap_iters: int = Field(default=0, ge=0)

        _tasks = field_validator("tasks", "include_path", mode="before")(_split)

    def task_manager(self) -> Any:
        """lm-eval's TaskManager over the configured task directories."""
        from lm_eval.tasks import TaskManager

        config: LmEvalEvaluator.Config = self.config  # type: ignore[assignment]
        paths = [Path(p).expanduser() for p in config.include_path]
        missing = [str(p) for p in paths if not p.is_dir()]
        if missing:
            raise ConfigError(f"lm-eval include_path is not a directory: {', '.join(missing)}")
        if not paths and not config.include_defaults:
            raise ConfigError("lm-eval: include_defaults is false and no include_path is given")
        with _quiet_lm_eval():
            return TaskManager(
                include_path=[str(p) for p in paths] or None,
                include_defaults=config.include_defaults,
            )

    def evaluate(self, ctx: EvalContext) -> dict[str, Any]:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM

        config: LmEvalEvaluator.Config = self.config  # type: ignore[assignment]
        if not config.tasks:
            raise ConfigError("lm-eval: no tasks given")
        manager = self.task_manager()
        known = set(manager.all_tasks)
        for task in config.tasks:
            if task not in known:
                close = difflib.get_close_matches(task, sorted(known), n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise ConfigError(f"unknown lm-eval task {task!r}{hint}")
        with _quiet_lm_eval():
            # a copy: HFLM sets a missing pad token on the tokenizer it is given, and the
            # run saves its tokenizer with the pruned model afterwards
            lm = HFLM(pretrained=ctx.model, tokenizer=copy.deepcopy(ctx.tokenizer),
                      batch_size=config.batch_size or ctx.batch_size)
        reporter = ctx.reporter or SilentReporter()
        zero_shot: dict[str, dict[str, float]] = {}
        for task in reporter.track(config.tasks, len(config.tasks), "zero-shot tasks"):
            try:
                with _quiet_lm_eval():
                    output = simple_evaluate(
                        model=lm, tasks=[task], num_fewshot=config.num_fewshot,
                        limit=config.limit, task_manager=manager,
                        bootstrap_iters=config.bootstrap_iters, log_samples=False,
                        random_seed=None, numpy_random_seed=None, torch_random_seed=None,
                        fewshot_random_seed=ctx.seed,
                    )
            except ConnectionError as exc:
                reason = first_line(exc)
                raise DataError(
                    f"lm-eval task {task!r} could not fetch its dataset from the Hugging Face "
                    f"hub ({reason}); run where the hub is reachable, or pass task YAMLs "
                    f"over local files with --lm-eval.include_path DIR"
                ) from None
            for name, entry in (output or {}).get("results", {}).items():
                metrics = task_metrics(entry)
                if metrics:
                    zero_shot[name] = metrics
        averaged = [zero_shot[t][config.average] for t in config.tasks
                    if config.average in zero_shot.get(t, {})]
        result: dict[str, Any] = {
            "zero_shot": zero_shot,
            "zero_shot_settings": {"num_fewshot": config.num_fewshot, "limit": config.limit,
                                   "average": config.average},
        }
        if averaged:
            result["zero_shot_average"] = sum(averaged) / len(averaged)
        return result
