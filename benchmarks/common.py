"""What every benchmark script shares: the machine line, publishing a table and a plot, fine-tuning,
FLOPs and interleaved latency."""

from __future__ import annotations

import io
import os
import platform
import random
import tempfile
import time
from contextlib import redirect_stdout
from pathlib import Path

import torch
from torch import nn

from torch.utils.flop_counter import FlopCounterMode

from lcpress import TrainConfig
from lcpress.costmodels.cpu_latency import cpu_model
from lcpress import LStep
from lcpress import Dense
from lcpress import trace
from lcpress import get_registry
from lcpress import SupervisedTrainer


def describe() -> str:
    """CPU model, torch threads, torch and Python versions."""
    return f"{cpu_model()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, Python {platform.python_version()}"


def timed(fn, *args):
    """``(seconds, fn(*args))``: one call's wall time and its result."""
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def publish(title: str, preamble: str, lines: list[str], out: str, quick: bool, summary: str = "") -> None:
    """Print the table; outside quick mode, also write it as markdown to ``out``."""
    text = "\n".join([f"# {title}", "", preamble, "", *lines, "", *([summary, ""] if summary else [])])
    print(text)
    if not quick:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text)


def fine_tune(model: torch.nn.Module, train, steps: int, cfg: TrainConfig) -> None:
    """The optimizer, epochs and learning-rate decay of lcpress's L steps, without the penalty.

    In training mode, as lcpress's L steps run (a peer may hand back its model in eval mode, which would
    freeze BatchNorm's statistics and train against stale ones); back in eval mode afterwards.
    """
    trainer = SupervisedTrainer(train, cfg, progress=False)
    model.train()  # as the LC engine's L steps do: BatchNorm learns from batch statistics, not running ones
    for k in range(steps):
        trainer(model, lambda: torch.zeros(()), LStep(k, 0.0, steps))
    model.eval()


def finetune_section(passes: int, lr: float | None) -> dict:
    """lcpress's ``finetune`` config: ``passes`` passes, starting at ``lr`` (finetune.lr) when given and there are any."""
    return {"steps": passes, **({"lr": lr} if lr and passes else {})}


def flops(model: torch.nn.Module, x: torch.Tensor) -> int:
    """FLOPs of one forward pass of ``x``, counted by torch's FlopCounterMode (in eval mode)."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.eval()(x)
    return counter.get_total_flops()


def layer_flops(model: torch.nn.Module, x: torch.Tensor, names: list[str]) -> float:
    """FLOPs of the named layers at the input ``x``, as the ``flops`` cost model (and FlopCounterMode) counts them."""
    graph = trace(model, x)
    cost = get_registry().cost_model("flops")()
    return sum(cost.cost(graph.specs[n], Dense()) for n in names)


def interleaved_latency_ms(models: dict[str, torch.nn.Module], x: torch.Tensor, rounds: int = 15,
                           round_time: float = 0.02) -> dict[str, float]:
    """Median milliseconds per forward pass of each model, timed call by call, the models taking turns.

    Every turn runs each model twice, back to back, and times the second call: its weights are then as warm in
    the caches as when it serves one request after another, whatever the other models evicted. Turns come in
    pairs: the models in a random order, then in the reverse of that order, so a steady change in the
    machine's speed falls on all of them alike, and the result is the median over turns. There are enough
    turns for each model to be timed for about ``rounds × round_time`` seconds, and at least ``4 × rounds``.
    The order is drawn from a fixed seed, so a timing session is repeatable.

    Why a random order: with a fixed one (A B C, C B A, ...) the models at the ends ran four times in a row at
    every other turn boundary, and so were warmer when timed than the ones in the middle. Three copies of one
    model with 10 MB of weights (the large-head MNIST CNN at batch 1) timed the middle copy 6–14% slower than
    the others in each of 13 sessions, whichever copy was in the middle; in a random order they spread by
    0.5–2.5%. Drawn at random, every model runs in every position and after every other model equally often on
    average. For two models nothing changes but which one starts.

    Why not blocks: timing each model for a block of calls per round (``torch.utils.benchmark``, as this helper
    did before) lets noise that lasts about as long as a block fall on one model and not the other. Two
    realizations of the MNIST residual CNN, timed six times in a row each way (blocks in two sessions), gave
    their ratio a standard deviation of 1.2–5.8% in blocks and 0.3–0.5% in turns (a model against its own
    copy: 0.9–2.3% and 0.7–1.0%).

    With one torch thread every op runs on the calling thread, and the clock is that thread's CPU time: on a
    shared machine, time-slicing by other processes then does not count, only what the model itself costs
    (cache sharing still does). With more threads the clock is wall time.
    """
    clock = time.thread_time_ns if torch.get_num_threads() == 1 else time.perf_counter_ns
    samples: dict[str, list[int]] = {name: [] for name in models}
    with torch.no_grad():
        slowest = 1  # ns: the slowest model's one call sizes the run
        for model in models.values():
            model.eval()
            for _ in range(3):  # warm-up
                model(x)
            start = clock()
            model(x)
            slowest = max(slowest, clock() - start)
        turns = max(4 * rounds, int(rounds * round_time * 1e9 / slowest))
        draw = random.Random(0)
        order = list(models.items())
        for turn in range(turns + turns % 2):  # whole pairs of turns
            order = draw.sample(order, len(order)) if turn % 2 == 0 else order[::-1]
            for name, model in order:
                model(x)
                start = clock()
                model(x)
                samples[name].append(clock() - start)
    return {name: float(torch.tensor(s, dtype=torch.float64).median()) / 1e6 for name, s in samples.items()}


def latency_note(rounds: int) -> str:
    """How the latency columns were measured, for a table's preamble."""
    clock = "CPU time of the one torch thread" if torch.get_num_threads() == 1 else "wall time"
    return (f"Latency: median over turns (each turn runs every model twice and times the second call; turns come "
            f"in pairs, a random order and then its reverse; at least {4 * rounds} turns), clock = {clock} — the "
            f"machine is shared with other jobs.")


def plot_accuracy_vs_flops(panels: dict[str, list[tuple[str, float, float]]], out: str, quick: bool,
                           ylabel: str = "test accuracy") -> None:
    """One PNG next to ``out`` (same stem): accuracy against achieved FLOPs, one panel per model.

    Each panel's points are ``(method, FLOPs vs dense, accuracy)``, one line per
    method; a method named ``dense`` is drawn as a horizontal reference line.
    Nothing is written in quick mode or without matplotlib.
    """
    if quick:
        return
    try:
        import matplotlib
    except ImportError:
        print("no plot: matplotlib is not installed")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), dpi=90, squeeze=False)
    markers = "osD^vP*X"
    for ax, (title, points) in zip(axes[0], panels.items()):
        for i, method in enumerate(dict.fromkeys(m for m, _, _ in points)):
            xy = sorted((f, a) for m, f, a in points if m == method)
            if method == "dense":
                ax.axhline(xy[0][1], color="grey", linestyle="--", linewidth=1, label="dense")
            else:
                ax.plot([100 * f for f, _ in xy], [a for _, a in xy], marker=markers[i % len(markers)], label=method)
        ax.set_xlabel("achieved FLOPs, % of dense")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    png = Path(out).with_suffix(".png")
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png)
    plt.close(fig)
    print(f"plot: {png}")


def aimet_svd_compress(model: nn.Module, evaluate, input_shape: tuple, scheme: str, ratio: float, candidates: int,
                       ignore: list) -> nn.Module:
    """AIMET's greedy weight or spatial SVD of ``model`` to a whole-model MAC ``ratio`` (AIMET's own API, quietly).

    ``evaluate(model, iterations, use_cuda=False)`` scores AIMET's candidates;
    AIMET pickles its greedy-search scores into ``./data/``, so it runs inside
    a scratch folder.
    """
    from aimet_torch.common.defs import CompressionScheme, CostMetric, GreedySelectionParameters, RankSelectScheme
    from aimet_torch.compress import ModelCompressor
    from aimet_torch.defs import SpatialSvdParameters, WeightSvdParameters

    greedy = GreedySelectionParameters(target_comp_ratio=ratio, num_comp_ratio_candidates=candidates)
    if scheme == "weight_svd":
        params = WeightSvdParameters(WeightSvdParameters.Mode.auto,
                                     WeightSvdParameters.AutoModeParams(RankSelectScheme.greedy, greedy, ignore))
        kind = CompressionScheme.weight_svd
    else:
        params = SpatialSvdParameters(SpatialSvdParameters.Mode.auto, SpatialSvdParameters.AutoModeParams(greedy, ignore))
        kind = CompressionScheme.spatial_svd
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as scratch, redirect_stdout(io.StringIO()):
        os.chdir(scratch)
        try:
            compressed, _stats = ModelCompressor.compress_model(model, evaluate, 10, input_shape, kind,
                                                                CostMetric.mac, params)
        finally:
            os.chdir(cwd)
    return compressed
