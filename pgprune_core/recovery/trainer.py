"""The training loop of recovery fine-tuning: AdamW on the LoRA parameters, a warmup then
cosine or constant learning rate, gradient accumulation, resumable bit for bit.

A checkpoint (``trainer.pt``, written by :class:`~pgprune_core.run.rundir.FinetuneDir`)
holds the adapters, the optimiser and scheduler states, torch's generator state (dropout)
and the step; the data position is the step itself (:meth:`Examples.indices` is a pure
function of it), so a resumed fine-tune takes exactly the steps an uninterrupted one takes.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from pgprune_core.errors import Interrupted
from pgprune_core.optim.loop import graceful_stop
from pgprune_core.recovery.config import FinetuneConfig
from pgprune_core.recovery.data import IGNORE, Examples
from pgprune_core.recovery.lora import adapter_state, load_adapter_state
from pgprune_core.report.progress import Reporter


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """The learning-rate multiplier of optimiser step ``step`` (0-based)."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def objective_terms(logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor | None,
                    temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Summed (not averaged) next-token cross-entropy and KL(teacher || student) over the
    target positions, and their count.  ``logits`` [b, t, v] predict ``labels`` shifted by
    one; the KL is that of the temperature-softened distributions times ``temperature``²
    (zero when no teacher is given)."""
    targets = labels[:, 1:]
    mask = targets != IGNORE
    student = logits[:, :-1][mask].float()
    ce = F.cross_entropy(student, targets[mask], reduction="sum")
    if teacher_logits is None:
        return ce, ce.new_zeros(()), int(mask.sum())
    teacher = teacher_logits[:, :-1][mask].float()
    log_s = F.log_softmax(student / temperature, dim=-1)
    log_t = F.log_softmax(teacher / temperature, dim=-1)
    kl = (log_t.exp() * (log_t - log_s)).sum() * temperature**2
    return ce, kl, int(mask.sum())


class TrainSink(Protocol):
    """Where the loop's checkpoints and log go (the fine-tune directory)."""

    @property
    def path(self) -> Any: ...

    def save_checkpoint(self, payload: dict[str, Any]) -> None: ...

    def append_record(self, record: dict[str, Any]) -> None: ...


@dataclass
class TrainState:
    step: int = 0
    train_s: float = 0.0
    tokens_seen: int = 0
    first_loss: float | None = None
    last_loss: float | None = None


def total_steps(config: FinetuneConfig, n_examples: int) -> int:
    training = config.training
    if training.steps is not None:
        return training.steps
    per_step = training.batch_size * training.grad_accum
    return max(1, math.ceil((training.epochs or 1.0) * n_examples / per_step))


class Trainer:
    """One fine-tune's optimisation; :meth:`run` from a fresh or a restored state."""

    def __init__(self, config: FinetuneConfig, model: Any, teacher: Any, examples: Examples,
                 sink: TrainSink, digest: str, reporter: Reporter) -> None:
        self.config = config
        self.model = model
        self.teacher = teacher
        self.examples = examples
        self.sink = sink
        self.digest = digest
        self.reporter = reporter
        self.total = total_steps(config, len(examples))
        training = config.training
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=training.lr,
                                           weight_decay=training.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: lr_factor(s, self.total, training.warmup_steps, training.schedule))
        self.device = next(model.parameters()).device

    # checkpoints
    def payload(self, state: TrainState) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "step": state.step, "digest": self.digest, "adapter": adapter_state(self.model),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "rng": torch.get_rng_state(), "train_s": state.train_s,
            "tokens_seen": state.tokens_seen, "first_loss": state.first_loss,
            "last_loss": state.last_loss,
        }
        if torch.cuda.is_available():
            payload["cuda_rng"] = torch.cuda.get_rng_state_all()
        return payload

    def restore(self, payload: dict[str, Any]) -> TrainState:
        load_adapter_state(self.model, payload["adapter"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        torch.set_rng_state(payload["rng"])
        if "cuda_rng" in payload and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(payload["cuda_rng"])
        return TrainState(step=int(payload["step"]), train_s=float(payload["train_s"]),
                          tokens_seen=int(payload["tokens_seen"]),
                          first_loss=payload.get("first_loss"), last_loss=payload.get("last_loss"))

    # one step
    def _micro_batches(self, step: int) -> list[dict[str, torch.Tensor]]:
        training = self.config.training
        size = training.batch_size
        return [self.examples.batch((step * training.grad_accum + k) * size, size, training.seed)
                for k in range(training.grad_accum)]

    def step(self, step: int) -> dict[str, float]:
        objective = self.config.objective
        weight = objective.weight
        batches = self._micro_batches(step)
        n_targets = sum(int((b["labels"][:, 1:] != IGNORE).sum()) for b in batches)
        self.optimizer.zero_grad(set_to_none=True)
        ce_total = kl_total = 0.0
        for batch in batches:
            batch = {k: v.to(self.device) for k, v in batch.items()}
            logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                use_cache=False).logits
            teacher_logits = None
            if weight > 0:
                with torch.no_grad():
                    teacher_logits = self.teacher(input_ids=batch["input_ids"],
                                                  attention_mask=batch["attention_mask"],
                                                  use_cache=False).logits
            ce, kl, _ = objective_terms(logits, batch["labels"], teacher_logits,
                                        objective.temperature)
            loss = ((1.0 - weight) * ce + weight * kl) / max(1, n_targets)
            loss.backward()
            ce_total += float(ce.detach())
            kl_total += float(kl.detach())
        grad_norm = None
        if self.config.training.max_grad_norm is not None:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.config.training.max_grad_norm))
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        ce_mean, kl_mean = ce_total / max(1, n_targets), kl_total / max(1, n_targets)
        return {"loss": (1.0 - weight) * ce_mean + weight * kl_mean, "ce": ce_mean,
                "kl": kl_mean if weight > 0 else None, "lr": lr, "grad_norm": grad_norm,
                "tokens": n_targets}

    def run(self, state: TrainState) -> TrainState:
        training = self.config.training
        self.model.train()
        if self.teacher is not None:
            self.teacher.eval()
        self.reporter.loop_start(self.total, "fine-tuning", completed=state.step)
        try:
            with graceful_stop() as stop:
                while state.step < self.total:
                    start = time.perf_counter()
                    stats = self.step(state.step)
                    state.step += 1
                    state.train_s += time.perf_counter() - start
                    state.tokens_seen += int(stats["tokens"])
                    state.last_loss = stats["loss"]
                    if state.first_loss is None:
                        state.first_loss = stats["loss"]
                    record = {"step": state.step, **{k: v for k, v in stats.items() if v is not None},
                              "time_s": round(state.train_s, 3)}
                    self.reporter.loop_update(state.step, record)
                    if state.step % training.log_every == 0 or state.step == self.total:
                        self.sink.append_record(record)
                    if state.step % training.checkpoint_every == 0 or state.step == self.total or stop:
                        self.sink.save_checkpoint(self.payload(state))
                    if stop and state.step < self.total:
                        raise Interrupted(
                            f"stopped by signal {stop.signal} after step {state.step} of "
                            f"{self.total}; the checkpoint is saved, continue with: "
                            f"pgprune resume {self.sink.path}")
        finally:
            self.reporter.loop_end()
            self.model.eval()
        return state
