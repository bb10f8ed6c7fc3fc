"""Feeding Algorithm 1 from a streamed shard: the seeded shuffle buffer and exact resume (no Ray needed:
an epoch is any callable returning one pass of numpy batches)."""
from __future__ import annotations

import numpy as np
import pytest

from sem_dist.data.storage import DataError
from sem_dist.distributed.stream import ShardStream, StreamPosition, buffer_shuffle, check_good_rows, rows_per_worker

N = 50


def _epoch():
    """One pass over N rows whose label is their position in the shard, in batches of 7 (the last short)."""
    images = np.arange(N, dtype=np.uint8).reshape(N, 1, 1, 1).repeat(2, axis=2)
    return ({"image": images[i:i + 7], "label": np.arange(i, min(i + 7, N))} for i in range(0, N, 7))


def test_each_epoch_is_a_buffered_permutation_that_changes_with_the_epoch():
    stream = ShardStream(_epoch, batch_rows=10, seed=3, rank=0, buffer_rows=8)
    epochs = [np.concatenate([stream.next_batch()[1].numpy() for _ in range(5)]) for _ in range(2)]
    for order in epochs:
        assert sorted(order.tolist()) == list(range(N))  # every row exactly once per epoch
        assert order.tolist() != list(range(N))
        # a row leaves at most buffer_rows places before its arrival
        assert (order - np.arange(N) <= 8).all()
    assert epochs[0].tolist() != epochs[1].tolist()
    assert stream.position == StreamPosition(2, 0) or stream.position == StreamPosition(1, N)
    x, _ = stream.next_batch()
    assert x.dtype.is_floating_point and float(x.max()) <= 1.0


def test_a_stream_resumed_from_its_position_continues_the_same_sequence():
    full = ShardStream(_epoch, batch_rows=6, seed=11, rank=1, buffer_rows=16)
    batches = [full.next_batch()[1].tolist() for _ in range(30)]  # 180 rows: crosses three epoch ends
    for k in (1, 8, 9, 17):
        first = ShardStream(_epoch, batch_rows=6, seed=11, rank=1, buffer_rows=16)
        for _ in range(k):
            first.next_batch()
        saved = StreamPosition(*first.position.to_list())  # what a checkpoint stores
        resumed = ShardStream(_epoch, batch_rows=6, seed=11, rank=1, buffer_rows=16, position=saved)
        assert [resumed.next_batch()[1].tolist() for _ in range(30 - k)] == batches[k:], k
    other_rank = ShardStream(_epoch, batch_rows=6, seed=11, rank=0, buffer_rows=16)
    assert other_rank.next_batch()[1].tolist() != batches[0]


def test_buffer_larger_than_the_shard_is_a_full_permutation():
    rng = np.random.default_rng(0)
    rows = [label for _, label in buffer_shuffle(_epoch(), 1000, rng)]
    assert sorted(rows) == list(range(N)) and rows != list(range(N))


def test_resuming_past_the_end_of_changed_data_is_refused():
    with pytest.raises(ValueError, match="fewer than 60 rows"):
        ShardStream(_epoch, batch_rows=4, seed=0, rank=0, position=StreamPosition(0, 60)).next_batch()


def test_worker_shares_and_bad_records():
    assert rows_per_worker(16, 2) == 8
    with pytest.raises(ValueError, match=r"batch size \(16\) must be a multiple of --workers \(3\)"):
        rows_per_worker(16, 3)
    batch = {"id": np.array(["a", "b", "c"], dtype=object), "image": np.zeros((3, 1, 2, 2), np.uint8),
             "label": np.array([0, 1, 2]), "error": np.array(["", "truncated PNG", ""], dtype=object)}
    with pytest.raises(DataError, match="^bad record b: truncated PNG"):
        check_good_rows(batch, "fail")
    kept = check_good_rows(batch, "skip")
    assert kept["id"].tolist() == ["a", "c"] and kept["label"].tolist() == [0, 2]
