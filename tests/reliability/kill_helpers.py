"""Helpers of the kill-and-resume tests: a small finished run to copy per case, the CLI as a
process group that can be SIGKILLed, and the observable signs that a stage is mid-way.

`prepare(root)` runs in a subprocess of its own (torch, GX and MLflow stay out of pytest's
process): synthetic data, a tiny random Marian model (a real `hf_seq2seq` translation, slow
enough to kill between two cache commits) and a params.yaml with small settings, then the
whole chain validate -> register through `run_tracked_stage` into `<root>/prep/run`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.train_helpers import REPO, overrides, write_params

SMALL_DATA = {"train_per_task": 8, "test_per_task": 4, "seed_en_per_kind": 10}
PREP = "prep"


def params_for(root: Path) -> dict[str, Any]:
    """Small settings: the tiny model, a few training steps with a checkpoint every 2, and a
    translation by the local random Marian model in batches of 3 records (one cache commit
    each; see `trim_memory`). Its outputs are gibberish, so the quarantine gate is off."""
    return overrides(
        root / "data", synthetic=SMALL_DATA,
        validate={"workers": 0},
        translate={"backend": "hf_seq2seq", "model_id": str(root / "mt"), "batch_records": 3,
                   "batch_size": 4, "max_new_tokens": 24, "seed_cache_from_memory": True,
                   "max_quarantine_ratio": 1.0, "cache_dir": "tcache"},
        mix={"shard_rows": 8},
        train={"save_steps": 2, "save_total_limit": 2, "logging_steps": 1},
        align={"epochs": 1, "global_batch_size": 8},
        sft={"epochs": 1, "global_batch_size": 8},
        dpo={"epochs": 1, "global_batch_size": 8},
        evaluate={"batch_size": 8},
    )


def build_translator(data: Path, out: Path) -> None:
    """A tiny random Marian MT model with a BPE tokenizer trained on the data's memory."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import MarianConfig, MarianMTModel, PreTrainedTokenizerFast

    from components.translation.backends import load_memory

    memory = load_memory(data / "seed_en" / "translation_memory.jsonl")
    corpus = [*memory, *memory.values(), "[[0]] [[1]] [[2]] <image> 12,40 €"] * 3
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<pad>", "</s>", "<unk>", "<s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", bos_token="<s>")
    cfg = MarianConfig(vocab_size=len(fast), d_model=64, encoder_layers=2, decoder_layers=2,
                       encoder_attention_heads=4, decoder_attention_heads=4,
                       encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=256,
                       pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
                       forced_eos_token_id=1, scale_embedding=False)
    torch.manual_seed(0)
    model = MarianMTModel(cfg)
    with torch.no_grad():  # larger weights: outputs depend on the input, rarely EOS at once
        for p in model.parameters():
            p.normal_(0.0, 0.5 if p.dim() > 1 else 0.1)
    model.save_pretrained(out)
    fast.save_pretrained(out)


def trim_memory(data: Path) -> None:
    """Drop the captions from the translation memory that seeds the model's cache: the
    model translates one caption per batch of 3 records (caption, qa, preference), the
    memory the rest, so seed_pt.jsonl holds the 20 memory-served records and the quarantine
    the 10 gibberish captions."""
    from components.records import read_records

    captions = {r.text for r in read_records(data / "seed_en" / "records.jsonl")
                if r.kind == "caption"}
    path = data / "seed_en" / "translation_memory.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows
                            if r["source"] not in captions), encoding="utf-8")


def prepare(root: Path) -> None:
    """Data, the MT model, `<root>/params.yaml` and the finished chain in `<root>/prep/run`
    (working directory `<root>/prep`: its translation cache is `<root>/prep/tcache`)."""
    from components.data.synthetic import generate
    from components.pipeline import run_tracked_stage
    from components.settings import load_settings
    from components.stages import ORDER

    root = Path(root)
    params = write_params(root / "params.yaml", params_for(root), profile="ci")
    settings = load_settings(params_path=params)
    generate(root / "data", settings)
    trim_memory(root / "data")
    build_translator(root / "data", root / "mt")
    os.chdir(root / PREP)
    for name in ORDER:
        run_tracked_stage(name, settings, root / PREP / "run", progress=False)


def env(root: Path) -> dict[str, str]:
    return {**os.environ, "AMALIA_PARAMS": str(root / "params.yaml"),
            "MLFLOW_TRACKING_URI": tracking_uri(root), "PYTHONPATH": str(REPO)}


def tracking_uri(root: Path) -> str:
    return f"sqlite:///{root / 'mlflow.db'}"


def run_prepare(root: Path) -> None:
    (root / PREP).mkdir(parents=True, exist_ok=True)
    code = "import sys; from tests.reliability.kill_helpers import prepare; prepare(sys.argv[1])"
    done = subprocess.run([sys.executable, "-c", code, str(root)], env=env(root),
                          cwd=root / PREP, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"preparing the run failed:\n{done.stderr[-4000:]}"


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "amalia_vl", *args]


def stage_cmd(name: str, run_dir: Path) -> list[str]:
    return cli("stage", name, "--run-dir", str(run_dir), "--no-progress")


def copy_run(root: Path, case: str, drop_after: str | None = None) -> Path:
    """`<root>/<case>/run`: a copy of the prepared run without the stages after
    `drop_after`; copies keep mtimes (the stage cache verifies sizes and hashes)."""
    from components.stages import ORDER

    target = root / case / "run"
    shutil.copytree(root / PREP / "run", target)
    if drop_after is not None:
        for later in ORDER[ORDER.index(drop_after) + 1:]:
            shutil.rmtree(target / later, ignore_errors=True)
    return target


class Killed:
    """A CLI command started in its own process group (`start_new_session`), output to
    files of the case folder, killed with SIGKILL once `sign()` holds."""

    def __init__(self, cmd: list[str], root: Path, cwd: Path, tag: str):
        self.cmd, self.cwd = cmd, cwd
        self.out, self.err = cwd / f"{tag}.stdout", cwd / f"{tag}.stderr"
        self.started_ns = time.time_ns()
        with self.out.open("w") as out, self.err.open("w") as err:
            self.proc = subprocess.Popen(cmd, env=env(root), cwd=cwd, stdout=out, stderr=err,
                                         start_new_session=True)
        self.signed_after_s: float | None = None

    def wait_for(self, sign: Callable[[], bool], what: str, timeout: float = 300,
                 pause: float = 0.005) -> None:
        """Poll `sign()` every `pause` s until it holds. Fails (and kills the group) when the
        command ends first: it would not be a kill mid-stage."""
        t0 = time.monotonic()
        try:
            while not self._holds(sign):
                if self.proc.poll() is not None:
                    raise AssertionError(f"{' '.join(self.cmd[3:])} ended (status "
                                         f"{self.proc.returncode}) before {what}:\n"
                                         f"{self.err.read_text()[-3000:]}")
                if time.monotonic() > t0 + timeout:
                    raise AssertionError(f"no sign of {what} within {timeout} s")
                if pause:
                    time.sleep(pause)
        except BaseException:
            self.kill()
            raise

    def kill_when(self, sign: Callable[[], bool], what: str, timeout: float = 300,
                  pause: float = 0.005, freeze: Callable[[], object] | None = None) -> int:
        """SIGKILL the group as soon as `sign()` holds (after `freeze()`, when given: e.g.
        a lock that stops the command at its next write); returns the exit status."""
        try:
            self.wait_for(sign, what, timeout, pause)
            if freeze is not None:
                freeze()
        finally:  # whatever happened, nothing outlives the case
            self.signed_after_s = (time.time_ns() - self.started_ns) / 1e9
            status = self.kill()
        return status

    @staticmethod
    def _holds(sign: Callable[[], bool]) -> bool:
        try:
            return bool(sign())
        except (OSError, sqlite3.Error, ValueError):  # files or rows being written
            return False

    def kill(self) -> int:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return self.proc.wait(timeout=60)


def run_cli(cmd: list[str], root: Path, cwd: Path, timeout: float = 600
            ) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env(root), cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


# ------------------------------------------------------------------ signs of a stage at work


def written_since(folder: Path, since_ns: int) -> bool:
    """A file under `folder` written after `since_ns` (copies keep the old mtimes, and
    clearing the folder deletes without writing), and no manifest."""
    if (folder / "manifest.json").exists():
        return False
    return any(p.is_file() and p.stat().st_mtime_ns >= since_ns for p in folder.rglob("*"))


def sealed_checkpoints(folder: Path) -> list[Path]:
    return sorted((p.parent for p in folder.glob("checkpoint-*/amalia_checkpoint.json")),
                  key=lambda p: int(p.name.split("-")[1]))


def cache_rows(cache_dir: Path, origin: str = "backend") -> int:
    """Rows the model put in the translation cache (0 while the file or its table does not
    exist; the memory's seed rows have origin `memory`)."""
    path = cache_dir / "translations.sqlite"
    if not path.exists():
        return 0
    db = sqlite3.connect(path, timeout=5)
    try:
        return db.execute("SELECT COUNT(*) FROM translations WHERE origin = ?",
                          (origin,)).fetchone()[0]
    except sqlite3.OperationalError:  # the table is not created yet
        return 0
    finally:
        db.close()


def cache_table(cache_dir: Path) -> dict[str, tuple[str, str]]:
    """`key -> (target, origin)` of every row of the translation cache."""
    db = sqlite3.connect(cache_dir / "translations.sqlite")
    try:
        return {k: (t, o) for k, t, o in db.execute("SELECT key, target, origin FROM "
                                                    "translations")}
    finally:
        db.close()


def stage_run_ids(root: Path, stage: str, run_dir: Path) -> list[str]:
    """MLflow runs of `stage` in `run_dir` (its `amalia.stage` / `amalia.run_dir` tags),
    read straight from the SQLite store."""
    path = root / "mlflow.db"
    if not path.exists():
        return []
    db = sqlite3.connect(path, timeout=5)
    try:
        rows = db.execute(
            "SELECT s.run_uuid FROM tags s JOIN tags d ON s.run_uuid = d.run_uuid "
            "WHERE s.key = 'amalia.stage' AND s.value = ? AND d.key = 'amalia.run_dir' "
            "AND d.value = ?", (stage, str(run_dir))).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        db.close()
    return sorted(r[0] for r in rows)


def registry(db: sqlite3.Connection, model: str) -> tuple[dict[str, str], dict[str, str]]:
    """`({version: amalia.registration status}, {alias: version})` of a registered model,
    read straight from the SQLite store."""
    status = {str(v): "" for (v,) in db.execute(
        "SELECT version FROM model_versions WHERE name = ?", (model,))}
    status.update({str(v): s for v, s in db.execute(
        "SELECT version, value FROM model_version_tags WHERE name = ? AND key = ?",
        (model, "amalia.registration"))})
    aliases = {a: str(v) for a, v in db.execute(
        "SELECT alias, version FROM registered_model_aliases WHERE name = ?", (model,))}
    return status, aliases


def manifest(run_dir: Path, stage: str) -> dict[str, Any]:
    return json.loads((run_dir / stage / "manifest.json").read_text())
