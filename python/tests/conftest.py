"""Shared fixtures: the reference data of the Rust crate's tests (tests/data, see its
README for where each file comes from) and small helpers."""

import json
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).resolve().parents[2] / "tests" / "data"


def load(name):
    with open(DATA / name) as fh:
        return json.load(fh)


def rel_err(a, b):
    """‖a − b‖_F / ‖b‖_F."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), np.finfo(float).tiny)


@pytest.fixture
def rng():
    return np.random.default_rng(20)
