"""Shared fixtures: deterministic seeds, no third-party plugins unless a test asks."""

from __future__ import annotations

import contextlib
import os
import tempfile

import pytest
import torch

os.environ.setdefault("LCPRESS_QUIET", "1")
# Cost tables and trained built-in models are cached per user; the suite keeps its own, fresh each session.
os.environ.setdefault("LCPRESS_CACHE_DIR", tempfile.mkdtemp(prefix="lcpress-test-cache-"))
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
    from lcpress.runs.demo import digits_loaders

    return digits_loaders(batch_size=64, seed=0)


@pytest.fixture(scope="session")
def dense_mlp():
    """A 64-64-64-10 MLP trained two epochs on digits, shared by the suite: copy it before compressing it."""
    from torch import nn

    from lcpress.runs.demo import digits_loaders, train_dense

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    train_dense(model, digits_loaders(64, 0)[0], epochs=2, progress=False)
    return model


@pytest.fixture
def plugins():
    """Register plugin objects for one test: ``plugins(obj, ...)`` returns the registry.

    The process registry is swapped for one holding the objects (and the
    built-ins), and restored when the test ends — see
    :func:`lcpress.core.registry.using_plugins`.
    """
    from lcpress.core.registry import using_plugins

    with contextlib.ExitStack() as stack:
        yield lambda *objs: stack.enter_context(using_plugins(*objs))


class Interrupt(Exception):
    """What :func:`power_cut` raises inside a run, like a crash between checkpoints."""


@pytest.fixture
def power_cut():
    """``with power_cut(at=k): lcpress.compress(...)``: the default trainer dies when L step ``k`` starts.

    The block expects the interruption (it fails if the run finishes), and the
    trainer is itself again after it, ready for the resumed run.
    """
    from lcpress.runs.training import SupervisedTrainer

    @contextlib.contextmanager
    def cut(at: int):
        original = SupervisedTrainer.__call__

        def interrupted(self, model, penalty, step):
            if step.index == at:
                raise Interrupt(f"power cut at L step {at}")
            return original(self, model, penalty, step)

        with pytest.MonkeyPatch.context() as patch, pytest.raises(Interrupt):
            patch.setattr(SupervisedTrainer, "__call__", interrupted)
            yield

    return cut
