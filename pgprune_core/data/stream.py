"""Calibration batches as a pure function of (seed, position).

The optimisation loop checkpoints only its position ``p``; :meth:`CalibrationStream.batch`
rebuilds the batch at ``p`` from the seed alone, so a resumed run sees exactly the data an
uninterrupted run would have seen, with no iterator state to save.

Segments (the paper: 120k segments of 128 tokens from C4, Sect. 4.1):

- ``"random"``: ``n_segments`` windows of ``seq_len`` tokens at offsets drawn uniformly
  from the whole stream with the run's seed (windows may overlap; a corpus smaller than
  ``n_segments * seq_len`` tokens is reused rather than refused).
- ``"sequential"``: the first ``n_segments`` non-overlapping windows of the stream.

An epoch visits every segment once.  The visiting order is a permutation drawn from the
seed and the epoch number (a new order each epoch) for ``"random"``, and the stream order
for ``"sequential"`` unless ``shuffle=True``.  Batches have a fixed shape ``[B, T]``:
when ``n_segments`` is not a multiple of ``batch_size`` the last, partial batch of each
epoch is dropped (``steps_per_epoch = n_segments // batch_size``); with shuffling, the
dropped segments differ from epoch to epoch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import torch

from pgprune_core.errors import ConfigError, DataError
from pgprune_core.run.seeding import derived_seed

Sampling = Literal["random", "sequential"]


class CalibrationStream:
    """Fixed-shape calibration batches ``int64 [batch_size, seq_len]`` from one token stream.

    ``n_segments=None`` means as many segments as non-overlapping windows fit in the stream.
    ``name`` only labels error messages.
    """

    def __init__(
        self,
        tokens: torch.Tensor,
        seq_len: int,
        batch_size: int,
        n_segments: int | None = None,
        seed: int = 0,
        sampling: Sampling = "random",
        *,
        shuffle: bool | None = None,
        name: str = "calibration text",
    ) -> None:
        if tokens.dim() != 1 or tokens.is_floating_point():
            raise ValueError(f"tokens must be a 1-D integer tensor, got {tuple(tokens.shape)} {tokens.dtype}")
        if sampling not in ("random", "sequential"):
            raise ValueError(f"sampling must be 'random' or 'sequential', got {sampling!r}")
        if seq_len < 2 or batch_size < 1 or (n_segments is not None and n_segments < 1):
            raise ValueError("seq_len must be >= 2, batch_size and n_segments >= 1")
        self.tokens = tokens
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.seed = seed
        self.sampling = sampling
        self.shuffle = sampling == "random" if shuffle is None else shuffle
        total = tokens.numel()
        windows = total // seq_len
        self.n_segments = n_segments if n_segments is not None else windows
        if sampling == "sequential":
            count = max(self.n_segments, batch_size)
            needed = count * seq_len
            what = f"{count:,} non-overlapping segments of {seq_len} tokens"
        else:
            needed = batch_size * seq_len
            what = f"{batch_size} segments of {seq_len} tokens"
        if total < needed:
            raise DataError(f"{name} has {total:,} tokens; {what} need at least {needed:,}")
        if self.n_segments < batch_size:
            raise ConfigError(
                f"{self.n_segments:,} calibration segments are fewer than one batch of "
                f"{batch_size}; raise data.n_segments or lower the batch size"
            )
        if sampling == "random":
            generator = torch.Generator().manual_seed(derived_seed(seed, "offsets"))
            self.offsets = torch.randint(
                0, total - seq_len + 1, (self.n_segments,), generator=generator
            )
        else:
            self.offsets = torch.arange(self.n_segments, dtype=torch.int64) * seq_len
        self._order_epoch = -1
        self._order = torch.arange(self.n_segments)
        self._window = torch.arange(seq_len)

    @property
    def steps_per_epoch(self) -> int:
        """Full batches per epoch (a partial last batch is dropped)."""
        return self.n_segments // self.batch_size

    def __len__(self) -> int:
        return self.steps_per_epoch

    def order(self, epoch: int) -> torch.Tensor:
        """The segment indices in the order epoch ``epoch`` visits them."""
        if epoch != self._order_epoch:
            if self.shuffle:
                generator = torch.Generator().manual_seed(derived_seed(self.seed, "order", epoch))
                self._order = torch.randperm(self.n_segments, generator=generator)
            else:
                self._order = torch.arange(self.n_segments)
            self._order_epoch = epoch
        return self._order

    def batch(self, position: int) -> torch.Tensor:
        """int64 [batch_size, seq_len]: the batch at ``position`` (0, 1, ...; positions past
        the first epoch continue into the next ones)."""
        if position < 0:
            raise IndexError(f"batch position must be >= 0, got {position}")
        epoch, step = divmod(position, self.steps_per_epoch)
        index = self.order(epoch)[step * self.batch_size : (step + 1) * self.batch_size]
        starts = self.offsets[index]
        return self.tokens[starts[:, None] + self._window].to(torch.int64)

    def windows(self, epoch: int = 0) -> torch.Tensor:
        """int64 [n_segments, seq_len]: every segment, in the order epoch ``epoch`` visits
        them (the rows of that epoch's batches, with the partial last batch included)."""
        starts = self.offsets[self.order(epoch)]
        return self.tokens[starts[:, None] + self._window].to(torch.int64)

    def batches(self, start: int = 0, count: int | None = None) -> Iterator[torch.Tensor]:
        """``count`` batches from ``start`` (default: to the end of ``start``'s epoch)."""
        if count is None:
            count = self.steps_per_epoch - start % self.steps_per_epoch
        for position in range(start, start + count):
            yield self.batch(position)

    def __iter__(self) -> Iterator[torch.Tensor]:
        """One epoch from the first position."""
        return self.batches(0)
