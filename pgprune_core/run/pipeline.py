"""One pgprune run, end to end (docs/architecture.md), resumable.

    config -> adapter.load -> sites -> granularities -> units (layout, costs)
    calibration stream -> initializer -> s0 -> projector
    loop: batch -> estimator.step (sample, oracle.losses, update, project)   [checkpointed]
    final mask -> surgery -> saved model -> evaluators -> metrics.json, report.md, plots

Phases whose results are saved (dense metrics, initial scores, the policy checkpoint) are
not repeated by ``pgprune resume``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pgprune_core.config.sections import RunConfig
from pgprune_core.demo import apply_demo_defaults
from pgprune_core.errors import (
    ConfigError,
    DistributedError,
    Interrupted,
    PgpruneError,
    RunDirError,
)
from pgprune_core.evaluation.memory import DevicePeaks
from pgprune_core.interfaces import EvalContext, Granularity, InitContext, ModelSource
from pgprune_core.model.placement import input_device, parameter_devices
from pgprune_core.model.structure import ModelStructure, UnitLayout
from pgprune_core.optim.budget import Budget, protected_mask
from pgprune_core.optim.checkpoint import LoopState
from pgprune_core.optim.loop import DiscardingSink, OptimisationLoop, Stage
from pgprune_core.optim.policy import BernoulliPolicy
from pgprune_core.parallel import SINGLE, Ranks, from_environment
from pgprune_core.plugin.registry import Registry, get_registry
from pgprune_core.report.progress import Reporter, SilentReporter
from pgprune_core.run.rundir import RunDir, config_digest

#: calibration segments when neither --steps nor data.n_segments says (the paper: 120k)
PAPER_SEGMENTS = 120_000
#: the run length docs/user-guide.md and the reinforce README recommend (8 x 128 tokens a step)
RECOMMENDED_STEPS = 1_000


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, Any]


@dataclass
class Prepared:
    """What every phase needs: the model and its description."""

    adapter_name: str
    loaded: Any
    structure: ModelStructure
    granularities: dict[str, Granularity]
    layout: UnitLayout
    budget: Budget
    protected: torch.Tensor
    device: torch.device
    #: layers of the dense model (surgery may drop some from ``structure``)
    n_layers: int


def default_run_dir(config: RunConfig) -> Path:
    model = Path(config.model.name_or_path or "demo").name or "model"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    rate = round(config.pruning.prune_rate * 100)
    return Path("runs") / f"{model}-{config.estimator.name}-{rate}pct-{stamp}"


def load_model(config: RunConfig, registry: Registry, reporter: Reporter,
               ranks: Ranks = SINGLE) -> tuple[str, Any]:
    """Resolve the adapter (explicit or from the model's config) and load model + tokenizer
    (under torchrun: on every rank, each on its own GPU)."""
    from pgprune_core.model.hf_adapter import resolve_adapter

    name_or_path = config.model.name_or_path
    if name_or_path is None:
        from pgprune_core.demo import ensure_demo_model

        # built (once, cached) by rank 0 alone
        name_or_path = ranks.on_main(lambda: str(ensure_demo_model(reporter=reporter)),
                                     "building the demo model")
    device = config.model.device
    if ranks.distributed and device == "cuda":
        device = f"cuda:{ranks.local_rank}"
    adapter_name = config.model.adapter or resolve_adapter(
        name_or_path, registry=registry, revision=config.model.revision,
        trust_remote_code=config.model.trust_remote_code)
    adapter = registry.cls("adapter", adapter_name)()
    reporter.phase(f"loading {name_or_path} with adapter '{adapter_name}'")
    loaded = adapter.load(
        ModelSource(
            name_or_path=name_or_path,
            dtype=config.model.dtype,
            device=device,
            device_map=config.model.device_map,
            max_memory=config.model.max_memory,
            offload_folder=config.model.offload_folder,
            revision=config.model.revision,
            trust_remote_code=config.model.trust_remote_code,
        )
    )
    return adapter_name, loaded


def make_budget(config: RunConfig, layout: Any, rate: float, protected: torch.Tensor) -> Budget:
    """The budget of ``config.pruning`` at ``rate`` (the progressive schedule's stages differ
    in the rate only)."""
    pruning = config.pruning
    return Budget(pruning.budget, layout, rate, protected, shape=pruning.shape,
                  channel_multiple=pruning.channel_multiple)


def prepare(config: RunConfig, registry: Registry, reporter: Reporter,
            ranks: Ranks = SINGLE) -> Prepared:
    adapter_name, loaded = load_model(config, registry, reporter, ranks)
    adapter = registry.cls("adapter", adapter_name)()
    structure = adapter.describe_model(loaded.model)
    granularities: dict[str, Granularity] = {}
    for kind in config.pruning.granularity:
        cls = registry.cls("granularity", kind)
        granularities[kind] = cls()
    layout = UnitLayout([g.units(structure) for g in granularities.values()])
    first, last = config.pruning.protect_layers
    if first + last >= structure.n_layers:
        raise ConfigError(
            f"--protect-layers {first},{last} protects all {structure.n_layers} layers; "
            f"nothing is left to prune"
        )
    protected = protected_mask(layout, structure.n_layers, first, last)
    budget = make_budget(config, layout, config.pruning.prune_rate, protected)
    device = input_device(loaded.model)
    return Prepared(adapter_name, loaded, structure, granularities, layout, budget, protected, device,
                    structure.n_layers)


def calibration_tokens(config: RunConfig, tokenizer: Any, reporter: Reporter) -> torch.Tensor:
    from pgprune_core.data import calibration_source, tokenize_source

    source = calibration_source(config.data)
    reporter.phase(f"tokenizing calibration corpus '{source.name}'")
    return tokenize_source(source, tokenizer, cache_dir=config.data.cache_dir)


def build_stream(config: RunConfig, tokens: torch.Tensor, total_steps_hint: int | None) -> Any:
    """The loop's calibration stream: ``n_segments`` windows of ``data.seq_len`` tokens."""
    from pgprune_core.data import CalibrationStream

    if config.data.n_segments is not None:
        n_segments = config.data.n_segments
    elif total_steps_hint is not None:
        n_segments = max(1, total_steps_hint) * config.training.batch_size
    else:
        n_segments = PAPER_SEGMENTS
    return CalibrationStream(
        tokens,
        seq_len=config.data.seq_len,
        batch_size=config.training.batch_size,
        n_segments=n_segments,
        seed=config.training.seed,
        sampling=config.data.sampling,
    )


def calibration_batches(config: RunConfig, tokens: torch.Tensor):  # type: ignore[no-untyped-def]
    """``fn(n_sequences, seq_len)`` for initializers: exactly ``n_sequences`` deterministic
    windows of the same text, in batches of at most ``training.batch_size`` rows."""
    from pgprune_core.data import CalibrationStream

    def batches(n_sequences: int, seq_len: int) -> Any:
        batch_size = min(config.training.batch_size, n_sequences)
        stream = CalibrationStream(
            tokens, seq_len=seq_len, batch_size=batch_size, n_segments=n_sequences,
            seed=config.training.seed, sampling=config.data.sampling,
        )
        return iter(stream.windows().split(batch_size))

    return batches


def plan_stages(config: RunConfig, prep: Prepared, steps_per_epoch: int) -> list[Stage]:
    """The fixed-rate schedule, or Random-Progressive's increasing rates (paper A.12)."""
    target = config.pruning.prune_rate
    training = config.training
    if training.schedule == "fixed":
        rates = [target]
    else:
        rates = []
        rate = training.progressive_start
        while rate < target - 1e-9:
            rates.append(round(rate, 6))
            rate += training.progressive_step
        rates.append(target)
    if training.steps is not None:
        base, extra = divmod(training.steps, len(rates))
        steps = [base + (1 if i >= len(rates) - extra else 0) for i in range(len(rates))]
    elif training.schedule == "fixed":
        steps = [math.ceil(training.epochs * steps_per_epoch)]
    else:
        steps = [math.ceil(training.progressive_stage_epochs * steps_per_epoch)] * len(rates)
    stages = []
    for rate, n in zip(rates, steps, strict=True):
        budget = make_budget(config, prep.layout, rate, prep.protected)
        reference = n if training.schedule == "fixed" else round(n / training.progressive_stage_epochs)
        stages.append(Stage(rate=rate, steps=n, constraints=budget.constraints(),
                            reference_steps=max(1, reference)))
    return stages


def evaluate(config: RunConfig, model: Any, tokenizer: Any, label: str, registry: Registry,
             reporter: Reporter, reference: dict[str, Any] | None = None,
             model_path: Path | None = None) -> dict[str, Any]:
    from pgprune_core.data import eval_sources

    datasets = eval_sources(config.data)
    metrics: dict[str, Any] = {"params": sum(p.numel() for p in model.parameters())}
    device = input_device(model)
    for entry in config.evaluation.evaluators:
        reporter.phase(f"evaluating the {label} model: {entry.name}")
        evaluator = registry.cls("evaluator", entry.name)(entry)
        result = evaluator.evaluate(
            EvalContext(
                model=model, tokenizer=tokenizer, device=device, label=label, datasets=datasets,
                seq_len=config.evaluation.seq_len, batch_size=config.evaluation.batch_size,
                seed=config.training.seed, reference=reference, model_path=model_path,
                reporter=reporter,
            )
        )
        metrics.update(result)
    return metrics


def evaluate_dense(config: RunConfig, prep: Prepared, registry: Registry,
                   reporter: Reporter) -> dict[str, Any]:
    """The unpruned model's metrics (its directory, when it has one, for size on disk).
    ``pgprune compare`` calls it once for all its cells."""
    source = Path(prep.loaded.source.name_or_path)
    return evaluate(config, prep.loaded.model, prep.loaded.tokenizer, "dense", registry, reporter,
                    model_path=source if source.is_dir() else None)


def initial_scores(config: RunConfig, prep: Prepared, tokens: torch.Tensor, oracle: Any,
                   registry: Registry, reporter: Reporter,
                   ranks: Ranks = SINGLE) -> torch.Tensor:
    init_cls = registry.cls("initializer", config.init.name)
    unsupported = [k for k in prep.layout.kinds if k not in init_cls.kinds]
    if unsupported:
        raise ConfigError(
            f"initializer '{config.init.name}' cannot score {', '.join(unsupported)} units; "
            f"it scores: {', '.join(sorted(init_cls.kinds))}"
        )
    initializer = init_cls(config.init)
    reporter.phase(f"scoring {len(prep.layout)} units with '{config.init.name}'")

    scores = initializer.scores(
        InitContext(
            model=prep.loaded.model, structure=prep.structure, layout=prep.layout,
            granularities=prep.granularities, device=prep.device, seed=config.training.seed,
            calibration=calibration_batches(config, tokens), oracle=oracle, ranks=ranks,
        )
    )
    if scores.shape != (len(prep.layout),) or not torch.isfinite(scores).all():
        raise RuntimeError(f"initializer '{config.init.name}' returned invalid scores {tuple(scores.shape)}")
    # every rank starts from rank 0's scores, bit for bit
    return ranks.broadcast(scores.to(torch.float64), "sharing the initial scores")


def to_probabilities(config: RunConfig, prep: Prepared, scores: torch.Tensor, rate: float) -> torch.Tensor:
    from pgprune_core.initializers.transforms import score_const, sigmoid_norm

    free = ~prep.protected
    budget = make_budget(config, prep.layout, rate, prep.protected)
    if config.init.transform == "score-const":
        return score_const(scores, budget.final_mask, config.init.const)
    return sigmoid_norm(scores, prep.layout, 1.0 - rate, free)


def warn_short_run(config: RunConfig, optimises: bool, reporter: Reporter) -> None:
    """A run far shorter than the docs recommend can end below its initializer."""
    steps = config.training.steps
    if optimises and steps is not None and steps < RECOMMENDED_STEPS // 5:
        reporter.message(
            f"warning: --steps {steps} is far below the ~{RECOMMENDED_STEPS:,} steps the docs "
            f"recommend (docs/user-guide.md); the mask may end worse than its initializer's"
        )


def run_pipeline(config: RunConfig, reporter: Reporter | None = None, *,
                 resume: Path | None = None, registry: Registry | None = None) -> RunResult:
    """Run (or, with ``resume``, continue) one pruning run; returns its metrics.

    Under ``torchrun`` every rank calls this with the same configuration: the ranks share
    each step's forward passes and rank 0 alone reads and writes the run directory,
    reports progress and finishes the run (surgery, evaluation); the other ranks return
    after the last step with empty metrics (docs/scaling.md)."""
    config = apply_demo_defaults(config)
    threads = torch.get_num_threads()
    if config.training.threads is not None:
        torch.set_num_threads(config.training.threads)
    ranks = from_environment(config.model.device, config.training.collective_timeout_s)
    try:
        reporter = (reporter or SilentReporter()) if ranks.is_main else SilentReporter()
        return _run(config, reporter, resume, registry or get_registry(), ranks)
    finally:
        torch.set_num_threads(threads)
        ranks.close()


@dataclass
class _Clock:
    """Wall time of a run over all its sessions (``previous``: the sessions before this)."""

    start: float
    previous: float = 0.0
    #: still setting up (nothing worth keeping computed yet)
    setting_up: bool = True

    def wall(self) -> float:
        return round(self.previous + (time.perf_counter() - self.start), 3)


def _run(config: RunConfig, reporter: Reporter, resume: Path | None, registry: Registry,
         ranks: Ranks = SINGLE) -> RunResult:
    from pgprune_core.run.checks import check_launch, preflight

    clock = _Clock(time.perf_counter())
    if resume is None:
        preflight(config, registry)  # cheap mistakes, before anything is created or loaded
    check_launch(config, ranks)
    ranks.agree(config_digest(config), "configuration")
    run = RunDir(resume if resume is not None else Path(config.output.dir or default_run_dir(config)))

    def open_run() -> tuple[bool, float, dict[str, Any] | None]:
        """(created, wall time of earlier sessions, the metrics of a finished run)"""
        created = resume is None and not run.path.exists()
        if resume is None:
            run.create(config, overwrite=config.output.overwrite)
            return created, 0.0, None
        marker = run.read_marker()
        done = marker.get("status") == "done" and run.metrics.exists()
        return created, float(marker.get("wall_s", 0.0)), run.read_metrics() if done else None

    created, clock.previous, finished = ranks.on_main(open_run, "opening the run directory")
    if finished is not None:
        reporter.message(f"{run.path} is already finished; nothing to do")
        return RunResult(run.path, finished)
    try:
        return _run_in(config, reporter, resume, registry, run, clock, ranks)
    except (Interrupted, KeyboardInterrupt):
        if ranks.is_main:
            run.mark_status("interrupted", clock.wall())
        raise
    except DistributedError as exc:
        # torchrun ends the surviving ranks with SIGTERM once one has died: finish saying
        # where the run stands first
        _ignore_sigterm()
        if ranks.is_main and run.marker.exists():
            run.mark_status("failed", clock.wall())
        raise DistributedError(f"{exc}; {_resume_hint(run, ranks)}") from exc
    except BaseException as exc:
        if not ranks.is_main:
            raise
        user_mistake = clock.setting_up and isinstance(exc, PgpruneError)
        if user_mistake and created:
            # a set-up mistake in a directory this call created: leave nothing behind that
            # would block the corrected command
            import shutil

            shutil.rmtree(run.path, ignore_errors=True)
        elif user_mistake and resume is not None:
            pass  # the run is as it was; a corrected resume continues it
        elif run.marker.exists():
            run.mark_status("failed", clock.wall())
        raise


def _ignore_sigterm() -> None:
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _resume_hint(run: RunDir, ranks: Ranks) -> str:
    """Where a failed run of several processes stands (rank 0 reads the checkpoint)."""
    if not ranks.is_main:
        return f"rank 0 reports where {run.path} stands"
    if not run.checkpoint.exists():
        return f"{run.path} holds no checkpoint yet: start the run again"
    try:
        step = run.load_checkpoint().state.step
    except PgpruneError:
        return f"{run.checkpoint} cannot be read: start the run again"
    return (f"the checkpoint of step {step} is saved; continue with: "
            f"{ranks.launch(f'pgprune resume {run.path}')}")


def _run_in(config: RunConfig, reporter: Reporter, resume: Path | None, registry: Registry,
            run: RunDir, clock: _Clock, ranks: Ranks = SINGLE) -> RunResult:
    from pgprune_core.run.checks import check_loaded_model, check_rate_leaves_units

    digest = config_digest(config)
    torch.manual_seed(config.training.seed)
    if config.training.schedule == "random-progressive" and config.init.name != "random":
        reporter.message(
            f"note: Random-Progressive starts from the initializer's scores ('{config.init.name}');"
            " the paper's Random-Progressive starts from random ones (--init random)"
        )

    prep = prepare(config, registry, reporter, ranks)
    check_rate_leaves_units(config, prep)
    check_loaded_model(config, prep, registry)
    model, tokenizer = prep.loaded.model, prep.loaded.tokenizer

    # dense metrics (saved, so a resumed run does not measure them again); rank 0 measures
    # them while the other ranks wait
    def dense_metrics() -> dict[str, Any]:
        saved = run.read_dense()
        if saved is not None:
            return saved
        if not config.evaluation.dense:
            return {"params": sum(p.numel() for p in model.parameters())}
        measured = evaluate_dense(config, prep, registry, reporter)
        run.write_dense(measured)
        return measured

    dense = ranks.on_main(dense_metrics, "evaluating the dense model")

    estimator = registry.cls("estimator", config.estimator.name)(config.estimator)
    warn_short_run(config, estimator.optimises, reporter)
    projector = registry.cls("projector", config.projector.name)(config.projector)
    from pgprune_core.model.masking import LossOracle

    oracle = LossOracle(model, prep.structure, prep.layout, prep.granularities,
                        max_rows=config.training.max_rows,
                        objective=config.training.objective, ranks=ranks,
                        skip_pruned=config.training.skip_pruned)

    def read_checkpoint() -> Any:
        if resume is None or not run.checkpoint.exists():
            return None
        saved = run.load_checkpoint()
        if saved.config_digest != digest:
            raise RunDirError(f"{run.checkpoint} belongs to another configuration than {run.config}")
        if saved.probs.shape != (len(prep.layout),):
            raise RunDirError(f"{run.checkpoint} does not match the model's {len(prep.layout)} units")
        return saved

    checkpoint = ranks.on_main(read_checkpoint, "reading the checkpoint")
    if checkpoint is not None:
        # a killed session wrote no wall time: at least the optimisation time it saved passed
        clock.previous = max(clock.previous, float(checkpoint.state.optimize_s))

    tokens = ranks.on_main(lambda: calibration_tokens(config, tokenizer, reporter),
                           "tokenizing the calibration corpus")
    stream = build_stream(config, tokens, config.training.steps if estimator.optimises else 0)

    with DevicePeaks([prep.device, *parameter_devices(model)]) as peaks:
        # initial scores (saved: random-progressive and resume reuse them); every rank
        # computes its share of a calibration-based initializer
        scores = ranks.on_main(run.read_scores, "reading the initial scores")
        if scores is None:
            scores = initial_scores(config, prep, tokens, oracle, registry, reporter, ranks)
            ranks.on_main(lambda: run.write_scores(scores), "saving the initial scores")
        clock.setting_up = False

        state = LoopState()
        if estimator.optimises:
            stages = plan_stages(config, prep, stream.steps_per_epoch)
            generator = torch.Generator().manual_seed(config.training.seed)
            if checkpoint is not None:
                policy = BernoulliPolicy(checkpoint.probs.to(torch.float64), fixed=checkpoint.fixed)
                generator.set_state(checkpoint.generator_state)
                state = checkpoint.state
                ranks.on_main(lambda: run.truncate_log(state.step), "truncating the log")
                reporter.phase(f"resuming at step {state.step} of {sum(s.steps for s in stages)}")
            else:
                s0 = to_probabilities(config, prep, scores, stages[0].rate)
                policy = BernoulliPolicy(s0, fixed=prep.protected)
                ranks.on_main(run.clear_log, "clearing the log")
            if not state.finished:
                loop = OptimisationLoop(
                    policy=policy, estimator=estimator, projector=projector, stages=stages,
                    batch_at=stream.batch, oracle=oracle, generator=generator,
                    sink=run if ranks.is_main else DiscardingSink(run.path),
                    config_digest=digest, checkpoint_every=config.training.checkpoint_every,
                    log_every=config.training.log_every, reporter=reporter,
                    snapshot_every=config.training.snapshot_every, ranks=ranks,
                )
                state = loop.run(state, estimator_state=checkpoint.estimator if checkpoint else None)
            final_scores = policy.probs
        else:
            final_scores = scores
            state.finished = True
    peak = peaks.meter(prep.device)
    if not ranks.is_main:
        # the steps are done; rank 0 alone cuts, saves and evaluates the model
        return RunResult(run.path, {})
    keep = prep.budget.final_mask(final_scores)
    run.write_marker(status="optimised")

    pruning = finalize_model(config, prep, keep, final_scores, run, reporter)
    pruned = evaluate(config, model, tokenizer, "pruned", registry, reporter, reference=dense,
                      model_path=run.model if config.output.save_model else None)
    wall = clock.wall()
    metrics = {
        "dense": dense,
        "pruned": pruned,
        "pruning": pruning,
        "run": {
            "steps": state.step,
            "forward_passes": state.forward_passes,
            "backward_passes": state.backward_passes,
            "skipped_steps": state.skipped_steps,
            "optimize_s": round(state.optimize_s, 3),
            "wall_s": round(wall, 3),
            "peak_memory_bytes": int(peak.peak_bytes),
            # what was held when the measured block began (model, data): the peak minus it
            # is what the optimisation itself added (``pgprune compare`` reports both)
            "peak_memory_start_bytes": int(peak.start_bytes),
            "peak_memory_method": peak.method,
            # every CUDA device holding the model's weights (tensors) and "cpu" (process RSS)
            "peak_memory_by_device": peaks.peak_bytes,
            "device": str(prep.device),
            "world_size": ranks.world_size,
            "adapter": prep.adapter_name,
            "estimator": config.estimator.name,
            "init": config.init.name,
            "seed": config.training.seed,
        },
    }
    write_outputs(config, prep, keep, metrics, run)
    run.write_marker(status="done", wall_s=round(wall, 3))
    reporter.message(summary(metrics, run.path))
    return RunResult(run.path, metrics)


def finalize_model(config: RunConfig, prep: Prepared, keep: torch.Tensor, probs: torch.Tensor,
                   run: RunDir, reporter: Reporter) -> dict[str, Any]:
    """Cut the model physically, save it and ``masks.json``; return the pruning summary."""
    from pgprune_core.model.accounting import removed_params
    from pgprune_core.model.surgery import prune_model

    model = prep.loaded.model
    params_before = sum(p.numel() for p in model.parameters())
    prunable = int(prep.layout.cost.sum())
    removed_expected = removed_params(prep.layout, keep)
    masks = masks_document(config, prep, keep, probs)
    run.write_masks(masks)
    reporter.phase("removing pruned units")
    prune_model(prep.structure, prep.layout, prep.granularities, keep)
    params_after = sum(p.numel() for p in model.parameters())
    if params_before - params_after != removed_expected:
        raise RuntimeError(
            f"surgery removed {params_before - params_after} parameters, accounting expected "
            f"{removed_expected}"
        )
    if config.output.save_model:
        reporter.phase(f"saving the pruned model to {run.model}")
        exported = run.save_model(
            model, prep.loaded.tokenizer, config.output.format, adapter_name=prep.adapter_name,
            base_model=prep.loaded.source.name_or_path,
            extra={"prune_rate": config.pruning.prune_rate, "budget": config.pruning.budget,
                   "granularity": list(config.pruning.granularity),
                   "estimator": config.estimator.name, "init": config.init.name},
        )
        for note in exported.notes:
            reporter.message(f"note: {note}")
    kinds = prep.layout.kinds
    return {
        "rate": config.pruning.prune_rate,
        "budget": config.pruning.budget,
        "granularity": kinds,
        "protect_layers": list(config.pruning.protect_layers),
        "prunable_params": prunable,
        "params_removed": int(removed_expected),
        "prunable_params_removed": removed_expected / prunable if prunable else 0.0,
        "total_params_removed": removed_expected / params_before,
        "units_kept": {k: int(v.sum()) for k, v in prep.layout.split(keep).items()},
        "units_total": {k: len(prep.layout[k]) for k in kinds},
    }


def masks_document(config: RunConfig, prep: Prepared, keep: torch.Tensor, probs: torch.Tensor) -> dict[str, Any]:
    """``masks.json``: per kind, the units' layer and index, keep flags and probabilities."""
    doc: dict[str, Any] = {
        "format": "pgprune-masks/1",
        "rate": config.pruning.prune_rate,
        "budget": config.pruning.budget,
        "n_layers": prep.n_layers,
        "kinds": {},
    }
    keep_parts = prep.layout.split(keep)
    prob_parts = prep.layout.split(probs.to(torch.float64))
    for unit_set in prep.layout:
        doc["kinds"][unit_set.kind] = {
            "layer": unit_set.layer.tolist(),
            "index": unit_set.index.tolist(),
            "cost": unit_set.cost.tolist(),
            "keep": [int(v) for v in keep_parts[unit_set.kind].tolist()],
            "probs": [round(float(v), 6) for v in prob_parts[unit_set.kind].tolist()],
        }
    return doc


def write_outputs(config: RunConfig, prep: Prepared, keep: torch.Tensor, metrics: dict[str, Any],
                  run: RunDir) -> None:
    run.write_metrics(metrics)
    run.write_plots(
        kinds=[prep.layout.kinds[i] for i in prep.layout.kind_ids().tolist()],
        layers=prep.layout.layer.tolist(),
        keep=keep.tolist(),
        n_layers=prep.n_layers,
        title=f"{config.estimator.name}, {config.pruning.prune_rate:.0%} {config.pruning.budget}",
    )
    run.write_report(metrics, config)


def summary(metrics: dict[str, Any], path: Path) -> str:
    dense, pruned = metrics["dense"], metrics["pruned"]
    lines = [f"done: {path}"]
    lines.append(
        f"  params {dense['params']:,} -> {pruned['params']:,} "
        f"({1 - pruned['params'] / dense['params']:.1%} removed)"
    )
    for name, value in (pruned.get("ppl") or {}).items():
        before = (dense.get("ppl") or {}).get(name)
        lines.append(f"  perplexity {name}: {before:.2f} -> {value:.2f}" if before else
                     f"  perplexity {name}: {value:.2f}")
    run = metrics["run"]
    lines.append(f"  {run['steps']} steps, optimise {run['optimize_s']:.1f}s, wall {run['wall_s']:.1f}s")
    run_dir = RunDir(path)
    lines.append(f"  model: {run_dir.model}  report: {run_dir.report}  plot: {run_dir.sparsity_plot}")
    return "\n".join(lines)
