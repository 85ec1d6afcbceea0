"""Rank-aware reading (components/train/dataset.py `BlockShuffleSampler`,
`StreamSampler`; components/train/packing.py `equalise_streams`): every (rank,
DataLoader worker) reads whole row groups of its own, so a row group is read once per
epoch, not once per interleaved batch; the streams stay balanced and the order is a pure
function of (seed, epoch, launch), so resume stays exact. Packed rows are equalised by
splitting rows, so every sample is trained exactly once per epoch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict

import numpy as np
import pytest
from accelerate.data_loader import BatchSamplerShard
from torch.utils.data import BatchSampler

from components.train.dataset import BlockShuffleSampler, StreamSampler, row_group_reads
from components.train.packing import PackedDataset
from tests.train_helpers import REPO


def _groups(sizes):
    out, start = [], 0
    for n in sizes:
        out.append(np.arange(start, start + n))
        start += n
    return out, np.concatenate([np.full(n, g) for g, n in enumerate(sizes)])


@pytest.mark.parametrize("world,workers,batch", [(4, 2, 1), (8, 4, 3), (3, 0, 2)])
def test_each_row_group_is_read_once_per_epoch(world, workers, batch):
    """The read simulation (Accelerate's BatchSamplerShard + the worker round-robin + a
    2-group cache per worker): the old interleaved order reads groups many times; the
    rank-aware order once."""
    rng = np.random.default_rng(world)
    groups, group_of = _groups(rng.integers(40, 60, size=61))
    old = row_group_reads(BlockShuffleSampler(groups, 7), group_of, world, workers, batch)
    for epoch in range(2):
        sampler = BlockShuffleSampler(groups, 7, world_size=world, batch_size=batch,
                                      workers=workers)
        sampler.set_epoch(epoch)
        reads = row_group_reads(sampler, group_of, world, workers, batch)
        assert reads.max() == 1, reads
        assert old.mean() > 2 * reads.mean()


def test_streams_are_balanced_and_the_remainder_is_bounded():
    """Every rank gets the same number of batches (whole accumulation steps); the epoch
    costs what the data holds; what is left out or repeated is within one row group per
    stream and repeats come from the stream's own groups."""
    groups, group_of = _groups([50, 47, 61, 52, 40, 58, 45, 49, 60, 51, 44])
    world, workers, batch, accumulation = 2, 2, 3, 2
    streams = world * workers
    sampler = BlockShuffleSampler(groups, 1, world_size=world, batch_size=batch,
                                  workers=workers, accumulation=accumulation)
    order = list(sampler)
    total = sum(len(g) for g in groups)
    assert len(order) == len(sampler)
    per_stream = len(order) // (streams * batch)
    assert per_stream * streams * batch == len(order)
    assert (per_stream * workers) % accumulation == 0
    assert len(order) - total < streams * batch * accumulation  # no padding to the longest
    batches = BatchSampler(order, batch, drop_last=True)
    counts = [len(list(BatchSamplerShard(batches, num_processes=world, process_index=r)))
              for r in range(world)]
    assert counts[0] == counts[1] == per_stream * workers
    left_out = total - len(set(order))
    assert 0 < left_out <= streams * max(len(g) for g in groups)
    for s in range(streams):  # batch b is read by stream b % streams
        mine = [order[b * batch:(b + 1) * batch] for b in range(s, len(order) // batch,
                                                                 streams)]
        owned = {int(group_of[i]) for b in mine for i in b}
        others = {int(group_of[i]) for t in range(streams) if t != s
                  for b in [order[k * batch:(k + 1) * batch]
                            for k in range(t, len(order) // batch, streams)] for i in b}
        assert not owned & others  # no group shared between streams


def test_equal_groups_in_a_multiple_of_the_streams_cover_every_sample_once():
    groups, _ = _groups([10] * 8)
    sampler = BlockShuffleSampler(groups, 3, world_size=2, batch_size=5, workers=2)
    orders = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        orders.append(list(sampler))
        assert sorted(orders[-1]) == list(range(80))
    assert len({tuple(o) for o in orders}) == 3  # a new order each epoch
    sampler.set_epoch(1)
    again = BlockShuffleSampler(groups, 3, world_size=2, batch_size=5, workers=2)
    again.set_epoch(1)
    assert list(again) == list(sampler) == orders[1]  # a function of its inputs only


def test_one_stream_keeps_the_plain_block_shuffle():
    groups, _ = _groups([7, 9, 4])
    assert sorted(BlockShuffleSampler(groups, 2)) == list(range(20))
    assert list(BlockShuffleSampler(groups, 2, world_size=1, workers=1, batch_size=4)) == \
        list(BlockShuffleSampler(groups, 2))



def test_the_recorded_remainder_is_what_the_unpacked_order_leaves_out_and_repeats():
    """`remainder` (what stages.training_data records for padded batches) counts, without
    drawing the order, exactly the samples the epoch's order leaves out and repeats."""
    groups, _ = _groups([50, 47, 61, 52, 40, 58, 45, 49, 60, 51, 44])
    total = sum(len(g) for g in groups)
    for world, workers, batch, accumulation in [(2, 2, 3, 2), (3, 0, 2, 1), (8, 4, 1, 1)]:
        sampler = BlockShuffleSampler(groups, 4, world_size=world, batch_size=batch,
                                      workers=workers, accumulation=accumulation)
        for epoch in (0, 1):
            sampler.set_epoch(epoch)
            order = list(sampler)
            left_out, repeated = sampler.remainder()
            assert left_out == total - len(set(order))
            assert repeated == len(order) - len(set(order))
            assert left_out + repeated > 0


class _Index:
    """What packing reads of a `ShardDataset`: its row groups and tokens per sample."""

    def __init__(self, samples_per_group, seed=0):
        rng = np.random.default_rng(seed)
        self.row_groups, _ = _groups(samples_per_group)
        self.packed_lengths = rng.integers(40, 420, size=sum(samples_per_group))


def _streams_of(order, streams, batch):
    """Row indices per stream: batch b of the order is read by stream b % streams."""
    out = defaultdict(list)
    for b in range(len(order) // batch):
        out[b % streams] += order[b * batch:(b + 1) * batch]
    return out


@pytest.mark.parametrize("world,workers,batch,accumulation", [(4, 2, 1, 1), (2, 4, 2, 3),
                                                              (8, 0, 1, 2)])
def test_packed_streams_are_equalised_by_splitting_rows_every_sample_once(
        world, workers, batch, accumulation):
    """8 streams over uneven row groups: the rows are dealt to streams once for the launch
    and the short streams' rows split, so every stream yields the same whole batches,
    every sample is trained exactly once per epoch (none left out, none repeated), each
    row group is read by one stream, once; the order is re-drawn per epoch and is a
    function of (seed, epoch, launch) only (exact resume)."""
    index = _Index([30, 95, 41, 77, 60, 23, 88, 52, 66, 34, 71, 45, 90, 28, 57, 80, 39])
    samples = sum(len(g) for g in index.row_groups)
    packed = PackedDataset(index, 1024)
    before, fill_before = len(packed), packed.fill_ratio
    launch = {"world_size": world, "workers": workers, "batch_size": batch,
              "accumulation": accumulation}
    layout = packed.equalise_streams(9, **launch)
    streams = world * max(1, workers)
    assert (layout.rows_left_out, layout.rows_repeated) == (0, 0)
    assert len(packed) == before + layout.rows_added == streams * layout.rows_per_stream
    assert len(packed) % (world * batch * accumulation) == 0  # whole optimizer steps
    assert packed.fill_ratio < fill_before  # the cost: more, less full rows
    assert all(packed.base.packed_lengths[r].sum() <= 1024 for r in packed.rows)
    group_of = np.empty(len(packed), dtype=np.int64)
    for g, rows in enumerate(packed._groups):
        group_of[rows] = g
    sample_group = np.concatenate([np.full(len(g), k) for k, g in enumerate(index.row_groups)])
    assert all(len(set(sample_group[r].tolist())) == 1 for r in packed.rows)  # one group
    orders = []
    for epoch in range(2):
        sampler = packed.sampler(9, **launch)
        assert isinstance(sampler, StreamSampler)
        sampler.set_epoch(epoch)
        order = list(sampler)
        orders.append(order)
        trained = np.concatenate([packed.rows[k] for k in order])
        assert sorted(trained.tolist()) == list(range(samples))  # each sample exactly once
        per_stream = _streams_of(order, streams, batch)
        assert {len(rows) for rows in per_stream.values()} == {layout.rows_per_stream}
        owners = defaultdict(set)
        for s, rows in per_stream.items():
            for k in rows:
                owners[int(group_of[k])].add(s)
        assert all(len(s) == 1 for s in owners.values())  # one stream per group
        reads = row_group_reads(sampler, group_of, world, workers, batch)
        assert reads.min() == reads.max() == 1
        shards = BatchSampler(order, batch, drop_last=True)
        counts = {len(list(BatchSamplerShard(shards, num_processes=world, process_index=r)))
                  for r in range(world)}
        assert len(counts) == 1 and counts.pop() % accumulation == 0
    assert orders[0] != orders[1]
    again = PackedDataset(index, 1024)  # a restart: the same launch gives the same order
    again.equalise_streams(9, **launch)
    resumed = again.sampler(9, **launch)
    resumed.set_epoch(1)
    assert list(resumed) == orders[1]


def test_launches_with_as_many_readers_read_the_same_rows_in_the_same_order():
    """1 process x 2 workers and 2 processes x 0 workers are both 2 streams: the same
    layout and order (test_train_distributed compares their losses step by step)."""
    index = _Index([30, 95, 41, 77, 60])
    one, two = PackedDataset(index, 1024), PackedDataset(index, 1024)
    one.equalise_streams(3, world_size=1, workers=2, batch_size=1, accumulation=2)
    two.equalise_streams(3, world_size=2, workers=0, batch_size=1, accumulation=1)
    assert [r.tolist() for r in one.rows] == [r.tolist() for r in two.rows]
    assert list(one.sampler(3, world_size=1, workers=2, batch_size=1, accumulation=2)) == \
        list(two.sampler(3, world_size=2, workers=0, batch_size=1, accumulation=1))


@pytest.mark.parametrize("samples_per_group", [[3, 9, 1, 6, 2, 8, 4], [5, 7]])
def test_rows_too_few_to_equalise_fall_back_and_say_how_many(samples_per_group):
    """Single-sample rows cannot split (and 2 groups for 8 streams): the remainder falls
    back to the sampler's balance, and the layout's counts are what the order does."""
    index = _Index(samples_per_group)
    index.packed_lengths[:] = 1000  # one sample per row
    packed = PackedDataset(index, 1024)
    layout = packed.equalise_streams(1, world_size=4, workers=2, batch_size=1,
                                     accumulation=1)
    assert layout.rows_added == 0 and layout.rows_left_out + layout.rows_repeated > 0
    order = list(packed.sampler(1, world_size=4, workers=2, batch_size=1, accumulation=1))
    assert len(order) == 8 * layout.rows_per_stream
    assert layout.rows_left_out == len(packed) - len(set(order))
    assert layout.rows_repeated == len(order) - len(set(order))


def test_a_sampler_asked_for_another_launch_keeps_the_block_shuffle(caplog):
    index = _Index([30, 95, 41, 77, 60])
    packed = PackedDataset(index, 1024)
    packed.equalise_streams(3, world_size=2, workers=2, batch_size=1, accumulation=1)
    assert isinstance(packed.sampler(3, world_size=2, workers=1, batch_size=1),
                      BlockShuffleSampler)
    assert "equalised for the launch" in caplog.text

SCRIPT = '''
import json, os, sys
import torch
from torch import nn
from transformers import TrainingArguments
from components.settings import TrainSettings
from components.train.dataset import BlockShuffleSampler
from components.train.engine import AmaliaTrainer

from components.train.packing import PackedDataset

GROUPS = [list(range(k * 6, k * 6 + 6)) for k in range(8)]
PACKED = sys.argv[2] == "packed"
SIZES = [9, 4, 7, 12, 5, 8, 6, 3, 10, 2]  # uneven row groups of samples, 3 per row


class Index(torch.utils.data.Dataset):
    starts = [sum(SIZES[:k]) for k in range(len(SIZES))]
    row_groups = [torch.arange(a, a + n).numpy() for a, n in zip(starts, SIZES)]
    packed_lengths = torch.full((sum(SIZES),), 30).numpy()

    def __len__(self):
        return sum(SIZES)

    def __getitem__(self, i):
        return i


class Items(torch.utils.data.Dataset):
    row_groups = [torch.tensor(g).numpy() for g in GROUPS]

    def __len__(self):
        return 48

    def __getitem__(self, i):
        return i

    def sampler(self, seed, **launch):
        return BlockShuffleSampler(self.row_groups, seed, **launch)


def collate(items):
    info = torch.utils.data.get_worker_info()
    samples = [i for row in items for i in row] if PACKED else items
    x = [sum(row) for row in items] if PACKED else items
    return {"x": torch.tensor(x, dtype=torch.float32)[:, None],
            "attention_mask": torch.ones(len(items), 1, dtype=torch.long),
            "sample_index": torch.tensor(samples),
            "worker": torch.tensor(-1 if info is None else info.id)}


SEEN = []


class Objective:
    def count(self, batch):
        return len(batch["sample_index"])

    def __call__(self, model, batch, num_items):
        SEEN.append((int(batch["worker"]), batch["sample_index"].tolist()))
        return model(batch["x"] / 48).sum() / num_items, {}


out = sys.argv[1]
model = nn.Linear(1, 1)
args = TrainingArguments(output_dir=os.path.join(out, "ckpt"), per_device_train_batch_size=2,
                         num_train_epochs=1, dataloader_num_workers=2, use_cpu=True,
                         report_to=[], save_strategy="no", ddp_backend="gloo", seed=11,
                         remove_unused_columns=False, logging_steps=1, disable_tqdm=True,
                         dataloader_drop_last=True)
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
data = Items()
if PACKED:  # rows of 3 samples, dealt to the 4 streams and equalised for this launch
    data = PackedDataset(Index(), 100)
    data.equalise_streams(11, world_size=2, workers=2, batch_size=2, accumulation=1)
trainer = AmaliaTrainer(model=model, args=args, train_dataset=data, data_collator=collate,
                        objective=Objective(), train_settings=TrainSettings(),
                        optimizers=(optimizer, torch.optim.lr_scheduler.LambdaLR(
                            optimizer, lambda step: 1.0)))
trainer.train()
rank = int(os.environ["RANK"])
with open(os.path.join(out, f"seen{rank}.json"), "w") as fh:
    json.dump(SEEN, fh)
'''


@pytest.mark.parametrize("mode", ["samples", "packed"])
def test_two_torchrun_ranks_with_two_workers_read_only_their_own_row_groups(tmp_path, mode):
    """The real stack: torchrun (2 gloo processes), the Trainer with our sampler hook,
    Accelerate's sharding, 2 DataLoader workers per rank: each (rank, worker) sees whole
    row groups no other reader sees, and the epoch covers every sample once; packed:
    rows of uneven row groups, equalised over the 4 streams by splitting rows (the
    sampler's own balance would repeat some)."""
    script = tmp_path / "reads.py"
    script.write_text(SCRIPT)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--standalone", str(script), str(tmp_path), mode], cwd=REPO, capture_output=True,
        text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    sizes = [9, 4, 7, 12, 5, 8, 6, 3, 10, 2] if mode == "packed" else [6] * 8
    _, group_of = _groups(sizes)
    readers: dict[tuple[int, int], set[int]] = defaultdict(set)
    samples: list[int] = []
    for rank in (0, 1):
        for worker, indices in json.loads((tmp_path / f"seen{rank}.json").read_text()):
            assert worker in (0, 1)
            readers[(rank, worker)].update(int(group_of[i]) for i in indices)
            samples += indices
    assert len(readers) == 4  # every (rank, worker) read
    groups = [g for owned in readers.values() for g in owned]
    assert sorted(groups) == list(range(len(sizes)))  # each row group read by one reader
    assert sorted(samples) == list(range(sum(sizes)))  # every sample once
