"""Shared test fixtures: tiny sizes, float64 where parity is checked."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# one thread: the tensors in unit tests are tiny and the CI machine has 2 cores
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = Path(os.environ.get("VSML_SHARED_DATASETS", REPO.parent / "shared" / "datasets"))


def shared_dataset_dir(name: str) -> Path:
    """Folder of a real dataset beside the checkout, or skip the test."""
    d = SHARED_DATASETS / name
    if not (d / "t10k-labels-idx1-ubyte.gz").exists():
        pytest.skip(f"real dataset {name!r} not found in {SHARED_DATASETS}")
    return d
