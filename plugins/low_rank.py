"""Low-rank compression with automatic rank selection — a template for scheme plugins.

The C step of Idelbayev & Carreira-Perpiñán: for a weight matrix W with
singular values s, every candidate rank r has error ``Σ_{i>r} s_i²`` (from one
decomposition) and a cost ``C(r)`` from the task's cost model; the core picks
``argmin_r α·C(r) + μ/2·error(r)``. This module only states the candidates and
builds the factors: selection, budgets and cost models come from the core.

Candidate ranks are multiples of ``rank_multiple`` (hardware executes such
shapes well); the dense layer is always a candidate too. Convolutions are
factorized in the ``channel`` shape (k×k conv then 1×1), the ``spatial``
shape (k×1 then 1×k), the ``input`` shape (1×1 then k×k: the k×k conv
unfolds only r channels, which is what a CPU convolution spends its time on
at small batch sizes), or — the default, ``auto`` — whichever of the three
has the lowest objective under the task's cost model, per layer: the shapes
cost the same FLOPs for a square layer but neither the same error nor the
same measured time.

With ``error: output`` the C step minimises the error on the layer's outputs,
``‖(W − Δ)X‖²`` over the layer's real inputs, instead of ``‖W − Δ‖²``: the
core hands it the metric Σ of the layer's inputs (``ctx.input_metric``), the
scheme factorizes the whitened weight ``W L`` (``Σ = L Lᵀ``), so every
candidate rank's error is the exact output-space error, and the engine
measures the L-step penalty in the same metric (``lcpress.linalg.whitening``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import nn

import lcpress
from lcpress import (Candidates, CStepContext, Dense, Form, LayerSpec, LowRank, Options, OutputError, Scheme, State,
                     option)
from lcpress.linalg import (Shape, Spectrum, from_matrix, spectra, spectrum, to_matrix, unwhiten, whiten,
                            whitening_factor)
from lcpress.nn import PointwiseConv2d, is_plain_pointwise, two_stage


@dataclass
class LowRankOptions(Options):
    rank: int | None = option(None, help="fixed rank for every layer of the task; empty = automatic rank selection",
                              ge=1)
    rank_multiple: int = option(8, help="candidate ranks are multiples of this; 1 allows every rank", ge=1)
    shape: Literal["channel", "spatial", "input", "auto"] = option(
        "auto", help="how a conv weight becomes a matrix: channel (k×k then 1×1), spatial (k×1 then 1×k), input "
                     "(1×1 then k×k), auto (when ranks are selected: per layer, whichever the C step's objective "
                     "prefers; with a fixed rank or error: output, channel)"
    )
    error: Literal["weight", "output"] = option(
        "weight", help="what the C step minimises: weight (‖W − Δ‖²) or output (‖(W − Δ)X‖² over the layer's real "
                       "inputs, collected by a calibration pass and during the L steps; the penalty uses the same metric)"
    )
    damping: float = option(0.01, help="error: output — δ added to the inputs' second moment, scaled to a largest "
                                       "eigenvalue of 1 (0: the exact output error; larger: closer to weight space)",
                            ge=0)
    allocation: Literal["sum", "minmax"] = option(
        "sum", help="how a target's budget is shared among the task group's layers: sum = least total error (the LC "
                    "C step's objective); minmax = least largest relative error ‖W − Δ‖²/‖W‖² of any layer (ALDS's "
                    "rule), so no layer is cut to its cheapest rank to pay for another"
    )
    sensitivity: Literal["error", "measured"] = option(
        "error", help="what the allocation compares between layers: error = the C step's relative error; measured = "
                      "the drop of the run's metric (eval_fn) with that layer alone compressed, measured once at a "
                      "few candidates per layer by the first C step under a target and interpolated in relative "
                      "error (AIMET's greedy search scores layers so); needs a target and an eval_fn"
    )
    sensitivity_points: int = option(8, help="sensitivity: measured — candidates measured per layer, spread over its "
                                             "cost range (each one evaluation of the model)", ge=1)

    def validate(self) -> None:
        if self.sensitivity == "measured" and self.rank is not None:
            self.fail("sensitivity", "a fixed rank leaves no budget to allocate; drop rank (automatic rank "
                                     "selection) or sensitivity")
        if self.error == "output" and self.shape not in ("channel", "auto"):
            self.fail("shape", "error: output measures errors over the layer's input patches, which the 'channel' "
                               "shape factorizes; use shape: channel (or auto, which then means channel)")


class LowRankScheme(Scheme):
    """W ≈ A·B with A m×r and B r×n; realized as two thin layers."""

    name = "low_rank"
    choosing_hint = "leave rank out"
    Options = LowRankOptions
    kinds = frozenset({"linear", "conv2d", "embedding"})  # a table: a thin table, then a Linear widening it
    options: LowRankOptions

    def selecting(self) -> bool:
        return self.options.rank is None

    def check_shared(self) -> str | None:
        return "low rank factorizes one layer's weight matrix, and a shared vector joins several"

    def check_layer(self, spec: LayerSpec | None, module: nn.Module | None) -> str | None:
        if spec is not None and spec.kind == "conv2d" and spec.groups != 1:
            return "low_rank factorizes convolutions with groups=1 only"
        if spec is not None and spec.kind == "embedding" and self.options.error == "output":
            return "error: output weighs a layer's input directions, and an embedding's input is an index"
        return None

    def output_error(self) -> OutputError | None:
        return OutputError(self.options.damping) if self.options.error == "output" else None

    def _shapes(self, w: torch.Tensor) -> list[Shape]:
        if w.dim() != 4 or w.shape[2:] == (1, 1):  # a matrix, or a 1×1 conv: every shape is the same factorization
            return ["channel"]
        if self.options.shape == "auto" and (self.options.rank is not None or self.options.error == "output"):
            # a fixed rank is a conv's rank in the usual (channel) sense: the shapes' costs at one rank differ, and
            # only selection weighs cost; the output metric is over the patches the channel matrix's columns hold
            return ["channel"]
        return list(get_args(Shape)) if self.options.shape == "auto" else [self.options.shape]

    def candidates(self, w: torch.Tensor, ctx: CStepContext) -> Candidates | None:
        return self.candidates_many([(w, ctx)])[0]

    def candidates_many(self, items: list[tuple[torch.Tensor, CStepContext]]) -> list[Candidates | None]:
        if self.options.rank is not None:
            return [None] * len(items)
        jobs = [(i, shape, _matrix(w, shape, ctx)) for i, (w, ctx) in enumerate(items) for shape in self._shapes(w)]
        decomposed = spectra([m for _, _, m in jobs])  # same-shape matrices share one batched call
        per_item: list[dict[str, Spectrum]] = [{} for _ in items]
        for (i, shape, _), spec in zip(jobs, decomposed):
            per_item[i][shape] = spec
        return [self._candidates(w, found) for (w, _), found in zip(items, per_item)]

    def _candidates(self, w: torch.Tensor, found: dict[str, Spectrum]) -> Candidates:
        forms: list[Form] = [Dense()]
        errors = [torch.zeros((), dtype=torch.float64, device=w.device)]
        step = self.options.rank_multiple
        for shape, spec in found.items():
            tail = spec.tail_errors()
            for r in range(step, spec.full_rank, step):
                forms.append(LowRank(r, shape))
                errors.append(tail[r])
        return Candidates(forms, torch.stack(errors), found)

    def compress(self, w: torch.Tensor, ctx: CStepContext) -> State:
        form = ctx.chosen_form()
        spectra = ctx.candidates.data if ctx.candidates is not None else {}
        if form is None:  # fixed rank: take the shape with the smaller error at that rank
            best = None
            for shape in self._shapes(w):
                spec = spectra[shape] = spectrum(_matrix(w, shape, ctx))
                rank = min(self.options.rank, spec.full_rank)
                err = float(spec.tail_errors()[rank])
                if best is None or err < best[0]:
                    best = (err, LowRank(rank, shape))
            form = best[1]
        a, b = spectra[form.shape].factors(form.rank)
        if ctx.input_metric is not None:  # the factors of W L: back to input space, Δ = A·(B L⁻¹)
            a, b = a.to(w.dtype), unwhiten(b, whitening_factor(ctx.input_metric)).to(w.dtype)
        meta = {"form": "low_rank", "rank": form.rank, "shape": form.shape, "weight_shape": list(w.shape)}
        return State({"a": a.contiguous(), "b": b.contiguous()}, meta)

    def decompress(self, state: State) -> torch.Tensor:
        product = state.tensors["a"] @ state.tensors["b"]
        return from_matrix(product, tuple(state.meta["weight_shape"]), state.meta["shape"])

    def form(self, state: State) -> Form:
        return LowRank(int(state.meta["rank"]), state.meta["shape"])

    def realize(self, state: State, module: nn.Module) -> nn.Module:
        a, b = state.tensors["a"], state.tensors["b"]
        if isinstance(module, nn.Linear):
            return factorized_linear(module, a, b)
        if isinstance(module, nn.Embedding):
            return factorized_embedding(module, a, b)
        if isinstance(module, nn.Conv2d):
            return factorized_conv(module, a, b, state.meta["shape"])
        raise TypeError(f"low_rank cannot realize a {type(module).__name__}")


def _matrix(w: torch.Tensor, shape: Shape, ctx: CStepContext) -> torch.Tensor:
    """The matrix whose truncations are the C step's candidates: W, or the whitened W L in an input metric."""
    matrix = to_matrix(w.detach(), shape)
    return matrix if ctx.input_metric is None else whiten(matrix, whitening_factor(ctx.input_metric))


def factorized_linear(module: nn.Linear, a: torch.Tensor, b: torch.Tensor) -> nn.Sequential:
    """Linear(in→r, no bias) then Linear(r→out, bias) computing ``x (A B)ᵀ + bias``."""
    kw = {"device": module.weight.device, "dtype": module.weight.dtype}
    rank = a.shape[1]
    first = nn.Linear(module.in_features, rank, bias=False, **kw)
    second = nn.Linear(rank, module.out_features, bias=module.bias is not None, **kw)
    return two_stage(first, second, b, a, module.bias)


def factorized_embedding(module: nn.Embedding, a: torch.Tensor, b: torch.Tensor) -> nn.Sequential:
    """Embedding(vocabulary, r) then Linear(r→width, no bias): row ``i`` of the table ``A B`` is ``A[i] B``."""
    kw = {"device": module.weight.device, "dtype": module.weight.dtype}
    rank = a.shape[1]
    table = nn.Embedding(module.num_embeddings, rank, module.padding_idx, **kw)
    widen = nn.Linear(rank, module.embedding_dim, bias=False, **kw)
    with torch.no_grad():
        table.weight.copy_(a)
        widen.weight.copy_(b.T)
    return nn.Sequential(table, widen)


def factorized_conv(module: nn.Conv2d, a: torch.Tensor, b: torch.Tensor, shape: Shape) -> nn.Sequential:
    """Two convolutions computing ``module`` with its weight replaced by the factorized one.

    Plain 1×1 stages are :class:`PointwiseConv2d` (a GEMM: on CPUs much faster than torch's NCHW 1×1 conv
    with few channels), which is also what the measured cost models time.
    """
    out, cin, kh, kwid = module.weight.shape
    (sh, sw), (dh, dw) = module.stride, module.dilation
    bias = module.bias is not None
    if shape == "input":  # 1×1 over the input channels, then the layer's own conv over r channels
        rank = b.shape[0]
        first = _stage(module, cin, rank, (1, 1), (1, 1), (0, 0), (1, 1), False)
        second = _stage(module, rank, out, (kh, kwid), module.stride, module.padding, module.dilation, bias)
        first_w = b.reshape(rank, cin, 1, 1)
        second_w = a.reshape(out, kh, kwid, rank).permute(0, 3, 1, 2)
    elif shape == "channel":
        rank = b.shape[0]
        first = _stage(module, cin, rank, (kh, kwid), module.stride, module.padding, module.dilation, False)
        second = _stage(module, rank, out, (1, 1), (1, 1), (0, 0), (1, 1), bias)
        first_w = b.reshape(rank, cin, kh, kwid)
        second_w = a.reshape(out, rank, 1, 1)
    else:  # each stage pads its own axis: exact for every padding mode, as a kh×1 conv acts on each column alone
        rank = a.shape[1]
        pad_h, pad_w = (module.padding, module.padding) if isinstance(module.padding, str) else \
            ((module.padding[0], 0), (0, module.padding[1]))  # 'same' / 'valid' pad a kernel's 1-wide axis by 0
        first = _stage(module, cin, rank, (kh, 1), (sh, 1), pad_h, (dh, 1), False)
        second = _stage(module, rank, out, (1, kwid), (1, sw), pad_w, (1, dw), bias)
        first_w = a.T.reshape(rank, cin, kh, 1)
        second_w = b.reshape(rank, out, kwid).permute(1, 0, 2).reshape(out, rank, 1, kwid)
    return two_stage(first, second, first_w, second_w, module.bias)


def _stage(module: nn.Conv2d, cin: int, out: int, kernel, stride, padding, dilation, bias: bool) -> nn.Module:
    """One conv of a factorization, on ``module``'s device and dtype: a PointwiseConv2d where it is a plain 1×1."""
    kw = {"device": module.weight.device, "dtype": module.weight.dtype}
    if is_plain_pointwise(kernel, stride, padding, dilation):
        return PointwiseConv2d(cin, out, bias=bias, **kw)
    return nn.Conv2d(cin, out, kernel, stride, padding, dilation, bias=bias, padding_mode=module.padding_mode, **kw)


@lcpress.hookimpl
def lcpress_register_schemes(register) -> None:
    register(LowRankScheme)
