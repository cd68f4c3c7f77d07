"""The optimisation loop: stages of steps, logging, checkpoints, graceful interruption.

A run is a list of :class:`Stage` s (one for the paper's fixed-rate schedule; one per rate
for Random-Progressive, App. A.12).  Each step takes the calibration batch at the stream
position, lets the estimator update the policy in place, logs to ``metrics.jsonl`` every
``log_every`` steps and checkpoints every ``checkpoint_every`` steps, at the end of each
stage, and when SIGINT/SIGTERM arrives (then it stops with :class:`Interrupted`).  All
randomness comes from one ``torch.Generator`` whose state is checkpointed, and batches are a
pure function of the position, so a resumed run ends with exactly the masks of an
uninterrupted one.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

import torch

from pgprune_core.errors import EchoedError, Interrupted
from pgprune_core.interfaces import Estimator, Projector, StepContext
from pgprune_core.optim.checkpoint import Checkpoint, LoopState
from pgprune_core.parallel import SINGLE, Ranks
from pgprune_core.report.progress import Reporter, SilentReporter


@dataclass
class Stage:
    """Optimise at ``rate`` for ``steps`` steps under ``constraints``."""

    rate: float
    steps: int
    constraints: list[Any]
    #: see ``StepContext.reference_steps``
    reference_steps: int | None = None


class StopRequest:
    """Set by a signal handler; checked between steps."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def __bool__(self) -> bool:
        return self.signal is not None


@contextmanager
def graceful_stop() -> Iterator[StopRequest]:
    """Turn SIGINT/SIGTERM into a request to stop after the current step."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        request.signal = signum

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class LoopSink(Protocol):
    """Where the loop's results go: the run directory (:class:`pgprune_core.run.rundir.RunDir`)
    implements it; the loop itself writes no file."""

    @property
    def path(self) -> Path:
        """The run directory (named in the message of an interrupted run)."""

    def save_checkpoint(self, checkpoint: Checkpoint) -> None:
        """Replace the checkpoint with this one (atomically)."""

    def append_record(self, record: dict[str, Any]) -> None:
        """Append one step's record to the metrics log."""

    def save_snapshot(self, probs: torch.Tensor, record: dict[str, Any]) -> None:
        """Keep the probabilities of this step (``snapshot_every``), with its record."""


class DiscardingSink:
    """The sink of the ranks other than 0 in a ``torchrun`` launch: rank 0 alone writes the
    run directory, the others compute the same steps and keep nothing."""

    def __init__(self, path: Path) -> None:
        self._path = path

    @property
    def path(self) -> Path:
        return self._path

    def save_checkpoint(self, checkpoint: Checkpoint) -> None:
        pass

    def append_record(self, record: dict[str, Any]) -> None:
        pass

    def save_snapshot(self, probs: torch.Tensor, record: dict[str, Any]) -> None:
        pass


class OptimisationLoop:
    def __init__(
        self,
        *,
        policy: Any,
        estimator: Estimator,
        projector: Projector,
        stages: list[Stage],
        batch_at: Callable[[int], torch.Tensor],
        oracle: Any,
        generator: torch.Generator,
        sink: LoopSink,
        config_digest: str,
        checkpoint_every: int,
        log_every: int,
        reporter: Reporter | None = None,
        snapshot_every: int | None = None,
        ranks: Ranks = SINGLE,
    ) -> None:
        self.policy = policy
        self.estimator = estimator
        self.projector = projector
        self.stages = stages
        self.batch_at = batch_at
        self.oracle = oracle
        self.generator = generator
        self.sink = sink
        self.config_digest = config_digest
        self.checkpoint_every = checkpoint_every
        self.log_every = log_every
        self.snapshot_every = snapshot_every
        self.reporter = reporter or SilentReporter()
        #: under torchrun, the ranks agree after every step on whether to stop
        self.ranks = ranks

    @property
    def total_steps(self) -> int:
        return sum(stage.steps for stage in self.stages)

    def checkpoint(self, state: LoopState) -> None:
        self.sink.save_checkpoint(
            Checkpoint(
                state=state,
                probs=self.policy.probs,
                fixed=self.policy.fixed,
                generator_state=self.generator.get_state(),
                estimator=self.estimator.state_dict(),
                config_digest=self.config_digest,
            ),
        )

    def run(self, state: LoopState, *, estimator_state: dict[str, Any] | None = None) -> LoopState:
        """Continue from ``state`` (a fresh one or a checkpoint's) to the end."""
        base_forward = state.forward_passes - self.oracle.forward_passes
        base_backward = state.backward_passes - self.oracle.backward_passes
        self.reporter.loop_start(self.total_steps, "optimising", completed=state.step)
        try:
            with graceful_stop() as stop:
                while state.stage < len(self.stages):
                    stage = self.stages[state.stage]

                    def project(z: torch.Tensor, stage: Stage = stage) -> torch.Tensor:
                        return self.projector.project(z, stage.constraints)

                    if state.stage_step == 0:
                        # a stage starts from the previous probabilities, made feasible
                        self.policy.probs = project(self.policy.probs)
                        self.estimator.start(self.policy, stage.steps)
                    elif estimator_state is not None:
                        self.estimator.load_state_dict(estimator_state)
                    estimator_state = None
                    while state.stage_step < stage.steps:
                        batch = self.batch_at(state.position)
                        started = time.perf_counter()
                        stats = self.estimator.step(
                            StepContext(
                                policy=self.policy,
                                batch=batch,
                                oracle=self.oracle,
                                project=project,
                                step=state.stage_step,
                                total_steps=stage.steps,
                                generator=self.generator,
                                reference_steps=stage.reference_steps,
                            )
                        )
                        state.optimize_s += time.perf_counter() - started
                        state.step += 1
                        state.stage_step += 1
                        state.position += 1
                        state.skipped_steps += int(stats.skipped)
                        state.forward_passes = base_forward + self.oracle.forward_passes
                        state.backward_passes = base_backward + self.oracle.backward_passes
                        record = self._record(state, stage, stats)
                        self.reporter.loop_update(state.step, record)
                        if state.step % self.log_every == 0 or state.stage_step == stage.steps:
                            self.sink.append_record(record)
                        if self.snapshot_every is not None and (
                                state.step % self.snapshot_every == 0
                                or state.step == self.total_steps):
                            self.sink.save_snapshot(self.policy.probs, record)
                        # a signal reaches the ranks at different moments: all stop after
                        # the same step, and rank 0 saves that step's checkpoint
                        stopping = self.ranks.any(bool(stop))
                        if state.step % self.checkpoint_every == 0 or stopping:
                            self.checkpoint(state)
                        if stopping:
                            how = (f"by signal {stop.signal}" if stop else
                                   "because another rank received a signal")
                            message = (
                                f"stopped {how} after step {state.step} "
                                f"of {self.total_steps}; the checkpoint is saved, continue "
                                f"with: {self.ranks.launch(f'pgprune resume {self.sink.path}')}"
                            )
                            if not self.ranks.is_main:  # rank 0 says it, once
                                raise EchoedError(message, Interrupted.exit_code)
                            raise Interrupted(message)
                    state.stage += 1
                    state.stage_step = 0
                    if state.stage == len(self.stages):
                        state.finished = True
                    self.checkpoint(state)
        finally:
            self.reporter.loop_end()
        state.finished = True
        return state

    def _record(self, state: LoopState, stage: Stage, stats: Any) -> dict[str, Any]:
        probs = self.policy.probs
        record: dict[str, Any] = {
            "step": state.step,
            "stage": state.stage,
            "rate": stage.rate,
            "loss": stats.loss if math.isfinite(stats.loss) else None,
            "baseline": stats.baseline,
            "expected_kept": float(probs.mean()),
            "skipped": bool(stats.skipped),
            "forward_passes": state.forward_passes,
            "optimize_s": round(state.optimize_s, 4),
        }
        record.update({k: float(v) for k, v in stats.extra.items()})
        return record
