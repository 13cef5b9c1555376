"""Shared fixtures. Everything is real: files in tmp_path, subprocesses, seeded simulators."""

from __future__ import annotations

import pytest

from rtopt_lab.simulate import LLMTaskSimulator


@pytest.fixture(scope="session")
def sim() -> LLMTaskSimulator:
    return LLMTaskSimulator()
