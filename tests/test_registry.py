"""The registry against a real (SQLite) MLflow store and a real tiny LlavaNext: versions
registered by the real code with their lineage and per-sample scores; the promotion gate
(a paired bootstrap over both versions' per-sample scores); forced promotion; rollback; two
processes promoting at once; a registration that fails half-way leaving no alias."""

from __future__ import annotations

import getpass
import json
import multiprocessing
import random
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from components.errors import AmaliaError, ConfigError, MissingInputError
from components.settings import GateSettings
from tests.train_helpers import REPO, SMALL_MODEL

NAME = "amalia-vl-gate"
N = 40  # samples per task


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """One tiny save_pretrained folder, registered as every version of these tests."""
    from components.model.build import build_tiny_model, save_model
    from components.settings import load_settings

    settings = load_settings("tiny", REPO / "params.yaml", overrides={"model": SMALL_MODEL})
    model, processor = build_tiny_model(settings, ["Um círculo vermelho.", "De que cor é?",
                                                   "azul verde amarelo"] * 4)
    return save_model(model, processor, tmp_path_factory.mktemp("tiny") / "model")


def scores_of(per_task: dict[str, list[float]]) -> dict:
    """The compact per-sample scores file for `{task: [score per item]}` (ids i0, i1...)."""
    return {"format": 1, "model": "dpo",
            "tasks": {t: {"scale": 1.0, "n": len(v)} for t, v in per_task.items()},
            "scores": [[t, f"i{i}", s] for t, v in per_task.items() for i, s in enumerate(v)]}


def flipped(base: list[float], up: int = 0, down: int = 0, seed: int = 0) -> list[float]:
    """`base` with `up` of its zeros turned to 1 and `down` of its ones turned to 0."""
    rng = random.Random(seed)
    out = list(base)
    zeros = [i for i, s in enumerate(out) if s == 0.0]
    ones = [i for i, s in enumerate(out) if s == 1.0]
    for i in rng.sample(zeros, up):
        out[i] = 1.0
    for i in rng.sample(ones, down):
        out[i] = 0.0
    return out


def accuracy(k: int, seed: int) -> list[float]:
    """N binary scores with `k` ones at seeded places."""
    ones = set(random.Random(seed).sample(range(N), k))
    return [1.0 if i in ones else 0.0 for i in range(N)]


@pytest.fixture()
def register(mlflow_uri, model_dir):
    """Register the tiny model with the real `log_and_register`, carrying `per_task` as
    its per-sample scores; `alias` (default challenger) then points at it."""
    import mlflow

    from components.registry import log_and_register

    def add(per_task: dict[str, list[float]] | None, alias: str = "challenger") -> str:
        means = {t: sum(v) / len(v) for t, v in (per_task or {}).items()}
        tags = {f"eval.{t}": f"{m:.4f}" for t, m in means.items()}
        if means:
            tags["eval.mean_score"] = f"{sum(means.values()) / len(means):.4f}"
        with mlflow.start_run(run_name="register-test"):
            reg = log_and_register(model_dir, NAME, alias, tags,
                                   sample_scores=scores_of(per_task) if per_task else None)
        return reg["version"]

    from mlflow import MlflowClient

    add.client = MlflowClient(tracking_uri=mlflow_uri)
    return add


def champion_version(client) -> str:
    return str(client.get_model_version_by_alias(NAME, "champion").version)


def decision_record(client, version: str) -> dict:
    return json.loads(client.get_model_version(NAME, version).tags["promotion.decision"])


# ------------------------------------------------------------------- the gate itself


def test_bootstrap_pairs_by_task_and_id_and_is_seeded() -> None:
    from components.registry import paired_bootstrap

    base = accuracy(20, seed=1)
    champion = scores_of({"count": base, "colour": base})
    better = scores_of({"count": flipped(base, up=12), "colour": flipped(base, up=12)})
    better["scores"] = list(reversed(better["scores"]))  # order does not matter, ids do
    better["scores"].append(["count", "only-in-challenger", 1.0])  # unpaired: ignored
    gate = GateSettings(resamples=500, seed=3)
    a, b = paired_bootstrap(champion, better, gate), paired_bootstrap(champion, better, gate)
    assert a.passed and a.ci_low > 0 and a.mean_delta == pytest.approx(12 / N)
    assert (a.ci_low, a.ci_high) == (b.ci_low, b.ci_high)
    assert [t.n for t in a.tasks] == [N, N]
    # the same multiset of scores, paired differently, is no improvement at all
    shuffled = scores_of({"count": base, "colour": base})
    shuffled["scores"] = [[t, f"i{(int(i[1:]) + 1) % N}", s] for t, i, s in shuffled["scores"]]
    assert not paired_bootstrap(champion, shuffled, gate).passed
    better["scores"].append(["chart", "c0", 1.0])  # a task the champion never saw
    assert "not gated (scored for one version only): chart" in \
        paired_bootstrap(champion, better, gate).reason
    explicit = paired_bootstrap(champion, better, GateSettings(tasks=["count", "chart"]))
    assert not explicit.passed and "chart not evaluated on both" in explicit.reason


def test_no_champion_promotes_and_the_same_version_again_is_a_no_op(register) -> None:
    from components.registry import history, promote

    first = register({"count": accuracy(20, 1)})
    decision = promote(NAME)
    assert decision.promoted and "no champion" in decision.reason
    assert champion_version(register.client) == first and history(NAME) == [first]
    again = promote(NAME)
    assert not again.promoted and "already champion" in again.reason
    assert history(NAME) == [first]


def test_clearly_better_challenger_is_promoted_and_its_ci_excludes_zero(register) -> None:
    from components.registry import history, promote

    base = accuracy(20, 1), accuracy(16, 2)
    first = register({"count": base[0], "colour": base[1]})
    promote(NAME)
    better = register({"count": flipped(base[0], up=12), "colour": flipped(base[1], up=10)})
    decision = promote(NAME)
    assert decision.promoted, decision.reason
    assert decision.gate.ci_low > 0 and decision.gate.ci_high >= decision.gate.mean_delta
    assert "clears margin" in decision.reason and "CI [" in decision.reason
    assert champion_version(register.client) == better
    assert history(NAME) == [first, better]
    record = decision_record(register.client, better)
    assert record["promoted"] and record["champion_version_before"] == first
    tags = register.client.get_model_version(NAME, better).tags
    assert tags["champion.previous"] == first and tags["promotion.forced"] == "false"


def test_higher_mean_but_one_task_dropping_is_refused_with_a_table(register, monkeypatch,
                                                                     ) -> None:
    from amalia_vl.cli import app
    from components.registry import promote

    base = accuracy(16, 1), accuracy(30, 2)
    first = register({"count": base[0], "colour": base[1]})
    promote(NAME)
    # count +0.5, colour -0.25: the mean rises by 0.125, colour drops far beyond 0.05
    register({"count": flipped(base[0], up=20), "colour": flipped(base[1], down=10)})
    decision = promote(NAME)
    assert not decision.promoted
    assert decision.gate.mean_delta == pytest.approx(0.125) and decision.gate.ci_low > 0
    assert "task colour may drop" in decision.reason and "margin" not in decision.reason
    by_task = {t.task: t for t in decision.gate.tasks}
    assert by_task["count"].ok and not by_task["colour"].ok
    assert champion_version(register.client) == first

    monkeypatch.setenv("COLUMNS", "200")
    result = CliRunner().invoke(app, ["promote", "--name", NAME])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "kept" in out and "refused" in out and "task colour may drop" in out
    assert any(ln.split()[1:2] == ["colour"] and "drop" in ln for ln in out.splitlines()), out
    assert champion_version(register.client) == first


def test_better_by_less_than_the_margin_is_refused(register) -> None:
    from components.registry import paired_bootstrap, promote

    base = accuracy(16, 1), accuracy(16, 2)
    first = register({"count": base[0], "colour": base[1]})
    promote(NAME)
    ch = {"count": flipped(base[0], up=6), "colour": flipped(base[1], up=6)}  # +0.15 each
    register(ch)
    decision = promote(NAME, gate=GateSettings(margin=0.2))
    assert not decision.promoted and "does not clear margin 0.2000" in decision.reason
    assert decision.gate.ci_low > 0  # a real improvement, only smaller than required
    assert champion_version(register.client) == first
    cp = scores_of({"count": base[0], "colour": base[1]})
    assert paired_bootstrap(cp, scores_of(ch), GateSettings()).passed  # margin 0: it would


def test_force_records_who_why_when_and_rollback_restores(register) -> None:
    from amalia_vl.cli import app
    from components.registry import history, promote, rollback

    base = accuracy(30, 1)
    first = register({"count": base})
    promote(NAME)
    worse = register({"count": flipped(base, down=20)})
    assert not promote(NAME).promoted
    with pytest.raises(ConfigError, match="needs a reason"):
        promote(NAME, force=True)
    decision = promote(NAME, force=True, reason="hotfix for the demo")
    assert decision.promoted and decision.forced and "hotfix for the demo" in decision.reason
    assert "the gate said" in decision.reason  # what the force overrode is kept
    tags = register.client.get_model_version(NAME, worse).tags
    assert tags["promotion.forced"] == "true" and tags["promotion.by"] == getpass.getuser()
    assert "hotfix for the demo" in tags["promotion.reason"] and tags["promotion.at"]
    assert champion_version(register.client) == worse and history(NAME) == [first, worse]

    undone = rollback(NAME, reason="bad answers")
    assert (undone.from_version, undone.to_version) == (worse, first)
    assert champion_version(register.client) == first and history(NAME) == [first]
    tags = register.client.get_model_version(NAME, first).tags
    assert tags["rollback.from"] == worse and tags["rollback.by"] == getpass.getuser()
    with pytest.raises(AmaliaError, match="no previous champion"):
        rollback(NAME)
    result = CliRunner().invoke(app, ["rollback", "--name", NAME])
    assert result.exit_code == 1
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "no previous" in lines[0]
    assert champion_version(register.client) == first


def test_no_challenger_or_champion_is_a_clear_error(mlflow_uri) -> None:
    from components.registry import promote, rollback

    with pytest.raises(MissingInputError, match="no 'challenger' alias"):
        promote("never-registered")
    with pytest.raises(MissingInputError, match="no 'champion' alias"):
        rollback("never-registered")


# ----------------------------------------------------------------------------- races


def _promote_in_child(uri: str, cwd: str, alias: str, lock: str, barrier, queue) -> None:
    """One racing promotion in its own process. Deciding takes 1.5 s and moving the alias
    1 s longer than usual, so without serialisation both processes judge against the same
    champion and both pass the re-check before either alias moves."""
    import os
    import time

    from mlflow import MlflowClient

    os.environ["MLFLOW_TRACKING_URI"] = uri
    os.chdir(cwd)
    from components import registry
    from components.registry import promotion

    real_gate, real_alias = promotion.paired_bootstrap, MlflowClient.set_registered_model_alias

    def slow_gate(*args, **kwargs):
        time.sleep(1.5)
        return real_gate(*args, **kwargs)

    def slow_alias(*args, **kwargs):
        time.sleep(1.0)
        return real_alias(*args, **kwargs)

    promotion.paired_bootstrap = slow_gate  # what promote() calls
    MlflowClient.set_registered_model_alias = slow_alias
    barrier.wait(timeout=120)
    try:
        d = registry.promote(NAME, from_alias=alias, lock=lock)
        queue.put((alias, d.promoted, d.challenger_version, d.champion_version_before,
                   d.reason))
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        queue.put((alias, None, None, None, f"{type(exc).__name__}: {exc}"))


@pytest.mark.parametrize("lock", ["file", "registry"])
def test_two_racing_promotions_leave_one_consistent_champion(register, mlflow_uri, tmp_path,
                                                             lock) -> None:
    from components.registry import history

    base = accuracy(16, 1)
    first = register({"count": base})
    from components.registry import promote

    promote(NAME)
    same = flipped(base, up=16)  # both candidates clearly beat v1, neither beats the other
    a = register({"count": same}, alias="cand-a")
    b = register({"count": same}, alias="cand-b")

    ctx = multiprocessing.get_context("spawn")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_promote_in_child,
                         args=(mlflow_uri, str(tmp_path), alias, lock, barrier, queue))
             for alias in ("cand-a", "cand-b")]
    for p in procs:
        p.start()
    results = {}
    for _ in procs:
        alias, promoted, version, before, reason = queue.get(timeout=180)
        results[alias] = (promoted, version, before, reason)
    for p in procs:
        p.join(timeout=60)
    assert all(r[0] is not None for r in results.values()), results
    winners = [r for r in results.values() if r[0]]
    losers = [r for r in results.values() if not r[0]]
    assert len(winners) == 1 and len(losers) == 1, results
    final = champion_version(register.client)
    assert final == winners[0][1] and final in (a, b)
    assert winners[0][2] == first
    # the loser was judged against the winner, not against the champion both started from
    assert losers[0][2] == final and "does not clear margin" in losers[0][3]
    record = decision_record(register.client, final)
    assert record["promoted"] and record["champion_version_before"] == first
    loser_version = b if final == a else a
    loser_record = decision_record(register.client, loser_version)
    assert not loser_record["promoted"] and loser_record["champion_version_before"] == final
    assert history(NAME) == [first, final]
    assert "promotion.lock" not in register.client.get_registered_model(NAME).tags


# -------------------------------------------------------------- failed registrations


def test_failed_registration_leaves_no_alias_on_the_broken_version(register, model_dir,
                                                                   monkeypatch, tmp_path) -> None:
    import mlflow
    from mlflow import MlflowClient

    from components.registry import log_and_register, promote

    good = register({"count": accuracy(20, 1)})
    client = register.client

    def broken(self, *args, **kwargs):
        raise RuntimeError("store went away")

    with monkeypatch.context() as patch:
        patch.setattr(MlflowClient, "set_model_version_tag", broken)
        with mlflow.start_run(), pytest.raises(AmaliaError) as caught:
            log_and_register(model_dir, NAME, "challenger", {"eval.mean_score": "0.9"},
                             sample_scores=scores_of({"count": accuracy(39, 2)}))
    assert "version 2 failed" in str(caught.value) and "was not moved" in str(caught.value)
    half = client.get_model_version(NAME, "2")
    assert half.tags["amalia.registration"] == "pending" and not half.aliases
    assert str(client.get_model_version_by_alias(NAME, "challenger").version) == good

    # an operator pointing the alias at it by hand cannot promote it, not even by force
    client.set_registered_model_alias(NAME, "challenger", "2")
    decision = promote(NAME, force=True, reason="try anyway")
    assert not decision.promoted and "did not complete" in decision.reason
    assert not client.get_registered_model(NAME).aliases.get("champion")

    # a model folder with an unreadable file fails before any version is created
    bad = tmp_path / "bad-model"
    shutil.copytree(model_dir, bad)
    (bad / "model.safetensors").unlink()
    (bad / "model.safetensors").symlink_to(tmp_path / "gone")
    with mlflow.start_run(), pytest.raises(MissingInputError, match="cannot read model file"):
        log_and_register(bad, NAME, "challenger", {})
    assert len(client.search_model_versions(f"name='{NAME}'")) == 2


# -------------------------------------------------------------- registration lineage


def test_register_stage_tags_lineage_and_logs_per_sample_scores(mlflow_uri, model_dir,
                                                                tmp_path) -> None:
    import mlflow

    from components.manifest import write_manifest
    from components.pipeline import run_tracked_stage
    from components.registry import load_sample_scores
    from components.settings import load_settings
    from components.tracking import parent_run

    run = tmp_path / "runs" / "r1"
    shutil.copytree(model_dir, run / "dpo" / "model")
    write_manifest(run / "dpo", "dpo", inputs={}, counts={}, metrics={}, config_digest="t",
                   started="now")
    ev = run / "evaluate"
    ev.mkdir(parents=True)
    rows = [{"model": m, "task": t, "id": f"{t}-{i}", "score": float((i + k) % 2)}
            for k, m in enumerate(("dpo", "sft")) for t in ("count", "chart") for i in range(5)]
    rows.append({"model": "dpo", "task": "chart", "id": "unscored"})  # no score: left out
    (ev / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (ev / "comparison.json").write_text(json.dumps(
        {"dpo": {"count": {"scale": 1.0}, "chart": {"scale": 1.0}}}))
    (ev / "results.json").write_text(json.dumps({
        "count": {"score": 0.6, "chance": 0.1, "n": 5, "metric": "exact_match"},
        "chart": {"score": 0.4, "chance": 0.0, "n": 5, "metric": "relaxed_accuracy"},
        "_summary": {"mean_score": 0.5, "min_score_over_chance": 4.0}, "_skipped": {}}))
    write_manifest(ev, "evaluate", inputs={}, counts={}, metrics={}, config_digest="t",
                   started="now")
    (tmp_path / "data").mkdir()
    (tmp_path / "data.dvc").write_text("outs:\n- md5: 0123abcd.dir\n  path: data\n")
    settings = load_settings("tiny", REPO / "params.yaml",
                             overrides={"model": SMALL_MODEL, "register": {"model_name": NAME}})

    with parent_run(settings, run) as parent_id:
        manifest = run_tracked_stage("register", settings, run, parent_id, progress=False)
    version = manifest["registration"]["version"]
    v = mlflow.MlflowClient(mlflow_uri).get_model_version(NAME, version)
    tags = v.tags
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                          text=True).stdout.strip() or "unknown"
    assert tags["git.commit"] == head
    assert tags["dvc.data_md5"] == "0123abcd.dir"
    assert tags["amalia.params_digest"] == settings.digest()
    assert tags["eval.count"] == "0.6000" and tags["eval.chart"] == "0.4000"
    assert tags["eval.mean_score"] == "0.5000"
    assert tags["amalia.parent_run_id"] == parent_id
    reg_run = mlflow.get_run(tags["amalia.registration_run_id"])
    assert reg_run.data.tags["mlflow.parentRunId"] == parent_id
    assert reg_run.data.tags["amalia.registered_version"] == f"{NAME}/{version}"
    for stage in ("dpo", "evaluate"):
        digest = json.loads((run / stage / "manifest.json").read_text())["outputs_digest"]
        assert tags[f"amalia.input.{stage}"] == digest
    assert tags["amalia.registration"] == "complete" and v.aliases == ["challenger"]
    assert "r1" in v.description and "0.5000" in v.description
    scores = load_sample_scores(v)
    assert scores["tasks"] == {"count": {"scale": 1.0, "n": 5}, "chart": {"scale": 1.0, "n": 5}}
    expected = sorted([r["task"], r["id"], r["score"]] for r in rows
                      if r["model"] == "dpo" and "score" in r)
    assert sorted(scores["scores"]) == expected
