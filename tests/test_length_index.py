"""The length index (components/train/length_index.py): the planning pass of a mix output
is computed once per key, in parallel, stored atomically and reused by every process."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import numpy as np
import pytest

from components.model.build import build_tiny_model, save_model
from components.records import Record, shard_paths
from components.settings import load_settings
from components.train import length_index
from components.train.chat import Budget, ChatFormat
from components.train.dataset import ShardDataset
from tests.train_helpers import COLOURS, QUESTION, REPO, make_mix, overrides

BASE = {"source": "native", "language": "pt-PT", "task_family": "cor"}


class CountingChat(ChatFormat):
    """A ChatFormat that counts the samples it tokenises (in this process)."""

    calls = 0

    def encode(self, *args, **kwargs):
        type(self).calls += 1
        return super().encode(*args, **kwargs)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("length_index")
    long = Record(id="long", kind="qa", image="img/0.png", question="muito " * 400,
                  answer="sim", **BASE)
    text = Record(id="text", kind="qa", question="Quanto é dois mais dois?", answer="quatro",
                  **BASE)
    data, run = make_mix(root, n=30, seed=5, extra_sft=[long, text])
    settings = load_settings("tiny", overrides=overrides(data))
    model, processor = build_tiny_model(settings, [QUESTION, *COLOURS, "quatro"] * 3)
    save_model(model, processor, root / "model")
    folder = run / "mix" / "shards" / "sft"
    return settings, processor, folder, data, root


def _same(a: ShardDataset, b: ShardDataset) -> None:
    for name in ("rows", "lengths", "packed_lengths", "tiles"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert a.skipped == b.skipped and a.image_sizes_seen == b.image_sizes_seen


def test_a_second_build_reuses_the_index_without_tokenising(setup, tmp_path):
    settings, processor, folder, data, _ = setup
    budget = Budget(settings.model.max_length)
    CountingChat.calls = 0
    first = ShardDataset(folder, data, processor, CountingChat(processor), budget,
                         index_dir=tmp_path, workers=1)
    assert first.index_computed and CountingChat.calls == 32  # every record planned once
    assert [s["id"] for s in first.skipped] == ["long"] and len(first) == 31
    [stored] = tmp_path.glob("*.npz")
    stamp = stored.stat().st_mtime_ns
    CountingChat.calls = 0
    second = ShardDataset(folder, data, processor, CountingChat(processor), budget,
                          index_dir=tmp_path, workers=1)
    assert not second.index_computed and CountingChat.calls == 0  # nothing re-tokenised
    assert stored.stat().st_mtime_ns == stamp
    _same(first, second)
    # and it is what the in-memory planning pass gives
    _same(first, ShardDataset(folder, data, processor, ChatFormat(processor), budget))


def test_a_changed_budget_or_tokenizer_recomputes(setup, tmp_path):
    settings, processor, folder, data, _ = setup
    budget = Budget(settings.model.max_length)
    chat = ChatFormat(processor)
    base = ShardDataset(folder, data, processor, chat, budget, index_dir=tmp_path)
    tighter = ShardDataset(folder, data, processor, chat, Budget(30), index_dir=tmp_path)
    assert tighter.index_computed and tighter.index_key != base.index_key
    assert (len(tighter), tighter.lengths.tolist()) != (len(base), base.lengths.tolist())
    other = copy.deepcopy(processor)
    other.tokenizer.add_tokens(["palavra_nova"])
    retok = ShardDataset(folder, data, other, ChatFormat(other), budget, index_dir=tmp_path)
    assert retok.index_computed and retok.index_key not in (base.index_key, tighter.index_key)
    prompted = ShardDataset(folder, data, processor, ChatFormat(processor, "Sê breve."),
                            budget, index_dir=tmp_path)
    assert prompted.index_computed
    assert len(list(tmp_path.glob("*.npz"))) == 4


def test_parallel_equals_serial(setup):
    settings, processor, folder, data, _ = setup
    shards = [str(p) for p in shard_paths(folder)]
    chat, budget = ChatFormat(processor), Budget(settings.model.max_length)
    serial = length_index.compute(shards, data, chat, budget, False, workers=1)
    parallel = length_index.compute(shards, data, chat, budget, False, workers=2,
                                    min_parallel_rows=0)
    assert len(serial.entries) == 32 and len({int(g) for g in serial.entries[:, 1]}) == 4
    assert np.array_equal(serial.entries, parallel.entries)
    assert np.array_equal(serial.sizes, parallel.sizes)
    assert serial.skipped == parallel.skipped


def test_a_partial_or_foreign_index_file_is_recomputed(setup, tmp_path):
    settings, processor, folder, data, _ = setup
    chat, budget = ChatFormat(processor), Budget(settings.model.max_length)
    good = ShardDataset(folder, data, processor, chat, budget, index_dir=tmp_path)
    path = tmp_path / f"{good.index_key}.npz"
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])  # a writer killed mid-file
    again = ShardDataset(folder, data, processor, chat, budget, index_dir=tmp_path)
    assert again.index_computed and path.read_bytes() == whole
    _same(good, again)
    other = ShardDataset(folder, data, processor, chat, Budget(30), index_dir=tmp_path)
    path.write_bytes((tmp_path / f"{other.index_key}.npz").read_bytes())  # another key's
    third = ShardDataset(folder, data, processor, chat, budget, index_dir=tmp_path)
    assert third.index_computed
    _same(good, third)
    assert not list(tmp_path.glob("*.tmp"))  # no temporary file left behind


SCRIPT = """
import json, os, sys
from datetime import timedelta
from pathlib import Path
import torch.distributed as dist
from components.model.build import load_model
from components.train.chat import Budget, ChatFormat
from components.train.dataset import ShardDataset

model_dir, folder, data, index_dir, out = map(Path, sys.argv[1:6])
dist.init_process_group("gloo", timeout=timedelta(seconds=120))
_, processor = load_model(model_dir)
ds = ShardDataset(folder, data, processor, ChatFormat(processor), Budget(int(sys.argv[6])),
                  index_dir=index_dir, workers=2)
rank = dist.get_rank()
(out / f"rank{rank}.json").write_text(json.dumps({
    "computed": ds.index_computed, "key": ds.index_key, "rows": ds.rows.tolist(),
    "lengths": ds.lengths.tolist()}))
dist.barrier()
dist.destroy_process_group()
"""


def test_two_torchrun_processes_compute_the_index_once(setup, tmp_path):
    settings, _, folder, data, root = setup
    script = tmp_path / "build_index.py"
    script.write_text(SCRIPT)
    index_dir = tmp_path / "index"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--standalone", str(script), str(root / "model"), str(folder), str(data),
         str(index_dir), str(tmp_path), str(settings.model.max_length)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env={**__import__("os").environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert sorted(r["computed"] for r in ranks) == [False, True]  # one computed, one loaded
    assert ranks[0]["key"] == ranks[1]["key"]
    assert ranks[0]["rows"] == ranks[1]["rows"] and ranks[0]["lengths"] == ranks[1]["lengths"]
    assert len(list(index_dir.glob("*.npz"))) == 1
