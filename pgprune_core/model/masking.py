"""Evaluating masked models: many masks in one batched forward, no weight copied.

The policy-gradient step needs the loss of the model under ``N`` sampled masks.  Instead of
``N`` forwards (or ``N`` copies of the weights), the batch is repeated ``N`` times and every
row carries its own mask: hooks scale activations per row (channels, heads) and masked layers
become the identity per row (layers).  With hard masks the MLP and attention blocks may
instead compute only the units each row keeps, from kept weights gathered for one call
(:mod:`pgprune_core.model.sparse_forward`).  :func:`apply_masks` installs that for any
combination of granularities; :class:`LossOracle` is what estimators call: ``losses``
(forward only, under ``torch.inference_mode``) and ``loss`` (differentiable in soft masks,
for Gumbel-softmax).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from pgprune_core.interfaces import Granularity, Handle
from pgprune_core.interfaces import LossOracle as LossOracleProtocol
from pgprune_core.model.placement import input_device
from pgprune_core.model.sparse_forward import check_mode, install_skipping, is_hard
from pgprune_core.model.structure import ModelStructure, UnitLayout
from pgprune_core.parallel import SINGLE, Ranks

#: upper bound on the elements of the temporaries of one cross-entropy chunk (64 MiB fp32)
_CE_CHUNK_ELEMENTS = 1 << 24


@contextlib.contextmanager
def apply_masks(
    structure: ModelStructure,
    layout: UnitLayout,
    granularities: Mapping[str, Granularity],
    row_masks: torch.Tensor,
    skip_pruned: str = "off",
) -> Iterator[None]:
    """Within the block, forward passes of ``structure.model`` use ``row_masks``
    (``[rows, len(layout)]``, hard or soft; row ``r`` masks input row ``r``).

    Every kind of the layout installs its part; everything is removed on exit, also when
    the block raises.  All-ones parts install nothing (the dense forward, bit for bit).
    ``skip_pruned`` (``off``, ``on``, ``auto``): with hard masks, MLP and attention blocks
    compute only the units each row keeps instead of masking the others
    (:mod:`pgprune_core.model.sparse_forward`; equal within fp32 rounding).
    """
    if row_masks.dim() != 2 or row_masks.shape[1] != len(layout):
        raise ValueError(f"row_masks must be [rows, {len(layout)}], got {list(row_masks.shape)}")
    check_mode(skip_pruned)
    parts = layout.split(row_masks)
    handles: list[Handle] = []
    try:
        rest = {kind: (layout[kind], parts[kind]) for kind in layout.kinds}
        if skip_pruned != "off" and is_hard(row_masks):
            skipping, rest = install_skipping(structure, layout, granularities, parts, skip_pruned)
            handles.extend(skipping)
        for kind in layout.kinds:
            units, masks = rest[kind]
            handles.extend(granularities[kind].install(structure, units, masks))
        yield
    finally:
        for handle in reversed(handles):
            handle.remove()


def token_nll_sums(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Per row, the summed next-token negative log-likelihood: ``[R, T, V], [R, T] -> [R]``.

    ``logsumexp - logit[target]`` over chunks of rows, so that no full-vocabulary copy of
    the logits (a ``log_softmax`` or a float32 up-cast) is ever held beyond one chunk.
    """
    n_rows, length, vocab = logits.shape
    targets = tokens[:, 1:].to(logits.device).unsqueeze(-1)
    step = max(1, _CE_CHUNK_ELEMENTS // max(1, (length - 1) * vocab))
    sums = []
    for start in range(0, n_rows, step):
        chunk = logits[start:start + step, :-1]
        lse = torch.logsumexp(chunk.float(), dim=-1)
        picked = chunk.gather(-1, targets[start:start + step]).squeeze(-1).float()
        sums.append((lse - picked).sum(dim=-1))
    return torch.cat(sums)


def token_kl_sums(logits: torch.Tensor, reference_logprobs: torch.Tensor) -> torch.Tensor:
    """Per row, ``sum_t KL(p_ref(. | t) || p(. | t))`` over the predicted positions:
    ``[R, T, V], [R, T-1, V] -> [R]`` (``reference_logprobs`` already log-softmaxed and
    cut to the first ``T - 1`` positions), in chunks of rows like :func:`token_nll_sums`."""
    n_rows, length, vocab = logits.shape
    step = max(1, _CE_CHUNK_ELEMENTS // max(1, (length - 1) * vocab))
    sums = []
    for start in range(0, n_rows, step):
        logp = torch.log_softmax(logits[start:start + step, :-1].float(), dim=-1)
        ref = reference_logprobs[start:start + step]
        sums.append((ref.exp() * (ref - logp)).sum(dim=(-1, -2)))
    return torch.cat(sums)


OBJECTIVES: tuple[str, ...] = ("ce", "kl")


class LossOracle(LossOracleProtocol):
    """Losses of masked models on a batch, for the estimators (implements
    :class:`pgprune_core.interfaces.LossOracle`).

    ``losses(batch [B, T], masks [N, n]) -> [N]``: per mask, the mean next-token cross-entropy
    over all ``B * (T - 1)`` predicted tokens, all masks in one forward of the batch repeated
    ``N`` times (rows mask-major: row ``r`` belongs to mask ``r // B``), split into chunks of at
    most ``max_rows`` rows when set.  ``loss`` is the same, differentiable w.r.t. soft masks.
    ``skip_pruned`` (``auto``, ``on``, ``off``; see :func:`apply_masks`) lets hard masks
    leave their pruned channels and heads uncomputed.

    ``objective="kl"`` replaces the cross-entropy by the mean per-token KL divergence of the
    masked model's next-token distribution from the dense model's (distillation): 0 for the
    dense mask on every batch, so the difficulty of a batch, which moves the cross-entropy
    of every mask alike, no longer enters the losses.  The dense distribution costs one
    forward of the batch per call (counted in ``forward_passes``).

    Under ``torchrun`` (``ranks``), each rank evaluates its contiguous share of the ``N * B``
    rows and the per-row losses are gathered: every rank returns the losses of all ``N``
    masks, those of the one-process oracle.  ``max_rows`` then bounds each rank's chunks.

    Counters (of the whole run, all ranks together): ``forward_passes`` (one per mask and batch), ``rows_evaluated`` (sequences run
    through the model) and ``backward_passes`` (estimators call :meth:`count_backward` after
    back-propagating through :meth:`loss`).
    """

    def __init__(
        self,
        model: nn.Module,
        structure: ModelStructure,
        layout: UnitLayout,
        granularities: Mapping[str, Granularity],
        max_rows: int | None = None,
        objective: str = "ce",
        ranks: Ranks = SINGLE,
        skip_pruned: str = "auto",
    ) -> None:
        if max_rows is not None and max_rows < 1:
            raise ValueError(f"max_rows must be positive, got {max_rows}")
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}; use one of {', '.join(OBJECTIVES)}")
        self.objective = objective
        self.skip_pruned = check_mode(skip_pruned)
        self.model: Any = model  # a transformers causal LM
        self.structure = structure
        self.layout = layout
        self.granularities = dict(granularities)
        self.max_rows = max_rows
        self.ranks = ranks
        self.forward_passes = 0
        self.backward_passes = 0
        self.rows_evaluated = 0
        # the weights are never trained: gradients, when asked for, flow to the masks only
        model.requires_grad_(False)

    @property
    def device(self) -> torch.device:
        """Where input ids go: the device of the input embeddings (first stage of a
        ``device_map`` model, also when its weights are offloaded)."""
        return input_device(self.model)

    def losses(self, batch: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """float32 [N]: forward only, no autograd."""
        with torch.inference_mode():
            return self._evaluate(batch, masks.detach())

    def loss(self, batch: torch.Tensor, soft_masks: torch.Tensor) -> torch.Tensor:
        """float32 [N], differentiable w.r.t. ``soft_masks`` (values in [0, 1])."""
        with torch.enable_grad():
            return self._evaluate(batch, soft_masks)

    def count_backward(self, n: int = 1) -> None:
        """Record ``n`` backward passes through the model (made by the caller)."""
        self.backward_passes += n

    def _evaluate(self, batch: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        if batch.dim() != 2 or batch.shape[1] < 2:
            raise ValueError(f"batch must be [B, T] token ids with T >= 2, got {list(batch.shape)}")
        if masks.dim() != 2 or masks.shape[1] != len(self.layout):
            raise ValueError(f"masks must be [N, {len(self.layout)}], got {list(masks.shape)}")
        n_masks, (n_seq, length) = masks.shape[0], batch.shape
        n_rows = n_masks * n_seq
        # the rows of the repeated batch (mask-major) this rank evaluates: all of them in one
        # process, a contiguous share under torchrun
        mine = self.ranks.share(n_rows)
        rows = torch.arange(n_rows)[mine]
        sequence = rows % n_seq
        tokens = batch.to(self.device)[sequence.to(self.device)]
        row_masks = masks[(rows // n_seq).to(masks.device)]
        chunk = self.max_rows or max(1, rows.numel())
        reference = lookup = None
        if self.objective == "kl":
            needed = torch.unique(sequence)
            reference = self._dense_logprobs(batch[needed.to(batch.device)])
            lookup = torch.full((n_seq,), -1, dtype=torch.int64)
            lookup[needed] = torch.arange(needed.numel())
            # one dense forward of the batch, however the ranks share it
            self.forward_passes += 1
            self.rows_evaluated += n_seq
        sums = [torch.zeros(0, dtype=torch.float32, device=masks.device)]
        for start in range(0, rows.numel(), chunk):
            part = slice(start, start + chunk)
            with apply_masks(self.structure, self.layout, self.granularities, row_masks[part],
                             self.skip_pruned):
                logits = self.model(input_ids=tokens[part], use_cache=False).logits
            if reference is None or lookup is None:
                sums.append(token_nll_sums(logits, tokens[part]).to(masks.device))
            else:
                index = lookup[sequence[part]].to(reference.device)
                sums.append(token_kl_sums(logits, reference[index]).to(masks.device))
            del logits
        self.forward_passes += n_masks
        self.rows_evaluated += n_rows
        per_row = torch.cat(sums)
        if self.ranks.distributed:
            per_row = self._gathered(per_row, masks, mine, n_rows)
        per_mask = per_row.view(n_masks, n_seq).sum(dim=1)
        return per_mask / (n_seq * (length - 1))

    def _gathered(self, local: torch.Tensor, masks: torch.Tensor, mine: slice,
                  n_rows: int) -> torch.Tensor:
        """Every rank's per-row sums, in row order.  With soft masks (autograd), this rank's
        rows keep their graph and the masks' gradient is summed over the ranks when the
        backward pass reaches it, so every rank ends with the one-process gradient."""
        rows = self.ranks.gather_rows(local.detach(), n_rows)
        if not masks.requires_grad:
            return rows
        masks.register_hook(
            lambda grad: self.ranks.all_reduce_sum(grad, "summing the masks' gradients"))
        # ``0 * masks.sum()`` links even an empty share to the graph: every rank's backward
        # reaches the hook, so every rank joins the sum
        return torch.cat([rows[:mine.start], local, rows[mine.stop:]]) + 0.0 * masks.sum()

    def _dense_logprobs(self, batch: torch.Tensor) -> torch.Tensor:
        """float32 [B, T-1, V]: the dense model's next-token log-probabilities (one
        forward of the sequences, no graph; the caller counts it)."""
        with torch.no_grad():
            logits = self.model(input_ids=batch.to(self.device), use_cache=False).logits
            return torch.log_softmax(logits[:, :-1].float(), dim=-1)
