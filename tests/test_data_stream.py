"""CalibrationStream: batches are a pure function of (seed, position)."""

from __future__ import annotations

import pytest
import torch

from pgprune_core.data import CalibrationStream
from pgprune_core.errors import ConfigError, DataError

TOKENS = torch.arange(10_000)


def _starts(batch: torch.Tensor) -> list[int]:
    return batch[:, 0].tolist()


def test_random_windows_are_contiguous_and_seeded():
    stream = CalibrationStream(TOKENS, seq_len=32, batch_size=4, n_segments=40, seed=7)
    batch = stream.batch(3)
    assert batch.shape == (4, 32) and batch.dtype == torch.int64
    assert torch.equal(batch - batch[:, :1], torch.arange(32).expand(4, 32))
    again = CalibrationStream(TOKENS, seq_len=32, batch_size=4, n_segments=40, seed=7)
    assert torch.equal(again.batch(3), batch)
    other = CalibrationStream(TOKENS, seq_len=32, batch_size=4, n_segments=40, seed=8)
    assert not torch.equal(other.batch(3), batch)


def test_batch_is_independent_of_call_history():
    a = CalibrationStream(TOKENS, seq_len=16, batch_size=2, n_segments=10, seed=1)
    b = CalibrationStream(TOKENS, seq_len=16, batch_size=2, n_segments=10, seed=1)
    late = b.batch(13)  # epoch 2 first, then back to epoch 0
    b.batch(0)
    seen = list(a.batches(0, 14))
    assert torch.equal(seen[13], late)
    assert torch.equal(seen[0], b.batch(0))


def test_epoch_visits_every_segment_once_in_a_new_order():
    stream = CalibrationStream(TOKENS, seq_len=16, batch_size=4, n_segments=40, seed=0)
    assert stream.steps_per_epoch == len(stream) == 10
    epoch0 = [s for batch in stream for s in _starts(batch)]
    epoch1 = [s for batch in stream.batches(10) for s in _starts(batch)]
    assert sorted(epoch0) == sorted(stream.offsets.tolist()) == sorted(epoch1)
    assert epoch0 != epoch1


def test_partial_last_batch_is_dropped():
    stream = CalibrationStream(TOKENS, seq_len=16, batch_size=4, n_segments=10, seed=0)
    assert stream.steps_per_epoch == 2
    assert len(list(stream)) == 2


def test_windows_are_every_segment_in_the_epochs_batch_order():
    stream = CalibrationStream(TOKENS, seq_len=16, batch_size=4, n_segments=10, seed=0)
    windows = stream.windows(1)
    assert windows.shape == (10, 16) and windows.dtype == torch.int64
    # the full batches of epoch 1, then the rows the partial batch would have held
    assert torch.equal(windows[:8], torch.cat(list(stream.batches(2, 2))))
    assert sorted(_starts(windows)) == sorted(stream.offsets.tolist())


def test_sequential_windows_in_stream_order():
    stream = CalibrationStream(TOKENS, seq_len=100, batch_size=3, sampling="sequential")
    assert stream.n_segments == 100 and stream.steps_per_epoch == 33
    assert torch.equal(stream.batch(0), TOKENS[:300].view(3, 100))
    assert _starts(stream.batch(1)) == [300, 400, 500]
    assert torch.equal(stream.batch(33), stream.batch(0))
    shuffled = CalibrationStream(TOKENS, seq_len=100, batch_size=3, n_segments=99, sampling="sequential",
                                 shuffle=True, seed=2)
    assert sorted(s for b in shuffled for s in _starts(b)) == list(range(0, 9900, 100))
    assert _starts(shuffled.batch(0)) != [0, 100, 200]


def test_too_short_corpus_message_has_the_numbers():
    with pytest.raises(DataError) as info:
        CalibrationStream(torch.arange(3412 % 1000), seq_len=128, batch_size=8)
    assert str(info.value) == "calibration text has 412 tokens; 8 segments of 128 tokens need at least 1,024"
    with pytest.raises(DataError, match="50 non-overlapping segments of 128 tokens need at least 6,400"):
        CalibrationStream(torch.arange(3000), seq_len=128, batch_size=8, n_segments=50,
                          sampling="sequential")
    with pytest.raises(ConfigError, match="fewer than one batch of 8"):
        CalibrationStream(TOKENS, seq_len=16, batch_size=8, n_segments=5)
