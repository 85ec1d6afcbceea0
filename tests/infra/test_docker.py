"""Static checks of the container images (docker/Dockerfile.*) and their build context.

No Docker engine runs here, so nothing is built. hadolint lints each Dockerfile; small
parsers check what it does not: a non-root numeric USER in the final stage, several stages
of which the last takes its artifacts from an earlier one, base images at exact versions,
an exec-form ENTRYPOINT, no editable install, pins that agree with pyproject, and a
.dockerignore that keeps the context small without dropping what the Dockerfiles COPY.
Every check is also run on a deliberately bad input, so a check that cannot fail shows.
"""

from __future__ import annotations

import json
import re
import subprocess
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted((REPO / "docker").glob("Dockerfile*"))
EXPECTED = {"Dockerfile.gpu", "Dockerfile.cpu", "Dockerfile.mlflow"}

# The strictest threshold (fail on any finding, `style` included): the files are short and
# new, so zero findings is cheap to keep, and a rule we disagree with is ignored inline
# (`# hadolint ignore=DLxxxx`) next to its reason, where review sees it.
HADOLINT_ARGS = ["--no-color", "--failure-threshold", "style"]

BAD_DOCKERFILE = "FROM ubuntu:latest\nRUN apt-get update && apt-get install -y curl\n"


# ---- a Dockerfile, parsed just enough -------------------------------------------------

def instructions(text: str) -> list[tuple[int, str, str]]:
    """(first line, INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    out: list[tuple[int, str, str]] = []
    buf, start = "", 0
    for no, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        # Docker drops comment and blank lines, inside a continuation too
        if not stripped or stripped.startswith("#"):
            continue
        if not buf:
            start = no
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        instr, _, args = (buf + stripped).partition(" ")
        out.append((start, instr.upper(), args.strip()))
        buf = ""
    return out


def stages(instrs: list[tuple[int, str, str]]) -> list[list[tuple[int, str, str]]]:
    """The instructions of each build stage, each list starting with its FROM."""
    out: list[list[tuple[int, str, str]]] = []
    for ins in instrs:
        if ins[1] == "FROM":
            out.append([ins])
        elif out:
            out[-1].append(ins)
    return out


def from_image(args: str) -> tuple[str, str | None]:
    """(image, stage alias) of a FROM's arguments, flags such as --platform left out."""
    words = [w for w in args.split() if not w.startswith("--")]
    alias = words[2].lower() if len(words) >= 3 and words[1].upper() == "AS" else None
    return words[0], alias


def arg_defaults(text: str) -> dict[str, str]:
    """Default of every `ARG NAME=value` in the file (the first one given)."""
    out: dict[str, str] = {}
    for _, instr, args in instructions(text):
        if instr == "ARG" and "=" in args:
            name, _, value = args.partition("=")
            out.setdefault(name.strip(), value.strip().strip('"'))
    return out


def final_stage(text: str) -> list[tuple[int, str, str]]:
    return stages(instructions(text))[-1]


def image_problems(text: str) -> list[str]:
    """Why a Dockerfile breaks the images' rules, one line each; [] when it keeps them."""
    problems: list[str] = []
    st = stages(instructions(text))
    if len(st) < 2:
        problems.append(f"{len(st)} stage(s): build tools and caches ship in the image")
    earlier: set[str] = set()
    for stage in st:
        line, _, args = stage[0]
        image, alias = from_image(args)
        if image.lower() not in earlier:
            name, _, digest = image.partition("@")
            tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else ""
            if "$" in image:
                problems.append(f"line {line}: FROM {image}: a variable hides the tag")
            elif not tag and not digest:
                problems.append(f"line {line}: FROM {image}: no tag means :latest")
            elif tag == "latest":
                problems.append(f"line {line}: FROM {image}: :latest moves")
            elif not digest and not re.search(r"\d+\.\d+\.\d+", tag):
                problems.append(f"line {line}: FROM {image}: tag is not an exact x.y.z version")
        if alias:
            earlier.add(alias)
    final = st[-1] if st else []
    users = [args for _, instr, args in final if instr == "USER"]
    if not users:
        problems.append("final stage has no USER: it runs as the base image's root")
    else:
        user = users[-1].split(":")[0]
        if user in ("root", "0"):
            problems.append(f"final USER is {user}")
        elif not user.isdigit():
            # kubelet can only enforce runAsNonRoot on a numeric UID
            problems.append(f"final USER {user} is not a numeric UID")
    entrypoints = [args for _, instr, args in final if instr == "ENTRYPOINT"]
    if not entrypoints:
        problems.append("final stage has no ENTRYPOINT")
    else:
        try:
            exec_form = isinstance(json.loads(entrypoints[-1]), list)
        except json.JSONDecodeError:
            exec_form = False
        if not exec_form:
            problems.append("ENTRYPOINT is not exec (JSON) form: signals reach a shell")
    if len(st) >= 2 and not any(  # COPY --from=stage, RUN --mount=...,from=stage
        re.search(r"(--|,)from=", args) for _, instr, args in final if instr in ("COPY", "RUN")
    ):
        problems.append("final stage takes nothing from an earlier stage (COPY/RUN --from=)")
    for line, instr, args in final:
        if instr == "RUN" and re.search(r"pip install\b[^&;|]*\s(-e|--editable)\b", args):
            problems.append(f"line {line}: editable install: the image needs its source tree")
    return problems


def run_hadolint(hadolint: Path, path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(hadolint), *HADOLINT_ARGS, str(path)], capture_output=True,
                          text=True, timeout=60)


# ---- the images -----------------------------------------------------------------------

def test_dockerfiles_found():
    # an empty glob would make every parametrized test below vanish and the module pass
    names = {p.name for p in DOCKERFILES}
    assert len(DOCKERFILES) >= 3 and EXPECTED <= names, f"docker/ holds {sorted(names)}"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_clean(hadolint, path):
    res = run_hadolint(hadolint, path)
    assert res.returncode == 0, f"hadolint {path.name}:\n{res.stdout}{res.stderr}"


def test_hadolint_fails_on_bad_dockerfile(hadolint, tmp_path):
    bad = tmp_path / "Dockerfile.bad"
    bad.write_text(BAD_DOCKERFILE)
    res = run_hadolint(hadolint, bad)
    assert res.returncode != 0
    lines = res.stdout.splitlines()
    for rule in ("DL3007", "DL3008"):  # :latest, unpinned apt package
        assert any(line.startswith(f"{bad}:") and rule in line for line in lines), res.stdout


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_image_rules(path):
    problems = image_problems(path.read_text())
    assert not problems, f"{path.name}:\n" + "\n".join(problems)


GOOD = """\
FROM python:3.11.15-slim-trixie AS builder
RUN pip wheel --no-deps -w /wheels .
FROM python:3.11.15-slim-trixie
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels pip install /wheels/x.whl
USER 10001:10001
ENTRYPOINT ["amalia-vl"]
"""
BAD_CASES = {
    "latest": (("python:3.11.15-slim-trixie AS builder", "ubuntu:latest AS builder"), ":latest"),
    "untagged": (("python:3.11.15-slim-trixie AS builder", "ubuntu AS builder"), "no tag"),
    "floating": (("3.11.15-slim-trixie\n", "3.11-slim\n"), "exact x.y.z"),
    "variable": (("python:3.11.15-slim-trixie AS", "python:${PY} AS"), "variable"),
    "root": (("USER 10001:10001", "USER root"), "final USER is root"),
    "named user": (("USER 10001:10001", "USER amalia"), "not a numeric UID"),
    "no user": (("USER 10001:10001\n", ""), "no USER"),
    "shell entrypoint": (('ENTRYPOINT ["amalia-vl"]', "ENTRYPOINT amalia-vl"), "exec (JSON)"),
    "no entrypoint": (('ENTRYPOINT ["amalia-vl"]\n', ""), "no ENTRYPOINT"),
    "nothing from builder": (("--mount=type=bind,from=builder,source=/wheels,target=/wheels ",
                              ""), "takes nothing"),
    "editable": (("pip install /wheels/x.whl", "pip install -e ."), "editable"),
}


def test_image_rules_pass_the_good_template():
    assert image_problems(GOOD) == []


@pytest.mark.parametrize("case", BAD_CASES, ids=str)
def test_image_rules_catch(case):
    (old, new), expected = BAD_CASES[case]
    assert old in GOOD
    problems = image_problems(GOOD.replace(old, new))
    assert any(expected in p for p in problems), problems


def test_image_rules_catch_single_stage():
    problems = image_problems(BAD_DOCKERFILE)
    assert any("1 stage(s)" in p for p in problems) and any(":latest" in p for p in problems)


def _pins() -> dict[str, str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + [r for extra in project["optional-dependencies"].values()
                                      for r in extra]
    return dict(r.split("==", 1) for r in reqs if "==" in r and ";" not in r)


def _text(name: str) -> str:
    return (REPO / "docker" / name).read_text()


def test_pins_agree_with_pyproject():
    # the server must speak the client's MLflow, and the images must run the tested torch
    pins = _pins()
    gpu, cpu, mlflow = (arg_defaults(_text(f"Dockerfile.{n}")) for n in ("gpu", "cpu", "mlflow"))
    assert gpu["TORCH_VERSION"] == cpu["TORCH_VERSION"] == pins["torch"]
    assert mlflow["MLFLOW_VERSION"] == pins["mlflow"]
    assert mlflow["BOTO3_VERSION"] == pins["boto3"] == pins["botocore"]
    assert mlflow["PSYCOPG2_VERSION"] == pins["psycopg2-binary"]


def test_gpu_image_builds_on_devel_and_runs_on_runtime_of_one_cuda():
    text = _text("Dockerfile.gpu")
    images = [from_image(s[0][2])[0] for s in stages(instructions(text))]
    cuda = [re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-(.+)-ubuntu[\d.]+", i) for i in images]
    assert all(cuda), images
    assert "devel" in cuda[0][3], f"builder {images[0]} has no nvcc for flash-attn"
    assert cuda[-1][3] in ("runtime", "cudnn-runtime"), f"final stage {images[-1]}"
    assert {m.group(1, 2) for m in cuda} == {cuda[0].group(1, 2)}, images
    # torch's CUDA build must match the base images' CUDA, or flash-attn builds against a
    # different toolkit than the torch it links
    index = arg_defaults(text)["TORCH_INDEX_URL"]
    assert index.endswith("/cu" + "".join(cuda[0].group(1, 2))), (index, images)
    assert any(instr == "RUN" and "[gpu]" in args for _, instr, args in final_stage(text))


def test_cpu_image_uses_cpu_torch():
    assert arg_defaults(_text("Dockerfile.cpu"))["TORCH_INDEX_URL"].endswith("/whl/cpu")


@pytest.mark.parametrize(("name", "entrypoint"), [
    ("Dockerfile.gpu", ["amalia-vl"]),  # infra/prefect/gpu-job-template.json relies on it
    ("Dockerfile.cpu", ["amalia-vl"]),
    ("Dockerfile.mlflow", ["mlflow", "server"]),  # the Deployment passes only args
])
def test_entrypoint(name, entrypoint):
    final = final_stage(_text(name))
    assert json.loads([a for _, i, a in final if i == "ENTRYPOINT"][-1]) == entrypoint


def test_mlflow_image_serves_5000_with_healthcheck():
    final = final_stage(_text("Dockerfile.mlflow"))
    assert "5000" in [a for _, i, a in final if i == "EXPOSE"]
    assert any(i == "HEALTHCHECK" and "/health" in a for _, i, a in final)


# ---- the build context (.dockerignore) --------------------------------------------------

def ignore_rules(text: str) -> list[tuple[bool, re.Pattern]]:
    """(is_exception, regex) per .dockerignore line, as Docker's patternmatcher builds them."""
    rules = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        pattern = line[1:].strip() if exception else line
        pattern = pattern.strip("/")
        regex, i = "^", 0
        while i < len(pattern):
            ch = pattern[i]
            if pattern.startswith("**", i):  # any number of directories, even none
                i += 3 if pattern.startswith("/", i + 2) else 2
                regex += ".*" if i >= len(pattern) else "(.*/)?"
                continue
            regex += {"*": "[^/]*", "?": "[^/]"}.get(ch, ch if ch in "[]-^" else re.escape(ch))
            i += 1
        rules.append((exception, re.compile(regex + "$")))
    return rules


def excluded(path: str, rules: list[tuple[bool, re.Pattern]]) -> bool:
    """Whether Docker leaves `path` (relative, with /) out: the last matching rule decides,
    a rule matching a parent directory matches everything in it."""
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    out = False
    for exception, regex in rules:
        if exception == out and any(regex.match(c) for c in candidates):
            out = not exception
    return out


MUST_EXCLUDE = [
    ".venv/bin/python", ".venv-iac/bin/checkov", ".git/HEAD", "runs/r1/mix/manifest.json",
    "mlruns/0/meta.yaml", "mlartifacts/1/model.pkl", "mlflow.db", ".prefect/prefect.db",
    ".amalia/mlflow.db", "components/__pycache__/settings.cpython-311.pyc",
    "data/native/images/colour-test-0001.png", "bench/results/x.tmp", ".dvc/cache/files/ab",
    ".dvc-store/files/md5/ab/cd", ".cache/huggingface/x", "amalia_vl.egg-info/PKG-INFO",
    ".pytest_cache/v/cache/lastfailed", ".env", "infra/terraform/.terraform/providers/x",
    "infra/terraform/terraform.tfstate",
]


def copied_sources() -> list[str]:
    """Every context path a Dockerfile COPYs (not those copied from another stage)."""
    out: list[str] = []
    for path in DOCKERFILES:
        for _, instr, args in instructions(path.read_text()):
            words = args.split()
            if instr in ("COPY", "ADD") and not any(w.startswith("--from=") for w in words):
                out += [w.rstrip("/") for w in words[:-1] if not w.startswith("--")]
    return out


def context_problems(ignore_text: str) -> list[str]:
    """What a .dockerignore lets into the context that must stay out, and what it drops
    that a Dockerfile COPYs (a build that fails, or a wheel without its package data)."""
    rules = ignore_rules(ignore_text)
    problems = [f"{p} is sent to the daemon" for p in MUST_EXCLUDE if not excluded(p, rules)]
    for src in copied_sources():
        root = REPO / src
        files = [root] if root.is_file() else [
            f for f in root.rglob("*") if f.is_file() and "__pycache__" not in f.parts]
        if not files:
            problems.append(f"COPY {src}: nothing there")
        problems += [f"COPY {src}: {f.relative_to(REPO)} is excluded" for f in files
                     if excluded(f.relative_to(REPO).as_posix(), rules)]
    return problems


def test_dockerignore():
    assert copied_sources(), "no COPY found in docker/Dockerfile*"
    problems = context_problems((REPO / ".dockerignore").read_text())
    assert not problems, ".dockerignore:\n" + "\n".join(problems)


def test_dockerignore_check_catches_bad_files():
    problems = context_problems(".venv\n*.md\n**/*.yaml\n")
    joined = "\n".join(problems)
    assert ".venv-iac/bin/checkov is sent" in joined and ".git/HEAD is sent" in joined
    assert "README.md is excluded" in joined and "params.yaml is excluded" in joined
    # an exception re-includes; a pattern on a directory takes its whole tree
    rules = ignore_rules("docs\n!docs/keep.md\n**/__pycache__\n")
    assert excluded("docs/a/b.txt", rules) and not excluded("docs/keep.md", rules)
    assert excluded("a/b/__pycache__/c.pyc", rules) and not excluded("docsx", rules)
