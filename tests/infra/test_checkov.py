"""checkov over the infrastructure code (infra/) and the images (docker/), offline.

One checkov call scans both directories with every framework that applies (terraform,
kubernetes, kustomize, dockerfile, secrets); its JSON is parsed once and shared by the
tests through a module fixture, because each call costs seconds of two shared cores.
A failed check is printed as `file:line CHECK_ID name`, one per line.

Offline: BC_SKIP_MAPPING (no guideline mapping fetched), CKV_SKIP_PACKAGE_UPDATE_CHECK (no
PyPI version check), --skip-download (nothing from the platform) and no API key.
Not scanned: the `json` framework has no built-in checks (custom policies only), and helm
needs a helm binary. kustomize renders through `kubectl kustomize` (checkov drops the
framework silently without kubectl/kustomize, hence the passed-checks test below).
No --quiet: with it the JSON keeps only failed checks and counts, and these tests need the
passed checks (per file) and the skipped ones (with their reasons) too.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FRAMEWORKS = ("terraform", "kubernetes", "kustomize", "dockerfile", "secrets")
# Frameworks the committed tree must give passed checks, so a wrong path, a parser that
# sees nothing or a framework checkov dropped cannot pass as "0 failed". secrets reports
# findings only (the bad-input test proves it alive); kustomize once there is a kustomization.
MUST_SCAN = ("terraform", "kubernetes", "dockerfile") + (
    ("kustomize",) if any((REPO / "infra").rglob("kustomization.yaml")) else ())


def run_checkov(checkov: Path, dirs: list[str], frameworks: tuple[str, ...],
                cwd: Path) -> tuple[dict[str, dict], float]:
    """{framework: {"failed", "passed", "skipped", "parsing_errors": lists}} and seconds."""
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "CKV_SKIP_PACKAGE_UPDATE_CHECK": "TRUE"}
    for key in ("BC_API_KEY", "PRISMA_API_URL"):
        env.pop(key, None)
    cmd = [str(checkov), *[a for d in dirs for a in ("-d", d)], "--framework", *frameworks,
           "--compact", "-o", "json", "--skip-download"]
    start = time.monotonic()
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    elapsed = time.monotonic() - start
    if res.returncode not in (0, 1):  # 1: some check failed; anything else: checkov broke
        pytest.fail(f"checkov exited {res.returncode}: {res.stderr.strip()[-2000:]}",
                    pytrace=False)
    return parse(res.stdout), elapsed


def parse(stdout: str) -> dict[str, dict]:
    """Merge checkov's JSON output: one document per -d, each a report or a list of them
    (one per framework); a bare summary stands for "nothing found" and adds nothing.
    checkov 3.3.30 repeats the earlier directories' reports in each later document, so
    a result seen before (same check, file, resource, lines, module caller) counts once."""
    merged: dict[str, dict] = {}
    seen: set[tuple] = set()
    decoder, pos = json.JSONDecoder(), 0
    while pos < len(stdout):
        if stdout[pos].isspace():
            pos += 1
            continue
        doc, pos = decoder.raw_decode(stdout, pos)
        for report in doc if isinstance(doc, list) else [doc]:
            if "check_type" not in report:
                continue
            into = merged.setdefault(report["check_type"], {
                "failed": [], "passed": [], "skipped": [], "parsing_errors": []})
            results = report["results"]
            for key in ("failed", "passed", "skipped"):
                for c in results.get(f"{key}_checks", []):
                    ident = (report["check_type"], key, c["check_id"], c.get("file_abs_path"),
                             c.get("resource"), tuple(c.get("file_line_range") or ()),
                             c.get("caller_file_path"))  # one module, called per env
                    if ident not in seen:
                        seen.add(ident)
                        into[key].append(c)
            into["parsing_errors"] += [e for e in results.get("parsing_errors", [])
                                       if e not in into["parsing_errors"]]
    return merged


def where(check: dict, cwd: Path) -> str:
    """`path:line` of a check, the path relative to cwd. checkov 3.3.30 is not consistent:
    file_path is relative to the scanned dir (dockerfile) or to cwd (kubernetes, whose
    file_abs_path then repeats the dir), so the first candidate that exists wins."""
    rel = [check.get(k, "").lstrip("/") for k in ("file_path", "repo_file_path")]
    candidates = [Path(check.get("file_abs_path") or "/nonexistent"), *(cwd / r for r in rel)]
    path = next((c for c in candidates if c.is_file()), Path(rel[0]))
    if path.is_absolute() and path.is_relative_to(cwd):
        path = path.relative_to(cwd)
    return f"{path.as_posix()}:{(check.get('file_line_range') or [0])[0]}"


def lines(checks: list[dict], cwd: Path) -> list[str]:
    """`file:line CHECK_ID name`, one per check."""
    return [f"{where(c, cwd)} {c['check_id']} {c['check_name']}" for c in checks]


@pytest.fixture(scope="module")
def scan(checkov) -> dict[str, dict]:
    reports, elapsed = run_checkov(checkov, ["infra", "docker"], FRAMEWORKS, REPO)
    counts = {fw: {k: len(v) for k, v in r.items()} for fw, r in reports.items()}
    print(f"\ncheckov -d infra -d docker: {elapsed:.1f}s {counts}")
    return reports


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_no_failed_checks(scan, framework):
    report = scan.get(framework, {"failed": [], "parsing_errors": []})
    found = lines(report["failed"], REPO)
    if found:
        pytest.fail(f"{len(found)} failed {framework} check(s):\n" + "\n".join(found),
                    pytrace=False)
    # a file checkov cannot parse is not checked at all, and counts nowhere else
    assert report["parsing_errors"] == [], "checkov could not parse these"


@pytest.mark.parametrize("framework", MUST_SCAN)
def test_framework_scanned_something(scan, framework):
    passed = len(scan.get(framework, {}).get("passed", []))
    hint = " (kustomize needs kubectl or kustomize on PATH)" if framework == "kustomize" else ""
    assert passed > 0, f"no {framework} check passed{hint}; frameworks with results: {sorted(scan)}"


def test_images_pass_checkov(scan):
    # the images on their own, whatever state infra/ is in: every Dockerfile scanned, none
    # failing (the same result as `checkov -d docker --framework dockerfile`)
    report = scan.get("dockerfile", {"failed": [], "passed": []})
    dockerfiles = sorted(p.relative_to(REPO).as_posix()
                         for p in (REPO / "docker").glob("Dockerfile*"))
    passed = Counter(where(c, REPO).rsplit(":", 1)[0] for c in report["passed"])
    failed = [x for x in lines(report["failed"], REPO) if x.startswith("docker/")]
    unscanned = [d for d in dockerfiles if not passed[d]]
    assert len(dockerfiles) >= 3 and unscanned == [], f"checkov passed nothing in {unscanned}"
    if failed:
        pytest.fail("\n".join(failed), pytrace=False)


def test_skips_carry_reasons(scan):
    # a `checkov:skip=ID: reason` without a reason hides a finding from review
    skipped = [(fw, c) for fw, r in scan.items() for c in r["skipped"]]
    shown = {f"skipped {fw}: {where(c, REPO)} {c['check_id']}: "
             f"{(c['check_result'].get('suppress_comment') or '').strip()}" for fw, c in skipped}
    print("\n" + "\n".join(sorted(shown)))
    bare = [f"{where(c, REPO)} {c['check_id']}" for _, c in skipped
            if len((c["check_result"].get("suppress_comment") or "").strip()) < 10]
    assert not bare, f"skipped without a reason: {bare}"


def test_bad_input_is_reported(checkov, tmp_path):
    (tmp_path / "Dockerfile").write_text(
        "FROM ubuntu:latest\nRUN apt-get update && apt-get install -y curl\n")
    # AWS's documented example key, split so that this file itself holds no secret
    key_id, secret = "AKIA" + "IOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/" + "bPxRfiCYEXAMPLEKEY"
    (tmp_path / "main.tf").write_text(f"""\
provider "aws" {{
  region     = "eu-west-1"
  access_key = "{key_id}"
  secret_key = "{secret}"
}}

resource "aws_s3_bucket" "public" {{
  bucket = "amalia-vl-public"
  acl    = "public-read"
}}
""")
    reports, elapsed = run_checkov(checkov, ["."], ("dockerfile", "terraform", "secrets"),
                                   tmp_path)
    print(f"\ncheckov on bad input: {elapsed:.1f}s")
    found = "\n".join(lines([c for r in reports.values() for c in r["failed"]], tmp_path))
    for expected in (
        "Dockerfile:1 CKV_DOCKER_7 ",  # base image on :latest
        "Dockerfile:1 CKV_DOCKER_3 ",  # no USER
        "main.tf:7 CKV_AWS_20 ",  # public-read ACL
        "main.tf:7 CKV2_AWS_6 ",  # no public access block
        "main.tf:7 CKV_AWS_145 ",  # not KMS-encrypted
        "main.tf:3 CKV_SECRET_2 ",  # an AWS access key in the code
    ):
        assert expected in found, f"{expected!r} not in:\n{found}"
