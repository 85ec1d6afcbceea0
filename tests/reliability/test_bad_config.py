"""Bad config fails as one line naming the file, the key and (where it has one) the line:
a YAML syntax error, a duplicate key, an unknown key (in base, in a profile that is not
the chosen one, at the top level), a value of the wrong type, an unknown profile. Each
is checked twice: through `load_settings` (the message) and through the CLI (one `error:`
line on stderr, exit status 1, no traceback)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from components.errors import ConfigError
from components.settings import load_settings

REPO = Path(__file__).resolve().parents[2]
GOOD = (REPO / "params.yaml").read_text()
CLI = str(Path(sys.executable).parent / "amalia-vl")


def mutate(old: str, new: str) -> tuple[str, int]:
    """params.yaml with the first `old` replaced by `new`; the 1-based line where `new`
    starts."""
    assert GOOD.count(old) >= 1, old
    at = GOOD.index(old)
    return GOOD.replace(old, new, 1), GOOD[:at].count("\n") + 1


def _syntax():
    text, line = mutate("  seed: 1234\n", "  seed: [1234\n")
    # the parser notices on the next line; it names where the flow sequence began too
    return text, [f":{line + 1}:", "YAML syntax error", f"started at line {line}"]


def _unknown_key():
    text, line = mutate("    min_image_side: 8\n", "    min_image_sid: 8\n")
    return text, [f":{line}:", "unknown key 'base.validate.min_image_sid'",
                  "did you mean 'min_image_side'"]


def _unknown_key_other_profile():
    text, line = mutate("    align: {epochs: 1}\n", "    align: {epoch: 1}\n")
    return text, [f":{line}:", "unknown key 'profiles.ci.align.epoch'", "did you mean 'epochs'"]


def _unknown_top_level():
    text, line = mutate("base:\n", "bsae: {}\nbase:\n")
    return text, [f":{line}:", "unknown top-level key 'bsae'", "did you mean 'base'"]


def _wrong_type():
    text, line = mutate("    workers: 2 ", "    workers: two ")
    return text, [f":{line}:", "invalid value for 'validate.workers'", "valid integer",
                  "'two'"]


def _duplicate_key():
    text, line = mutate("  seed: 1234\n", "  seed: 1234\n  seed: 99\n")
    return text, [f":{line + 1}:", "duplicate key 'base.seed'", f"first at line {line}"]


def _unknown_profile():
    text, _ = mutate("profile: tiny\n", "profile: tinny\n")
    return text, ["unknown profile 'tinny'", "did you mean 'tiny'", "tiny, ci, paper"]


CASES = {
    "syntax_error": _syntax,
    "unknown_key": _unknown_key,
    "unknown_key_in_another_profile": _unknown_key_other_profile,
    "unknown_top_level_key": _unknown_top_level,
    "wrong_type": _wrong_type,
    "duplicate_key": _duplicate_key,
    "unknown_profile": _unknown_profile,
}
# which CLI command reads the bad file (both read params.yaml before doing anything else)
COMMANDS = {
    "syntax_error": ["retrain"],
    "unknown_key": ["stage", "validate"],
    "unknown_key_in_another_profile": ["retrain"],
    "unknown_top_level_key": ["stage", "validate"],
    "wrong_type": ["retrain"],
    "duplicate_key": ["stage", "validate"],
    "unknown_profile": ["retrain"],
}


def write(tmp_path: Path, case: str) -> tuple[Path, list[str]]:
    text, needles = CASES[case]()
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path, needles


def test_the_real_params_file_is_accepted() -> None:
    """The control: every profile of the shipped params.yaml passes the same checks."""
    for profile in ("tiny", "ci", "paper"):
        assert load_settings(profile, REPO / "params.yaml").profile == profile


@pytest.mark.parametrize("case", CASES)
def test_load_settings_names_file_key_and_line(tmp_path: Path, monkeypatch, case: str) -> None:
    monkeypatch.delenv("AMALIA_PROFILE", raising=False)
    path, needles = write(tmp_path, case)
    with pytest.raises(ConfigError) as info:
        load_settings(params_path=path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message, message
    for needle in needles:
        assert needle in message, (needle, message)


@pytest.mark.parametrize("case", CASES)
def test_cli_prints_one_line_and_exits_1(tmp_path: Path, case: str) -> None:
    path, needles = write(tmp_path, case)
    env = {k: v for k, v in os.environ.items() if k != "AMALIA_PROFILE"}
    env["AMALIA_PARAMS"] = str(path)
    proc = subprocess.run([CLI, *COMMANDS[case], "--run-dir", str(tmp_path / "run"),
                           "--no-progress"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr  # the error and nothing else
    line = lines[0]
    assert line.startswith("error:") and str(path) in line, line
    for needle in needles:
        assert needle in line, (needle, line)
    assert not (tmp_path / "run").exists(), "nothing may run on a bad config"
