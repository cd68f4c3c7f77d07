"""The processes of one run, their shares of the work and the collectives between them.

:data:`SINGLE` is the one-process run: every method is the identity and torch.distributed is
never touched.  :func:`from_environment` returns the :class:`Ranks` of a ``torchrun``
launch (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``), joining
the process group with a timeout, so that a process that dies or stalls ends the others
with a :class:`~pgprune_core.errors.DistributedError` instead of a hang.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from pgprune_core.errors import DistributedError, EchoedError, PgpruneError, first_line

T = TypeVar("T")

#: what ``torchrun`` sets in every process it starts
TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def share(n: int, rank: int, world_size: int) -> slice:
    """Rank ``rank``'s contiguous share of ``n`` items: sizes differ by at most one, the
    first ``n % world_size`` ranks taking one more; a share may be empty."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run: ``rank`` of ``world_size`` (``local_rank`` on its node).

    ``device`` is where collectives exchange tensors (the CPU for gloo, this rank's GPU for
    NCCL); ``timeout_s`` bounds every collective.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    #: processes on this node (``--nproc-per-node``)
    local_world_size: int = 1
    backend: str | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    timeout_s: float | None = None

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that reads and writes the run directory."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def launch(self, command: str) -> str:
        """``command`` as this run would be started again: under ``torchrun`` when it is."""
        if not self.distributed:
            return command
        return f"torchrun --nproc-per-node {self.local_world_size} $(which pgprune) {command.removeprefix('pgprune ')}"

    def share(self, n: int) -> slice:
        """This rank's contiguous share of ``n`` items (see :func:`share`)."""
        return share(n, self.rank, self.world_size)

    # -- collectives ----------------------------------------------------------------------
    def _collective(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except DistributedError:
            raise
        except (RuntimeError, ValueError, ConnectionError) as exc:
            raise DistributedError(
                f"rank {self.rank} of {self.world_size}: {what} failed ({first_line(exc)}); "
                f"another process of the run has died or stalled for more than "
                f"{self.timeout_s:g} s (training.collective_timeout_s)"
            ) from exc

    def gather_rows(self, local: torch.Tensor, n_rows: int) -> torch.Tensor:
        """All ranks' shares of ``n_rows`` rows, in rank order: ``local`` holds this rank's
        rows ``share(n_rows)`` (``[len(share), ...]``); the result ``[n_rows, ...]`` is on
        ``local``'s device and identical on every rank."""
        if not self.distributed:
            return local
        import torch.distributed as dist

        sizes = [len(range(n_rows)[share(n_rows, r, self.world_size)]) for r in
                 range(self.world_size)]
        if local.shape[0] != sizes[self.rank]:
            raise ValueError(f"rank {self.rank} holds {local.shape[0]} rows of its share of "
                             f"{sizes[self.rank]}")
        width = max(sizes)
        padded = torch.zeros((width, *local.shape[1:]), dtype=local.dtype, device=self.device)
        padded[: local.shape[0]] = local.detach().to(self.device)
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        self._collective("gathering the step's losses",
                         lambda: dist.all_gather(parts, padded))
        rows = torch.cat([part[:size] for part, size in zip(parts, sizes, strict=True)])
        return rows.to(local.device)

    def all_reduce_sum(self, tensor: torch.Tensor, what: str = "summing statistics") -> torch.Tensor:
        """The sum of ``tensor`` over all ranks (a new tensor on ``tensor``'s device)."""
        if not self.distributed:
            return tensor
        import torch.distributed as dist

        total = tensor.detach().to(self.device, copy=True)
        self._collective(what, lambda: dist.all_reduce(total, op=dist.ReduceOp.SUM))
        return total.to(device=tensor.device, dtype=tensor.dtype)

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on at least one (a stop request)."""
        if not self.distributed:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], dtype=torch.float64)
        return bool(self.all_reduce_sum(value, "agreeing on a stop")[0] > 0)

    def broadcast(self, value: T | None, what: str = "sharing rank 0's results") -> T:
        """Rank 0's ``value`` on every rank (any picklable object; tensors arrive on the CPU)."""
        if not self.distributed:
            return value  # type: ignore[return-value]
        import torch.distributed as dist

        box: list[Any] = [value if self.is_main else None]
        self._collective(what, lambda: dist.broadcast_object_list(box, src=0))
        return box[0]  # type: ignore[no-any-return]

    def agree(self, value: str, what: str) -> None:
        """Refuse a launch whose processes disagree on ``value`` (e.g. the configuration)."""
        if not self.distributed:
            return
        main = self.broadcast(value, f"comparing the {what}")
        disagrees = self.any(main != value)
        if disagrees:
            raise DistributedError(
                f"the processes of this launch were given different {what}s; start every "
                f"rank with the same command"
            )

    def on_main(self, fn: Callable[[], T], what: str) -> T:
        """``fn()`` run by rank 0 alone (reading or writing the run directory), its result
        handed to every rank.  When it raises a :class:`PgpruneError` on rank 0, the other
        ranks raise an :class:`EchoedError` with the same message and exit status (rank 0
        raises the original), so that no rank waits for a result that will not come."""
        if not self.distributed:
            return fn()
        result: Any = None
        failure: tuple[str, int] | None = None
        error: BaseException | None = None
        if self.is_main:
            try:
                result = fn()
            except PgpruneError as exc:
                failure, error = (str(exc), exc.exit_code), exc
            except BaseException as exc:
                failure, error = (f"rank 0 failed while {what}: {first_line(exc)}", 1), exc
        result, failure = self.broadcast((result, failure), what)
        if error is not None:
            raise error
        if failure is not None:
            raise EchoedError(*failure)
        return result  # type: ignore[no-any-return]

    def barrier(self, what: str = "waiting for the other ranks") -> None:
        if not self.distributed:
            return
        import torch.distributed as dist

        self._collective(what, lambda: dist.barrier())

    def close(self) -> None:
        """Leave the process group (when this object joined it)."""
        if self.distributed:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


#: the one-process run
SINGLE = Ranks()


def launched_by_torchrun() -> bool:
    """Whether this process was started by ``torchrun`` with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def from_environment(device: str, timeout_s: float) -> Ranks:
    """:data:`SINGLE`, or this process's :class:`Ranks` in a ``torchrun`` launch, after
    joining the process group (NCCL for a CUDA ``device``, gloo otherwise)."""
    if not launched_by_torchrun():
        return SINGLE
    missing = [name for name in TORCHRUN_VARIABLES if name not in os.environ]
    if missing:
        raise DistributedError(
            f"WORLD_SIZE is set but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
            f"not; launch data-parallel runs with torchrun"
        )
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    cuda = device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise DistributedError(f"model.device is {device!r} but CUDA is not available")
    backend = "nccl" if cuda else "gloo"
    comm_device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(comm_device)
    if not dist.is_initialized():
        try:
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
        except (RuntimeError, ValueError, ConnectionError) as exc:
            raise DistributedError(
                f"rank {rank} of {world} could not join the process group at "
                f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} ({first_line(exc)})"
            ) from exc
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    return Ranks(rank=rank, world_size=world, local_rank=local_rank,
                 local_world_size=local_world, backend=backend,
                 device=comm_device, timeout_s=timeout_s)
