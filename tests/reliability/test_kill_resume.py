"""SIGKILL in the middle of every stage, then the same command again (issue #13).

One small run is prepared once per module (`kill_helpers.prepare`: ci profile, small
synthetic data, the tiny model, a translation by a local random Marian model) and copied
per case. Each case:

1. records the copied, finished stage in the cross-run stage cache and checks that it is
   served (so the check after the kill is not vacuous);
2. starts `amalia-vl stage NAME --run-dir RUN` in its own process group, polls for a sign
   that the stage is at work (a file written since the start, a cache row, a sealed
   checkpoint, the stage's MLflow run with its old folder cleared) and SIGKILLs the group;
   the exit status must be -SIGKILL: a stage that finished first fails the case;
3. checks what the kill left: no manifest (`read_manifest` refuses), the next stage
   refuses through the CLI with one line naming the killed stage, the stage cache no
   longer serves the half-done folder;
4. runs the same command again and compares with the uninterrupted prepared run:
   validate, mix and evaluate redo their work with the same outputs; translate only
   translates what the killed attempt did not cache, to the same bytes; align and dpo
   resume from their newest sealed checkpoint with the same loss history and weights, in
   the same MLflow run; register leaves exactly one new version carrying the alias, and no
   alias on a version of the killed attempt.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from components import stage_cache
from components.errors import MissingInputError
from components.manifest import read_manifest
from components.pipeline import reuse_cached
from components.settings import load_settings
from components.stages import ORDER
from tests.reliability.kill_helpers import (
    PREP,
    Killed,
    cache_rows,
    cache_table,
    copy_run,
    manifest,
    registry,
    run_cli,
    run_prepare,
    sealed_checkpoints,
    stage_cmd,
    stage_run_ids,
    tracking_uri,
    written_since,
)

pytestmark = pytest.mark.slow

# validate files that differ between two identical runs: Great Expectations stamps its
# results and its Data Docs (their paths too) with run ids and times
VALIDATE_UNSTABLE = ("gx_result.json", "gx_docs/")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """The prepared folder: data, MT model, params.yaml, MLflow store, `prep/run`."""
    where = tmp_path_factory.mktemp("kill")
    t0 = time.monotonic()
    run_prepare(where)
    print(f"\nprepared the run in {time.monotonic() - t0:.1f} s")
    return where


@pytest.fixture
def store(root: Path, monkeypatch) -> Path:
    """This process reads the module's MLflow store too (the stage keys of evaluate and
    register depend on the registry)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri(root))
    monkeypatch.setenv("AMALIA_PARAMS", str(root / "params.yaml"))
    return root


def _settings(root: Path):
    return load_settings(params_path=root / "params.yaml")


def _cached(root: Path, stage: str, run: Path) -> str:
    """Record the copied finished `stage` of `run` in the stage cache, as a cached run
    would have; the cache serves it. Returns its key."""
    key = stage_cache.stage_key(stage, _settings(root), run)
    stage_cache.record(stage, key, run, None)
    hit = stage_cache.lookup(stage, key, run)
    assert hit is not None and hit.stage_dir == (run / stage).resolve()
    return key


def _kill(root: Path, stage: str, run: Path, sign, what: str) -> Killed:
    """The stage command, SIGKILLed once `sign(killed)` holds; it must die of the kill."""
    killed = Killed(stage_cmd(stage, run), root, run.parent, f"{stage}-killed")
    status = killed.kill_when(lambda: sign(killed), what)
    assert status == -signal.SIGKILL, (
        f"{stage} was not killed mid-stage (status {status}):\n{killed.err.read_text()[-2000:]}")
    print(f"\n{stage}: killed {killed.signed_after_s:.2f} s after its start, on {what}")
    return killed


def _half_done(root: Path, stage: str, run: Path, key: str) -> None:
    """What a kill leaves: no manifest, a refusing next stage, no stage-cache hit."""
    assert not (run / stage / "manifest.json").exists(), f"{stage} finished before the kill"
    with pytest.raises(MissingInputError, match=f"stage '{stage}' has not run"):
        read_manifest(run, stage)
    assert stage_cache.lookup(stage, key, run) is None
    assert reuse_cached(stage, _settings(root), run, None) == (key, None)
    at = ORDER.index(stage)
    if at + 1 == len(ORDER):
        return
    after = ORDER[at + 1]
    refused = run_cli(stage_cmd(after, run), root, run.parent)
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert refused.returncode == 1 and len(lines) == 1, refused.stderr
    assert f"stage '{stage}' has not run" in lines[0] and f"needed by '{after}'" in lines[0]
    assert not (run / after).exists()  # refused before anything was written


def _again(root: Path, stage: str, run: Path) -> dict:
    """The same command again: it finishes and leaves a readable manifest."""
    done = run_cli(stage_cmd(stage, run), root, run.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{stage} done" in done.stdout
    return read_manifest(run, stage)


def _prep(root: Path) -> Path:
    return root / PREP / "run"


def _stable(outputs: dict, unstable: tuple[str, ...] = ()) -> dict[str, str]:
    return {rel: meta["sha256"] for rel, meta in outputs.items()
            if not any(rel == u or (u.endswith("/") and rel.startswith(u)) for u in unstable)}


def test_validate_killed_redoes_its_work(store: Path) -> None:
    root = store
    run = copy_run(root, "validate", drop_after="validate")
    key = _cached(root, "validate", run)
    _kill(root, "validate", run, lambda k: written_since(run / "validate", k.started_ns),
          "a file written by validate")
    _half_done(root, "validate", run, key)

    got, want = _again(root, "validate", run), manifest(_prep(root), "validate")
    assert got["counts"] == want["counts"]
    stable = _stable(want["outputs"], VALIDATE_UNSTABLE)
    assert {"validated/part-00000.parquet", "seed_en.jsonl", "native.jsonl", "report.json",
            "quarantine.jsonl"} <= stable.keys()
    assert _stable(got["outputs"], VALIDATE_UNSTABLE) == stable


def test_translate_killed_translates_only_what_is_not_cached(store: Path) -> None:
    root = store
    run = copy_run(root, "translate", drop_after="translate")
    key = _cached(root, "translate", run)
    cache, ref_cache = run.parent / "tcache", root / PREP / "tcache"
    by_model = cache_rows(ref_cache)  # what the model translated in one uninterrupted run
    _kill(root, "translate", run, lambda k: cache_rows(cache) > 0,
          "a model translation committed to the cache")
    left = cache_rows(cache)
    assert 0 < left < by_model, f"{left} of {by_model} translations cached at the kill"
    _half_done(root, "translate", run, key)

    _again(root, "translate", run)
    got = json.loads((run / "translate" / "report.json").read_text())
    want = json.loads((_prep(root) / "translate" / "report.json").read_text())
    # the same lookups; what the killed attempt committed is now a hit, not a model call
    assert got["cache_hits"] + got["cache_misses"] == want["cache_hits"] + want["cache_misses"]
    assert got["cache_hits"] == want["cache_hits"] + left > 0
    assert got["cache_misses"] == want["cache_misses"] - left
    for name in ("seed_pt.jsonl", "quarantine.jsonl"):
        assert (run / "translate" / name).read_bytes() == \
            (_prep(root) / "translate" / name).read_bytes(), name
    assert got["kept"] == want["kept"] > 0 and got["quarantined"] == want["quarantined"] > 0
    assert cache_table(cache) == cache_table(ref_cache)  # same keys, same targets


def test_mix_killed_redoes_its_work(store: Path) -> None:
    root = store
    run = copy_run(root, "mix", drop_after="mix")
    key = _cached(root, "mix", run)
    _kill(root, "mix", run, lambda k: written_since(run / "mix", k.started_ns),
          "a file written by mix")
    _half_done(root, "mix", run, key)

    got, want = _again(root, "mix", run), manifest(_prep(root), "mix")
    assert got["outputs_digest"] == want["outputs_digest"]
    assert got["counts"] == want["counts"]


@pytest.mark.parametrize("stage", ["align", "dpo"])
def test_training_killed_after_a_checkpoint_resumes_exactly(store: Path, stage: str) -> None:
    from safetensors.numpy import load_file

    root = store
    run = copy_run(root, stage, drop_after=stage)
    key = _cached(root, stage, run)
    folder = run / stage / "checkpoints"
    _kill(root, stage, run, lambda k: bool(sealed_checkpoints(folder)), "a sealed checkpoint")
    newest = int(sealed_checkpoints(folder)[-1].name.split("-")[1])
    _half_done(root, stage, run, key)

    got, want = _again(root, stage, run), manifest(_prep(root), stage)
    assert want["resumed_from_step"] is None and got["resumed_from_step"] == newest
    assert len(got["loss_history"]) == len(want["loss_history"]) == want["counts"]["steps"]
    for step, (a, b) in enumerate(zip(want["loss_history"], got["loss_history"],
                                      strict=True), 1):
        assert abs(a - b) < 1e-6, f"step {step}: uninterrupted {a}, resumed {b}"
    final = load_file(str(run / stage / "model" / "model.safetensors"))
    expected = load_file(str(_prep(root) / stage / "model" / "model.safetensors"))
    assert final.keys() == expected.keys()
    for name, value in expected.items():
        assert abs(final[name] - value).max(initial=0.0) <= 1e-6, name
    assert stage_run_ids(root, stage, run) == [got["mlflow_run_id"]]  # resumed, not a new run


def test_evaluate_killed_redoes_its_work(store: Path) -> None:
    root = store
    run = copy_run(root, "evaluate", drop_after="evaluate")
    key = _cached(root, "evaluate", run)
    _kill(root, "evaluate", run, lambda k: bool(stage_run_ids(root, "evaluate", run))
          and not (run / "evaluate" / "manifest.json").exists(),
          "its MLflow run and its old outputs cleared")
    _half_done(root, "evaluate", run, key)

    got, want = _again(root, "evaluate", run), manifest(_prep(root), "evaluate")
    results = json.loads((run / "evaluate" / "results.json").read_text())
    assert results == json.loads((_prep(root) / "evaluate" / "results.json").read_text())
    assert got["outputs_digest"] == want["outputs_digest"]


def test_register_killed_leaves_one_aliased_version(store: Path) -> None:
    """Killed once its version exists in the registry: the sign is that version's row, and
    the test then holds the store's write lock, so the command stops at its next write
    (tagging the version complete, moving the alias) and the kill lands there."""
    root = store
    reg = _settings(root).register_
    run = copy_run(root, "register")
    key = _cached(root, "register", run)
    db = sqlite3.connect(root / "mlflow.db", timeout=60, isolation_level=None)
    try:
        before, _ = registry(db, reg.model_name)
        assert before  # the prepared run registered one
        killed = Killed(stage_cmd("register", run), root, run.parent, "register-killed")
        killed.wait_for(lambda: bool(stage_run_ids(root, "register", run))
                        and not (run / "register" / "manifest.json").exists(),
                        "its MLflow run and its old outputs cleared")
        status = killed.kill_when(lambda: registry(db, reg.model_name)[0].keys() - before,
                                  "a new version in the registry", pause=0,
                                  freeze=lambda: db.execute("BEGIN IMMEDIATE"))
        try:
            at_kill, aliases = registry(db, reg.model_name)
        finally:
            db.execute("ROLLBACK")
        assert status == -signal.SIGKILL, killed.err.read_text()[-2000:]
        left = at_kill.keys() - before.keys()
        assert len(left) == 1, at_kill
        # an alias never points at a version whose registration did not complete
        assert all(at_kill[v] == "complete" for v in aliases.values()), (at_kill, aliases)
        print(f"\nregister: killed {killed.signed_after_s:.2f} s after its start; its "
              f"version {sorted(left)} was {[at_kill[v] for v in left]}, aliases {aliases}")
        _half_done(root, "register", run, key)

        got = _again(root, "register", run)
        after, aliases = registry(db, reg.model_name)
    finally:
        db.close()
    new = after.keys() - before.keys() - left
    assert len(new) == 1, after
    (version,) = new
    assert aliases[reg.alias] == version and after[version] == "complete"
    assert not set(aliases.values()) & left  # no alias on a version of the killed attempt
    assert got["registration"]["version"] == version
    assert json.loads((run / "register" / "registration.json").read_text())["version"] == version
