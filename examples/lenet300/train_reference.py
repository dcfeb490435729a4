"""Train the reference LeNet300 that every config of this folder compresses.

The LC toolkit's reference recipe: SGD with momentum 0.9 (Nesterov here, as in
its L steps), batch 256, learning rate 0.1 decayed by 0.99 after every epoch.
It trains for 300 epochs; 100 reach the same test error on MNIST (the loss
barely moves after that), so 100 is the default here. The weights are saved as
safetensors to runs/lenet300_reference.safetensors (git-ignored), which the
configs load; ``run_all.py`` calls this when the file is missing.

    python train_reference.py [--epochs 100] [--force]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import lenet300

from lcpress import TrainConfig
from lcpress import LStep
from lcpress import SupervisedTrainer, accuracy


def train(path: Path = lenet300.REFERENCE, epochs: int = 100, lr: float = 0.1, decay: float = 0.99,
          seed: int = 0, subset: int | None = None, quiet: bool = False) -> float:
    """Train, save to ``path`` and return the test error (a fraction)."""
    train_loader, test_loader = lenet300.loaders(seed=seed, subset=subset)
    torch.manual_seed(seed)
    model = lenet300.lenet300()
    # one call per epoch: the trainer's lr for "step" k is lr · decay^k, i.e. decay after every epoch
    trainer = SupervisedTrainer(train_loader, TrainConfig(epochs=1, lr=lr, lr_decay=decay, momentum=0.9,
                                                          nesterov=True), progress=False)
    start = time.perf_counter()
    for epoch in range(epochs):
        loss = trainer(model, lambda: torch.zeros(()), LStep(epoch, 0.0, epochs))
        if not quiet and (epoch + 1) % 10 == 0:
            error = 1 - accuracy(model, test_loader)
            print(f"epoch {epoch + 1}/{epochs}: train loss {loss:.4f}, test error {100 * error:.2f}% "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
    error = 1 - accuracy(model, test_loader)
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    if not quiet:
        print(f"saved {path}: test error {100 * error:.2f}%")
    return error


def ensure(path: Path = lenet300.REFERENCE, **kwargs) -> Path:
    """The reference weights, trained first when the file is missing."""
    if not path.is_file():
        train(path, **kwargs)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--output", type=Path, default=lenet300.REFERENCE)
    parser.add_argument("--force", action="store_true", help="retrain even if the weights exist")
    args = parser.parse_args()
    if args.output.is_file() and not args.force:
        print(f"{args.output} exists (--force retrains)")
        return
    train(args.output, epochs=args.epochs)


if __name__ == "__main__":
    main()
