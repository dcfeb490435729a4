"""The built-in example: a small CNN on scikit-learn's digits (nothing downloaded).

scikit-learn ships the 1,797 8×8 digit images inside the package, so the demo
and the test suite run offline. The split is stratified and seeded, so every
run sees the same train and test sets.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lcpress.config import TrainConfig
from lcpress.core.engine import LStep
from lcpress.errors import LcpressError
from lcpress.progress import status_line
from lcpress.runs.training import SupervisedTrainer


def digits_tensors(seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """(train, test) datasets of 1×8×8 images scaled to [0, 1], 80/20 stratified split."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise LcpressError("the digits data set needs scikit-learn: pip install 'lcpress[demo]'") from None
    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    train_idx, test_idx = train_test_split(
        torch.arange(len(y)).numpy(), test_size=0.2, random_state=seed, stratify=y.numpy()
    )
    return TensorDataset(x[train_idx], y[train_idx]), TensorDataset(x[test_idx], y[test_idx])


def digits_loaders(batch_size: int = 64, seed: int = 0) -> tuple[DataLoader, DataLoader]:
    """Shuffled training loader (own seeded generator, so runs resume exactly) and test loader."""
    train, test = digits_tensors(seed)
    generator = torch.Generator().manual_seed(seed)
    return (
        DataLoader(train, batch_size=batch_size, shuffle=True, generator=generator),
        DataLoader(test, batch_size=256),
    )


def digits_cnn() -> nn.Sequential:
    """Three 3×3 convolutions and two Linear layers (≈0.4 M parameters)."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(128 * 4 * 4, 256), nn.ReLU(),
        nn.Linear(256, 10),
    )


def train_dense(model: nn.Module, loader: DataLoader, epochs: int = 30, lr: float = 0.05, progress: bool = True) -> None:
    """Plain supervised training of the reference (dense) model.

    Says how it goes every few epochs (a line on stderr, also when the output
    is a log file), besides the progress bar on a terminal.
    """
    trainer = SupervisedTrainer(loader, TrainConfig(epochs=1, lr=lr, lr_decay=1.0), progress=progress,
                                description="training the dense model, epoch")
    every = max(1, epochs // 6)
    for epoch in range(epochs):
        loss = trainer(model, lambda: torch.zeros(()), LStep(epoch, 0.0, epochs))
        if (epoch + 1) % every == 0 or epoch + 1 == epochs:
            status_line(f"training the dense model: epoch {epoch + 1}/{epochs}, loss {loss:.4f}", enabled=progress)


DEMO_CONFIG = {
    "model": {"builtin": "digits_cnn", "pretrain_epochs": 30},
    "data": {"builtin": "digits", "batch_size": 64},
    "tasks": [
        {
            "layers": ["*"],
            "scheme": "low_rank",
            "options": {"rank_multiple": 8},
            "cost": "flops",
            "target": {"cost": "flops", "ratio": 0.3},
        }
    ],
    "schedule": {"mu0": 3e-2, "factor": 1.5, "steps": 10},
    "train": {"epochs": 2, "lr": 0.02, "lr_decay": 0.95},
    "seed": 0,
}
