"""Time the LC toolkit's own code on a row of its LeNet300 table, on this machine and this data.

The reference implementation (UCMerced-ML/LC-model-compression) is not on
PyPI and is not part of lcpress; clone it anywhere and point ``--lc-toolkit``
at the clone (the folder holding its ``lc`` package; it needs numpy, scipy
and scikit-learn, no torchvision)::

    git clone https://github.com/UCMerced-ML/LC-model-compression /tmp/lc-toolkit
    python lc_toolkit.py --lc-toolkit /tmp/lc-toolkit --row rank_selection

This script drives their ``lc.Algorithm`` the way their
``examples/lenet300/lenet300.py`` does — their compression tasks and μ
schedule per row, their L step (a fresh SGD + Nesterov optimizer per L step,
``lr_base·0.98^k``, 20 epochs and 40 in the first, ``loss.item()`` per batch),
their evaluation after every step (train and test accuracy) — on one torch
thread, with what lcpress's rows use instead of what needs a GPU and
torchvision: the MNIST tensors of ``lenet300.mnist()`` in a
``DataLoader(batch_size=256, shuffle=True)`` and the reference weights of
``runs/lenet300_reference.safetensors`` (``--weights`` names another, e.g.
their own net as ``lc_reference.py`` converts it). It writes ``runs/lc_toolkit-<row>.json``
(test error after every step, the forms chosen, the parameter count their
code reports, wall time), which ``run_all.py`` puts beside lcpress's row.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

import lenet300

HERE = Path(__file__).resolve().parent


def tasks(lc_modules, net, row: str):
    """Their compression tasks, μ schedule and lr_base for ``row`` (their lenet300.py, per experiment)."""
    from lc.compression_types import AdaptiveQuantization, ConstraintL0Pruning, LowRank, RankSelection
    from lc.torch import AsIs, AsVector
    from lc.torch import ParameterTorch as Param

    device = torch.device("cpu")
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    getters = [lambda m=m: m.weight for m in linears]
    if row == "rank_selection":
        found = {Param(g, device): (AsIs, RankSelection(conv_scheme="scheme_1", alpha=1e-6, criterion="storage",
                                                         normalize=False, module=m), f"task_{i}")
                 for i, (g, m) in enumerate(zip(getters, linears))}
        return found, [1e-3 * 1.1**n for n in range(40)], 0.1
    if row == "prune_5pct":
        return {Param(getters, device): (AsVector, ConstraintL0Pruning(kappa=13310), "pruning")}, \
            [9e-5 * 1.1**n for n in range(40)], 0.1
    if row in ("quantize_all", "quantize_1_3"):
        chosen = [0, 1, 2] if row == "quantize_all" else [0, 2]
        return {Param(getters[i], device): (AsVector, AdaptiveQuantization(k=2), f"task_{i}") for i in chosen}, \
            [9e-5 * 1.1**n for n in range(40)], 0.09
    if row == "mixed":
        return {Param(getters[0], device): (AsVector, ConstraintL0Pruning(kappa=5000), "pruning"),
                Param(getters[1], device): (AsIs, LowRank(target_rank=10, conv_scheme=None), "low-rank"),
                Param(getters[2], device): (AsVector, AdaptiveQuantization(k=2), "quantization")}, \
            [9e-5 * 1.4**n for n in range(40)], 0.05
    if row == "additive":
        return {Param(getters, device): [(AsVector, ConstraintL0Pruning(kappa=2662), "pruning"),
                                         (AsVector, AdaptiveQuantization(k=2), "quant")]}, \
            [9e-5 * 1.1**n for n in range(40)], 0.09
    raise SystemExit(f"unknown row {row!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lc-toolkit", required=True, type=Path, help="a clone of UCMerced-ML/LC-model-compression")
    parser.add_argument("--row", default="rank_selection")
    parser.add_argument("--epochs", type=int, default=20, help="epochs per L step (40 in the first)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--subset", type=int, default=None, help="first N images of each split (smoke runs)")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--weights", type=Path, default=lenet300.REFERENCE,
                        help="the reference net to compress (default: train_reference.py's; lc_reference.py converts "
                             "theirs)")
    args = parser.parse_args()
    sys.path.insert(0, str(args.lc_toolkit.resolve()))
    import lc
    from lc.models.torch import lenet300_classic
    from safetensors.torch import load_file

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    train, test = lenet300.mnist(args.subset)
    train_loader = DataLoader(train, batch_size=lenet300.BATCH_SIZE, shuffle=True)
    test_loader = DataLoader(test, batch_size=lenet300.BATCH_SIZE)
    net = lenet300_classic()
    ours = load_file(str(args.weights))
    net.load_state_dict({theirs: ours[name] for theirs, name in lenet300.LC_TOOLKIT_NAMES.items()})
    compression_tasks, mu_s, lr_base = tasks(lc, net, args.row)
    mu_s = mu_s[:args.steps]
    errors: list[float] = []

    def error(loader) -> float:
        correct = 0
        with torch.no_grad():
            for x, y in loader:
                correct += int((net(x).argmax(1) == y).sum())
        return 1 - correct / len(loader.dataset)

    def evaluate(model) -> None:  # their evaluation: train and test accuracy after every step
        error(train_loader)
        errors.append(error(test_loader))

    def l_step(model, lc_penalty, step) -> None:
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=lr_base * 0.98**step, momentum=0.9, nesterov=True)
        for _ in range(args.epochs * (2 if step == 0 else 1)):
            losses = []
            for x, target in train_loader:
                optimizer.zero_grad()
                loss = model.loss(model(x), target) + lc_penalty()
                losses.append(loss.item())
                loss.backward()
                optimizer.step()

    start = time.perf_counter()
    algorithm = lc.Algorithm(model=net, compression_tasks=compression_tasks, l_step_optimization=l_step,
                             mu_schedule=mu_s, evaluation_func=evaluate)
    algorithm.run()
    seconds = time.perf_counter() - start
    forms = [getattr(c, "selected_rank", None) for _, c, _ in
             (t for t in algorithm.compression_tasks.values() if isinstance(t, tuple))]
    result = {"row": args.row, "test_error": errors[-1], "errors": errors, "seconds": seconds,
              "params": int(algorithm.count_params()), "param_bits": int(algorithm.count_param_bits()),
              "ranks": forms if args.row == "rank_selection" else None, "epochs": args.epochs, "steps": len(mu_s),
              "seed": args.seed, "threads": torch.get_num_threads()}
    out = args.output or HERE / "runs" / f"lc_toolkit-{args.row}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"LC toolkit, {args.row}: test error {100 * errors[-1]:.2f}%, {result['params']:,} stored values, "
          f"{seconds:.0f} s → {out}")


if __name__ == "__main__":
    main()
