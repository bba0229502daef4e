"""Fixtures of the inference tests (helpers in helpers.py, shared with the serve and CLI tests)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


def load_helpers():
    """tests/inference/helpers.py as a module (test folders are not packages under --import-mode=importlib)."""
    spec = importlib.util.spec_from_file_location("imgcls_test_helpers", Path(__file__).with_name("helpers.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


helpers = load_helpers()


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
