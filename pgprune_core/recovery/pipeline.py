"""One recovery fine-tune end to end, resumable (``pgprune finetune``, ``pgprune resume``).

    locate the pruned model (a run directory's model/ or a model directory), its format
    and the dense model it came from -> cheap checks (files, options, module names on a
    meta-device skeleton, teacher) -> load student (+ teacher) -> perplexity before
    -> LoRA adapters (peft) -> training loop [checkpointed] -> adapters saved (adapter/)
    -> merged into the weights -> saved in the input's format (model/) -> perplexity after
    -> metrics.json, loss.png, report.md
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pgprune_core.config.sections import DataSection
from pgprune_core.errors import (
    ConfigError,
    DataError,
    Interrupted,
    ModelError,
    PgpruneError,
    RunDirError,
)
from pgprune_core.evaluation.memory import PeakMemory
from pgprune_core.interfaces import EvalContext
from pgprune_core.plugin.registry import get_registry
from pgprune_core.recovery.config import (
    FinetuneConfig,
    dump_finetune,
    finetune_digest,
    validate_finetune,
)
from pgprune_core.report.progress import Reporter, SilentReporter
from pgprune_core.run.loading import (
    directory_format,
    load_for_eval,
    model_directory,
    model_skeleton,
)
from pgprune_core.run.rundir import FinetuneDir, RunDir


@dataclass
class FinetuneResult:
    path: Path
    metrics: dict[str, Any]


@dataclass(frozen=True)
class Located:
    """The model a fine-tune starts from."""

    path: Path
    format: str
    #: the dense model recorded for it (pgprune section, or the run's config), if any
    recorded_teacher: str | None


def locate(source: str) -> Located:
    """The pruned model behind ``source`` (a run directory or a model directory)."""
    directory = model_directory(source)
    if directory is None:
        raise ModelError(f"no such run or model directory: {source}")
    fmt = directory_format(directory)
    teacher = None
    if fmt == "pgprune":
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
        teacher = config.get("pgprune", {}).get("base_model") or None
    run = RunDir(directory.parent)
    if teacher is None and directory == run.model and run.marker.is_file():
        teacher = run.load_config().model.name_or_path
    return Located(directory, fmt, teacher)


def configure(config: FinetuneConfig, source: str) -> FinetuneConfig:
    """``config`` with ``model.path``, ``model.format`` and ``model.teacher`` filled in from
    ``source``; fails (one line) when distillation needs a dense model that is unknown."""
    located = locate(source)
    teacher = config.model.teacher or located.recorded_teacher
    if config.objective.weight > 0 and teacher is None:
        raise ConfigError(
            f"objective '{config.objective.name}' distils from the dense model, but {located.path} "
            f"records none (it is not a model pruned by pgprune, nor a run's model/); pass "
            f"--teacher MODEL_DIR or the run directory")
    data = json.loads(config.model_dump_json())
    data["model"].update(path=str(located.path), format=located.format, teacher=teacher)
    return validate_finetune(data)


def _vocab_size(name: str) -> int | None:
    try:
        value = json.loads((Path(name) / "config.json").read_text(encoding="utf-8")).get("vocab_size")
    except (OSError, ValueError):
        return None
    return int(value) if isinstance(value, int) else None


def preflight(config: FinetuneConfig) -> list[str]:
    """Every check that needs no weights: the files, the device, the output directory, the
    LoRA targets (on a meta-device skeleton of the model), the teacher.  Returns the
    adapted module names (short)."""
    from pgprune_core.recovery.data import detect_format
    from pgprune_core.recovery.lora import require_peft, resolve_targets
    from pgprune_core.run.checks import check_device

    require_peft()
    detect_format(config.data)
    for name in config.data.eval_files:
        if not Path(name).expanduser().is_file():
            raise DataError(f"evaluation file not found: {name}")
    check_device(config.model.device)
    if config.output.dir is None:
        raise ConfigError("pass --out DIR (the fine-tune directory)")
    out = FinetuneDir(Path(config.output.dir))
    if out.path.exists() and not config.output.overwrite:
        if out.marker.exists():
            raise RunDirError(f"{out.path} already holds a fine-tune; continue it with "
                              f"`pgprune resume {out.path}` or pass --output.overwrite true")
        if not out.path.is_dir() or any(out.path.iterdir()):
            raise RunDirError(f"{out.path} exists and is not empty; choose another --out")
    path = Path(str(config.model.path))
    names, _ = resolve_targets(model_skeleton(path, config.model.format), config.lora.target_modules)
    teacher = config.model.teacher
    if teacher is not None and config.objective.weight > 0:
        local = Path(teacher).expanduser()
        if teacher.startswith((".", "/", "~")) and not local.exists():
            raise ModelError(f"teacher model not found: {teacher}")
        student_vocab, teacher_vocab = _vocab_size(str(path)), _vocab_size(teacher)
        if student_vocab and teacher_vocab and student_vocab != teacher_vocab:
            raise ModelError(f"the teacher's vocabulary ({teacher_vocab}) differs from the "
                             f"pruned model's ({student_vocab}); distillation needs the same one")
    return names


def measure(config: FinetuneConfig, model: Any, tokenizer: Any, label: str,
            reporter: Reporter) -> dict[str, Any]:
    """Parameters and, with evaluation files, perplexity (the perplexity evaluator)."""
    from pgprune_core.data import eval_sources

    metrics: dict[str, Any] = {"params": sum(p.numel() for p in model.parameters())}
    if not config.data.eval_files:
        return metrics
    registry = get_registry()
    cls = registry.cls("evaluator", "perplexity")
    evaluator = cls(cls.Config.model_validate({"max_windows": config.evaluation.max_windows}))
    datasets = eval_sources(DataSection(eval=[], eval_files=list(config.data.eval_files),
                                        cache_dir=config.data.cache_dir))
    reporter.phase(f"measuring the {label} model: perplexity")
    metrics.update(evaluator.evaluate(EvalContext(
        model=model, tokenizer=tokenizer, device=next(model.parameters()).device, label=label,
        datasets=datasets, seq_len=config.evaluation.seq_len,
        batch_size=config.evaluation.batch_size, seed=config.training.seed, reporter=reporter)))
    return metrics


def _load(name: str, config: FinetuneConfig) -> Any:
    return load_for_eval(name, model_directory(name), config.model.dtype, config.model.device)


def run_finetune(config: FinetuneConfig, reporter: Reporter | None = None, *,
                 resume: Path | None = None) -> FinetuneResult:
    """Fine-tune (or, with ``resume``, continue fine-tuning) as ``config`` says; ``config``
    has its model located (:func:`configure`)."""
    threads = torch.get_num_threads()
    if config.training.threads is not None:
        torch.set_num_threads(config.training.threads)
    try:
        return _run(config, reporter or SilentReporter(), resume)
    finally:
        torch.set_num_threads(threads)


def load_resumable(path: Path) -> FinetuneConfig:
    """The configuration of the fine-tune directory ``path``, checked against its digest."""
    directory = FinetuneDir(path)
    config = validate_finetune(directory.config_data())
    digest = directory.read_marker().get("digest")
    if digest and digest != finetune_digest(config):
        raise RunDirError(f"{directory.config} was edited after the fine-tune started "
                          f"(digest differs); start a new one instead")
    return config


def _run(config: FinetuneConfig, reporter: Reporter, resume: Path | None) -> FinetuneResult:
    start = time.perf_counter()
    digest = finetune_digest(config)
    if resume is None:
        preflight(config)
        directory = FinetuneDir(Path(str(config.output.dir)))
        created = not directory.path.exists()
        directory.create(dump_finetune(config), digest, overwrite=config.output.overwrite)
        previous = 0.0
    else:
        directory, created = FinetuneDir(resume), False
        marker = directory.read_marker()
        previous = float(marker.get("wall_s", 0.0))
        if marker.get("status") == "done" and directory.metrics.exists():
            reporter.message(f"{directory.path} is already finished; nothing to do")
            return FinetuneResult(directory.path, directory.read_metrics())
    wall = lambda: round(previous + time.perf_counter() - start, 3)  # noqa: E731
    try:
        return _run_in(config, reporter, directory, digest, wall)
    except (Interrupted, KeyboardInterrupt):
        directory.mark_status("interrupted", wall())
        raise
    except BaseException as exc:
        if created and isinstance(exc, PgpruneError) and not directory.checkpoint.exists():
            import shutil

            shutil.rmtree(directory.path, ignore_errors=True)
        elif directory.marker.exists():
            directory.mark_status("failed", wall())
        raise


def _run_in(config: FinetuneConfig, reporter: Reporter, directory: FinetuneDir, digest: str,
            wall: Any) -> FinetuneResult:
    from pgprune_core.recovery.data import load_examples
    from pgprune_core.recovery.lora import attach, resolve_targets
    from pgprune_core.recovery.trainer import Trainer, TrainState

    path = Path(str(config.model.path))
    reporter.phase(f"loading {path} ({config.model.format} format)")
    student = _load(str(path), config)
    model, tokenizer = student.model, student.tokenizer
    weight = config.objective.weight
    teacher_name = config.model.teacher
    saved = directory.read_before()
    wants_teacher_eval = (config.evaluation.teacher and bool(config.data.eval_files)
                          and saved is None)
    teacher = None
    if teacher_name is not None and (weight > 0 or wants_teacher_eval):
        reporter.phase(f"loading the dense model {teacher_name}")
        teacher = _load(teacher_name, config).model
    if saved is None:
        saved = {"before": measure(config, model, tokenizer, "pruned, before", reporter)}
        if teacher is not None and wants_teacher_eval:
            saved["teacher"] = measure(config, teacher, tokenizer, "dense", reporter)
        directory.write_before(saved)
    if weight == 0:
        teacher = None  # measured only: free it before training

    reporter.phase("reading the training data")
    examples = load_examples(config.data, tokenizer, reporter)
    names, targets = resolve_targets(model, config.lora.target_modules)
    if config.training.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    torch.manual_seed(config.training.seed)
    peft_model = attach(model, config.lora, targets)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    trainer = Trainer(config, peft_model, teacher, examples, directory, digest, reporter)
    state = TrainState()
    payload = directory.load_checkpoint()
    if payload is not None:
        if payload.get("digest") != digest:
            raise RunDirError(f"{directory.checkpoint} belongs to another configuration")
        state = trainer.restore(payload)
        directory.truncate_log(state.step)
        reporter.phase(f"resuming at step {state.step} of {trainer.total}")
    else:
        directory.clear_log()
    reporter.phase(f"LoRA r={config.lora.r} on {len(targets)} modules ({', '.join(names)}): "
                   f"{trainable:,} trainable parameters; {trainer.total} steps of "
                   f"{config.training.batch_size} x {config.training.grad_accum} sequences")
    device = next(peft_model.parameters()).device
    with PeakMemory(device) as peak:
        state = trainer.run(state)

    reporter.phase(f"saving the adapters to {directory.adapter}")
    directory.save_adapter(peft_model)
    merged = peft_model.merge_and_unload()
    merged.eval()
    merged.requires_grad_(False)
    if config.training.gradient_checkpointing:
        merged.gradient_checkpointing_disable()
    reporter.phase(f"saving the merged model to {directory.model}")
    directory.save_model(merged, tokenizer, config.model.format, finetune={
        "objective": config.objective.name, "steps": state.step, "lora_r": config.lora.r,
        "train_file": str(config.data.train_file)})
    after = measure(config, merged, tokenizer, "pruned, after", reporter)
    metrics: dict[str, Any] = {
        **saved,
        "after": after,
        "finetune": {
            "steps": state.step, "examples": len(examples), "data_format": examples.kind,
            "tokens_seen": state.tokens_seen, "objective": config.objective.name,
            "trainable_params": trainable, "target_modules": names,
            "first_loss": state.first_loss, "last_loss": state.last_loss,
            "train_s": round(state.train_s, 3), "wall_s": wall(),
            "peak_memory_bytes": int(peak.peak_bytes), "peak_memory_method": peak.method,
            "device": str(device), "format": config.model.format, "teacher": teacher_name,
            "seed": config.training.seed,
        },
    }
    directory.write_metrics(metrics)
    directory.write_loss_plot()
    directory.write_report(metrics, dump_finetune(config))
    directory.write_marker(status="done", wall_s=wall())
    reporter.message(summary(metrics, directory))
    return FinetuneResult(directory.path, metrics)


def summary(metrics: dict[str, Any], directory: FinetuneDir) -> str:
    lines = [f"done: {directory.path}"]
    before, after = metrics.get("before") or {}, metrics.get("after") or {}
    for name, value in (after.get("ppl") or {}).items():
        old = (before.get("ppl") or {}).get(name)
        lines.append(f"  perplexity {name}: {old:.2f} -> {value:.2f}" if old else
                     f"  perplexity {name}: {value:.2f}")
    run = metrics["finetune"]
    lines.append(f"  {run['steps']} steps, loss {run['first_loss']:.4f} -> {run['last_loss']:.4f}, "
                 f"train {run['train_s']:.1f}s, wall {run['wall_s']:.1f}s")
    lines.append(f"  model: {directory.model}  adapter: {directory.adapter}  report: {directory.report}")
    return "\n".join(lines)
