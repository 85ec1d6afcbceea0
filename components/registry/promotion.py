"""Promotion and rollback of the `champion` alias: serialised per store
(`promotion_lock`), compare-and-set, a decision record on each version and the
`champion.history` that rollback walks back.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from components.errors import AmaliaError, ConfigError, MissingInputError
from components.registry.gate import GateResult, load_sample_scores, paired_bootstrap
from components.registry.register import _client, alias_version
from components.registry.tags import (
    HISTORY_KEEP,
    LEASE_S,
    LEASE_SETTLE_S,
    TAG_DECISION,
    TAG_HISTORY,
    TAG_LOCK,
    TAG_PREVIOUS,
    TAG_SCORES,
    TAG_STATUS,
)
from components.settings import GateSettings


@contextmanager
def promotion_lock(model_name: str, kind: str = "auto", timeout_s: float = 120.0
                   ) -> Iterator[str]:
    """Serialise promotions and rollbacks of `model_name`; yields what was locked.

    `file` (default for a `sqlite:///` store): an exclusive `flock` on
    `<db>.promote.lock` beside the database, real mutual exclusion for every process
    sharing that file on one host. `registry` (default otherwise, e.g. an MLflow server):
    a lease in the registered-model tag `promotion.lock` (owner, expiry), taken by writing
    it, waiting `LEASE_SETTLE_S` and reading it back; the last writer wins the lease.
    MLflow has no compare-and-set, so the lease assumes no contender stalls longer than
    the settle time between reading and writing it; `promote` re-checks the alias on top.
    """
    from components.tracking import tracking_uri

    uri = tracking_uri()
    if kind == "auto":
        kind = "file" if uri.startswith("sqlite:///") else "registry"
    if kind == "file":
        if not uri.startswith("sqlite:///"):
            raise ConfigError(f"a file lock needs a sqlite:/// store, not {uri}")
        db = Path(uri[len("sqlite:///"):])
        with _file_lock(db.with_name(db.name + ".promote.lock"), timeout_s) as where:
            yield where
    elif kind == "registry":
        with _registry_lease(model_name, timeout_s) as where:
            yield where
    else:
        raise ConfigError(f"unknown promotion lock '{kind}' (auto, file, registry)")


@contextmanager
def _file_lock(path: Path, timeout_s: float) -> Iterator[str]:
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise AmaliaError(f"another promotion has held {path} for over "
                                      f"{timeout_s:.0f} s", "wait for it, then retry") from None
                time.sleep(0.05)
        try:
            yield f"file:{path}"
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextmanager
def _registry_lease(model_name: str, timeout_s: float) -> Iterator[str]:
    import random

    client = _client()
    owner = f"{getpass.getuser()}@{socket.gethostname()}:{os.getpid()}"
    deadline = time.monotonic() + timeout_s
    while True:
        held = _lease(client.get_registered_model(model_name).tags or {})
        if held and held["expires"] > time.time():
            if time.monotonic() > deadline:
                raise AmaliaError(f"promotion lease on '{model_name}' held by {held['owner']}",
                                  f"wait, or delete the model tag '{TAG_LOCK}' if it is stale")
            time.sleep(0.1 + random.random() * 0.2)
            continue
        value = json.dumps({"token": uuid.uuid4().hex, "owner": owner,
                            "expires": time.time() + LEASE_S})
        client.set_registered_model_tag(model_name, TAG_LOCK, value)
        time.sleep(LEASE_SETTLE_S)
        if (client.get_registered_model(model_name).tags or {}).get(TAG_LOCK) == value:
            break
    try:
        yield f"registry:{model_name}"
    finally:
        if (client.get_registered_model(model_name).tags or {}).get(TAG_LOCK) == value:
            client.delete_registered_model_tag(model_name, TAG_LOCK)


def _lease(tags: dict[str, str]) -> dict[str, Any] | None:
    try:
        held = json.loads(tags[TAG_LOCK])
        return {"owner": str(held["owner"]), "expires": float(held["expires"])}
    except (KeyError, ValueError, TypeError):
        return None





@dataclass
class PromotionDecision:
    promoted: bool
    reason: str
    model_name: str
    challenger_version: str | None
    champion_version_before: str | None
    challenger_score: float | None
    champion_score: float | None
    forced: bool = False
    by: str = ""
    at: str = ""
    gate: GateResult | None = None


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _version(v: Any) -> str | None:
    return str(v.version) if v is not None else None


def history(model_name: str) -> list[str]:
    """The versions that were champion, oldest first (registered-model tag)."""
    tags = _client().get_registered_model(model_name).tags or {}
    try:
        return [str(v) for v in json.loads(tags.get(TAG_HISTORY, "[]"))]
    except ValueError:
        return []


def _set_history(model_name: str, versions: list[str]) -> None:
    _client().set_registered_model_tag(model_name, TAG_HISTORY,
                                       json.dumps(versions[-HISTORY_KEEP:]))


def _decide(model_name: str, challenger: Any, champion: Any, gate: GateSettings,
            force: bool, reason: str | None, from_alias: str, to_alias: str) -> PromotionDecision:
    def mean_tag(v: Any) -> float | None:
        value = (v.tags or {}).get("eval.mean_score") if v is not None else None
        return float(value) if value is not None else None

    decision = PromotionDecision(False, "", model_name, _version(challenger),
                                 _version(champion), mean_tag(challenger), mean_tag(champion),
                                 forced=force, by=getpass.getuser(), at=_now())
    status = (challenger.tags or {}).get(TAG_STATUS)
    if champion is not None and champion.version == challenger.version:
        decision.reason = f"version {challenger.version} is already {to_alias}"
        return decision
    if status in ("pending", "failed"):  # refused even when forced: it may be incomplete
        decision.reason = (f"version {challenger.version}'s registration did not complete "
                           f"({TAG_STATUS}={status}); register again")
        return decision
    if champion is None:
        decision.promoted = True
        decision.reason = f"no {to_alias} yet" + (f" (forced: {reason})" if force else "")
        return decision
    try:
        ch, cp = load_sample_scores(challenger), load_sample_scores(champion)
    except AmaliaError:
        if not force:
            raise
        ch = cp = None
    if ch is not None and cp is not None:
        decision.gate = paired_bootstrap(cp, ch, gate)
    if force:
        decision.promoted = True
        gate_note = f"; the gate said: {decision.gate.reason}" if decision.gate else ""
        decision.reason = f"forced by {decision.by}: {reason}{gate_note}"
    elif ch is None:
        decision.reason = (f"{from_alias} v{challenger.version} has no per-sample scores "
                           f"(tag {TAG_SCORES}); register it again")
    elif cp is None:
        decision.reason = (f"{to_alias} v{champion.version} has no per-sample scores "
                           f"(tag {TAG_SCORES}): promote with --force --reason TEXT")
    else:
        decision.promoted = decision.gate.passed
        decision.reason = decision.gate.reason
    return decision


def _record(decision: PromotionDecision) -> dict[str, Any]:
    out = asdict(decision)
    if decision.gate is not None:  # the per-task table stays readable, the record compact
        out["gate"] = {k: v for k, v in out["gate"].items() if k != "tasks"}
        out["gate"]["tasks"] = {t.task: {"n": t.n, "delta": t.delta, "ci": [t.ci_low, t.ci_high],
                                         "ok": t.ok} for t in decision.gate.tasks}
    return out


def promote(
    model_name: str,
    from_alias: str = "challenger",
    to_alias: str = "champion",
    force: bool = False,
    reason: str | None = None,
    gate: GateSettings | None = None,
    lock: str = "auto",
) -> PromotionDecision:
    """Point `to_alias` at the `from_alias` version if the gate passes (see
    `paired_bootstrap`), if there is no `to_alias` yet, or if `force` (with a `reason`).

    Under `promotion_lock`: the aliases are read, the decision made, recorded on the
    challenger (tag `promotion.decision`; on promotion also `promotion.by/at/reason/forced`
    and `champion.previous`), the alias re-read (it moved: decide again against the new
    champion), set, read back, and the version appended to `champion.history`. Promoting
    the version that already is champion changes nothing.
    """
    gate = gate or GateSettings()
    if force and not (reason and reason.strip()):
        raise ConfigError("a forced promotion needs a reason", "pass --reason TEXT")
    if alias_version(model_name, from_alias) is None:
        raise MissingInputError(f"no '{from_alias}' alias on model '{model_name}'",
                                "run: amalia-vl retrain")
    client = _client()
    with promotion_lock(model_name, lock):
        for _attempt in range(3):
            challenger = alias_version(model_name, from_alias)
            champion = alias_version(model_name, to_alias)
            if challenger is None:
                raise MissingInputError(f"no '{from_alias}' alias on model '{model_name}'",
                                        "run: amalia-vl retrain")
            decision = _decide(model_name, challenger, champion, gate, force, reason,
                               from_alias, to_alias)
            version = str(challenger.version)
            if champion is not None and champion.version == challenger.version:
                return decision
            if not decision.promoted:
                client.set_model_version_tag(model_name, version, TAG_DECISION,
                                             json.dumps(_record(decision)))
                return decision
            if _version(alias_version(model_name, to_alias)) != _version(champion):
                continue  # moved while deciding (a lease lost to a stall): decide again
            for key, value in {TAG_DECISION: json.dumps(_record(decision)),
                               "promotion.at": decision.at, "promotion.by": decision.by,
                               "promotion.reason": decision.reason,
                               "promotion.forced": str(force).lower(),
                               TAG_PREVIOUS: _version(champion) or "none"}.items():
                client.set_model_version_tag(model_name, version, key, value)
            client.set_registered_model_alias(model_name, to_alias, version)
            after = _version(alias_version(model_name, to_alias))
            if after != version:
                raise AmaliaError(f"lost a promotion race: {to_alias} is now v{after}, "
                                  f"not v{version}", "run: amalia-vl promote  (to re-check)")
            past = history(model_name)
            if champion is not None and (not past or past[-1] != _version(champion)):
                past.append(_version(champion))  # a champion set by hand joins the history
            _set_history(model_name, [*past, version])
            return decision
    raise AmaliaError(f"'{to_alias}' of '{model_name}' kept moving during the promotion",
                      "run: amalia-vl promote  (again)")


@dataclass
class RollbackResult:
    model_name: str
    alias: str
    from_version: str
    to_version: str
    by: str
    at: str


def rollback(model_name: str, alias: str = "champion", reason: str | None = None,
             lock: str = "auto") -> RollbackResult:
    """Point `alias` back at the version it replaced: the one before it in
    `champion.history` (else its `champion.previous` tag). Rolling back again goes one
    further. Records `rollback.by/at/from/reason` on the restored version."""
    from mlflow.exceptions import MlflowException

    if alias_version(model_name, alias) is None:
        raise MissingInputError(f"no '{alias}' alias on model '{model_name}': nothing to roll "
                                f"back", "run: amalia-vl promote")
    client = _client()
    with promotion_lock(model_name, lock):
        current = alias_version(model_name, alias)
        if current is None:
            raise MissingInputError(f"no '{alias}' alias on model '{model_name}'")
        cur = str(current.version)
        past = history(model_name)
        if past and past[-1] == cur:
            past = past[:-1]
        target = past[-1] if past else (current.tags or {}).get(TAG_PREVIOUS)
        if not target or target == "none":
            raise AmaliaError(f"no previous {alias} of '{model_name}' to roll back to "
                              f"(v{cur} is the first)")
        try:
            client.get_model_version(model_name, target)
        except MlflowException:
            raise AmaliaError(f"the previous {alias} v{target} of '{model_name}' no longer "
                              f"exists") from None
        result = RollbackResult(model_name, alias, cur, str(target), getpass.getuser(), _now())
        for key, value in {"rollback.at": result.at, "rollback.by": result.by,
                           "rollback.from": cur, "rollback.reason": reason or ""}.items():
            client.set_model_version_tag(model_name, target, key, value)
        client.set_registered_model_alias(model_name, alias, target)
        if _version(alias_version(model_name, alias)) != str(target):
            raise AmaliaError(f"'{alias}' moved during the rollback", "check, then retry")
        _set_history(model_name, past if past else [str(target)])
        return result


def decision_dict(decision: PromotionDecision) -> dict[str, Any]:
    return asdict(decision)
