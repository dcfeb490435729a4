"""Measure a latency table for ``csv_latency`` on the device you deploy to.

Runs on the device itself and needs only torch (not lcpress): copy this file
there, run it, and bring back the CSV. It times every primitive layer of a
grid — Linear and Conv2d (1×1, and k×k with "same" padding) over channel
counts, input sizes and batch sizes — and writes one row per layer::

    python measure_table.py --device-name "pi4-4threads" --threads 4 \
        --channels 1 4 8 16 32 64 128 --sizes 8 4 --batches 1 32 --out pi4.csv

Choose the channel grid so that it brackets every layer and every rank the
compression may try: csv_latency interpolates between grid points and refuses
to extrapolate beyond them.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import platform
import sys
from itertools import product

import torch
from torch import nn
from torch.utils import benchmark

HEADER = ["device", "kind", "in_channels", "out_channels", "kernel", "stride", "padding", "dilation", "groups",
          "batch", "height", "width", "latency_ms"]


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def median_ms(module: nn.Module, x: torch.Tensor, threads: int, min_run_time: float) -> float:
    """Median forward time in milliseconds, after a warm-up call."""
    module.eval()
    with torch.no_grad():
        module(x)
        timer = benchmark.Timer("m(x)", globals={"m": module, "x": x}, num_threads=threads)
        return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3


def conv_rows(args: argparse.Namespace) -> list[list[object]]:
    rows = []
    for k, size, batch, cin, cout in product(args.kernels, args.sizes, args.batches, args.channels, args.channels):
        pad = k // 2
        layer = nn.Conv2d(cin, cout, k, padding=pad)
        x = torch.randn(batch, cin, size, size)
        ms = median_ms(layer, x, args.threads, args.min_run_time)
        rows.append([args.device_name, "conv2d", cin, cout, f"{k}x{k}", "1x1", f"{pad}x{pad}", "1x1", 1,
                     batch, size, size, f"{ms:.6f}"])
    return rows


def linear_rows(args: argparse.Namespace) -> list[list[object]]:
    rows = []
    for batch, fin, fout in product(args.batches, args.features, args.features):
        ms = median_ms(nn.Linear(fin, fout), torch.randn(batch, fin), args.threads, args.min_run_time)
        rows.append([args.device_name, "linear", fin, fout, "1x1", "1x1", "0x0", "1x1", 1, batch, 1, 1, f"{ms:.6f}"])
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device-name", required=True, help="the 'device' column: name the device and its setting")
    p.add_argument("--threads", type=int, default=1, help="CPU threads to time with")
    p.add_argument("--channels", type=int, nargs="+", default=[1, 4, 8, 16, 32, 64, 128], help="conv channel grid")
    p.add_argument("--features", type=int, nargs="+", default=[8, 16, 32, 64, 128, 256, 512, 1024, 2048],
                   help="Linear feature grid")
    p.add_argument("--kernels", type=int, nargs="+", default=[1, 3], help="square conv kernels (padded to 'same')")
    p.add_argument("--sizes", type=int, nargs="+", default=[8, 4], help="square input sizes of the convolutions")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32], help="batch sizes")
    p.add_argument("--min-run-time", type=float, default=0.02, help="seconds of timing per layer")
    p.add_argument("--out", required=True, help="CSV file to write")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    rows = conv_rows(args) + linear_rows(args)
    with open(args.out, "w", newline="") as fh:
        fh.write(f"# device: {args.device_name}; {cpu_name()}, {args.threads} "
                 f"thread(s), torch {torch.__version__}, float32, python {sys.version.split()[0]}\n")
        fh.write(f"# measured {datetime.date.today().isoformat()} with tools/measure_table.py: median forward time "
                 f"of each layer alone, warm cache\n")
        writer = csv.writer(fh)
        writer.writerow(HEADER)
        writer.writerows(rows)
    print(f"wrote {len(rows)} measurements to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
