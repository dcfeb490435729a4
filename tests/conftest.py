"""Shared fixtures: deterministic seeds, no third-party plugins unless a test asks."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("LCPRESS_QUIET", "1")
# Keep third-party plugins installed in this environment out of the suite;
# tests that exercise discovery turn autoload back on themselves.
os.environ.setdefault("LCPRESS_DISABLE_PLUGIN_AUTOLOAD", "1")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def digits():
    """(train_loader, test_loader) of scikit-learn's digits."""
    from lcpress.demo import digits_loaders

    return digits_loaders(batch_size=64, seed=0)
