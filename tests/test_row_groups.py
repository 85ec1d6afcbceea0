"""Rank-aware reading (components/train/dataset.py `BlockShuffleSampler`): every (rank,
DataLoader worker) reads whole row groups of its own, so a row group is read once per
epoch, not once per interleaved batch; the streams stay balanced and the order is a pure
function of (seed, epoch, world size, workers, batch), so resume stays exact."""

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

from components.train.dataset import BlockShuffleSampler, row_group_reads
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


SCRIPT = '''
import json, os, sys
import torch
from torch import nn
from transformers import TrainingArguments
from components.settings import TrainSettings
from components.train.dataset import BlockShuffleSampler
from components.train.engine import AmaliaTrainer

GROUPS = [list(range(k * 6, k * 6 + 6)) for k in range(8)]


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
    return {"x": torch.tensor(items, dtype=torch.float32)[:, None],
            "attention_mask": torch.ones(len(items), 1, dtype=torch.long),
            "sample_index": torch.tensor(items),
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
trainer = AmaliaTrainer(model=model, args=args, train_dataset=Items(), data_collator=collate,
                        objective=Objective(), train_settings=TrainSettings(),
                        optimizers=(optimizer, torch.optim.lr_scheduler.LambdaLR(
                            optimizer, lambda step: 1.0)))
trainer.train()
rank = int(os.environ["RANK"])
with open(os.path.join(out, f"seen{rank}.json"), "w") as fh:
    json.dump(SEEN, fh)
'''


def test_two_torchrun_ranks_with_two_workers_read_only_their_own_row_groups(tmp_path):
    """The real stack: torchrun (2 gloo processes), the Trainer with our sampler hook,
    Accelerate's sharding, 2 DataLoader workers per rank: each (rank, worker) sees whole
    row groups no other reader sees, and the epoch covers every sample once."""
    script = tmp_path / "reads.py"
    script.write_text(SCRIPT)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--standalone", str(script), str(tmp_path)], cwd=REPO, capture_output=True,
        text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    readers: dict[tuple[int, int], set[int]] = defaultdict(set)
    samples: list[int] = []
    for rank in (0, 1):
        for worker, indices in json.loads((tmp_path / f"seen{rank}.json").read_text()):
            assert worker in (0, 1)
            readers[(rank, worker)].update(i // 6 for i in indices)
            samples += indices
    assert len(readers) == 4  # every (rank, worker) read
    groups = [g for owned in readers.values() for g in owned]
    assert sorted(groups) == list(range(8))  # each row group read by one reader only
    assert sorted(samples) == list(range(48))
