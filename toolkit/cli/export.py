"""``lcpress export RUN_DIR --onnx FILE``: a finished run's realized model as ONNX, checked in onnxruntime."""

from __future__ import annotations

import argparse

NAME = "export"
HELP = "export a finished run's realized model (ONNX), checked in onnxruntime"


def shape(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated sizes such as 1,3,224,224, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return values


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="the run's output_dir")
    p.add_argument("--onnx", required=True, metavar="FILE", help="write the model to this ONNX file")
    p.add_argument("--force", action="store_true", help="replace FILE if it exists")
    p.add_argument("--input-shape", type=shape, help="input shape to trace, e.g. 1,3,224,224 "
                                                    "(default: the example input the run recorded)")
    p.add_argument("--static-batch", action="store_true", help="fix the batch size to the input shape's")
    p.add_argument("--opset", type=int, help="ONNX opset version (default: the exporter's)")
    p.add_argument("--config", help="the run's config file, for a model lcpress cannot rebuild on its own: its "
                                    "model.factory builds the architecture (imported from the config's folder)")


def run(args: argparse.Namespace) -> int:
    from lcpress.runs.results import export_run

    done = export_run(args.run_dir, args.onnx, overwrite=args.force, input_shape=args.input_shape,
                      dynamic_batch=not args.static_batch, opset=args.opset, config=args.config)
    check = ("onnxruntime not installed: not checked" if done.max_abs_error is None
             else f"onnxruntime vs torch: max |difference| = {done.max_abs_error:.2e}")
    print(f"wrote {done.path} ({check})")
    return 0
