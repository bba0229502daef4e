"""Fixtures of the inference tests (helpers in helpers.py, shared with the serve and CLI tests)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.inference import helpers


@pytest.fixture
def kit():
    """The helper module: ``kit.write_run``, ``kit.write_images``, ``kit.photo``, ``kit.TINY``."""
    return helpers


@pytest.fixture
def run_folder(tmp_path) -> Path:
    return helpers.write_run(tmp_path / "run")


@pytest.fixture
def images(tmp_path) -> list[Path]:
    return helpers.write_images(tmp_path / "images", 12)
