"""Structured pruning by channel dependency groups: smaller producers *and* consumers, priced as such.

``scheme: channels`` prunes whole channels of the matched layers together with
everything that carries them (:func:`lcpress.channel_groups`): a conv's output
rows, the BatchNorm entries and depthwise-conv rows that follow them, every
other producer summed with them (residual connections), and the input columns
of every layer that reads them — after a concatenation at their offset, after
a flatten as a block of features; in transformers whole attention heads and
the feed-forward hidden width.

The C step is exact per group: the task's parameters are every tensor the
groups live in; Δ(θ) zeroes the pruned channels' slices in all of them, so
‖w − Δ‖² for keeping ``k`` of a group's channels is the sum of the smallest
squared channel norms (a channel's norm spans its producer rows and biases,
norm parameters and consumer columns). Candidates are kept counts in
multiples of ``multiple``; the core prices each one by what it makes of every
layer it touches and selects by α or a global budget under any cost model
(:mod:`lcpress.core.coupled`: coordinate descent across groups, since a layer
between two groups shrinks with both). A group of attention heads also
prices the attention products it shrinks (QKᵀ, softmax and AV over the heads
kept: a parameter-free ``LayerSpec`` of kind ``"attention"``), so a latency
target sees what a head costs beyond its projections.

With ``error: output`` a channel's error is the energy it takes from its
consumers' outputs, ``‖W[:, c]‖²·E[x_c²]`` over real inputs: a diagonal
metric over the task's parameter vector (:meth:`ChannelScheme.output_metric`)
that the engine also uses for the L-step penalty.

Because Δ(θ) zeroes a pruned channel's producer rows, bias and BatchNorm
affine parameters *and* the consumer columns reading it, the constant that
channel still carries (the activation of zero) meets zero weights: there is
nothing to fold into the consumer's bias, and the realized model — producer,
norm and consumer physically smaller — equals the dense model holding Δ(θ)
exactly, padded convolutions included (where a non-zero constant could not be
folded into a bias exactly).
"""

from __future__ import annotations

import fnmatch
import logging
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Sequence

import torch
from torch import nn

import lcpress
from lcpress import (Binding, Candidates, ChannelGroup, Coupled, CStepContext, Dense, Form, LayerSpec, Options,
                     OutputError, Resized, Scheme, State, channel_groups, get_module, kept_sizes, option)

log = logging.getLogger("lcpress.channels")

PRICED = (nn.Linear, nn.Conv2d)


@dataclass(frozen=True)
class KeptChannels(Form):
    """``kept`` of a group's ``channels`` (the layers it touches are priced one by one, as :class:`Resized`)."""

    kept: int
    channels: int
    kind: ClassVar[str] = "kept_channels"

    def primitives(self, spec: LayerSpec) -> tuple[LayerSpec, ...]:
        return (spec,)

    def describe(self) -> str:
        return f"{self.kept} of {self.channels} channels"


@dataclass
class ChannelOptions(Options):
    multiple: int = option(8, help="kept widths are multiples of this (Torch-Pruning's round_to); channels "
                                   "wider than it (an attention head) count whole", ge=1)
    ignore: list[str] = option(default_factory=list, help="layers (names or globs) whose output channels are never "
                                                          "pruned; their inputs may still shrink")
    rounds: int = option(10, help="coordinate-descent rounds of the selection in one C step (a layer between two "
                                  "groups costs what both make of it)", ge=1)
    error: Literal["weight", "output"] = option(
        "weight", help="what a channel's removal costs: weight = its squared weights (producer rows, norm entries, "
                       "consumer columns); output = the energy it takes from the consumers' outputs, ‖W[:, c]‖²·E[x_c²] "
                       "over real inputs (a calibration pass, then the L steps' inputs; the penalty uses the same "
                       "diagonal metric)")
    damping: float = option(0.01, help="error: output — the weight of every entry that is not a consumer column "
                                       "(producer rows, biases, norms), and added to the consumers' input energies, "
                                       "which are scaled to a largest of 1 per layer", ge=0)
    allocation: Literal["sum", "minmax"] = option(
        "minmax", help="how a target's budget is shared among groups: minmax = least largest relative error (error / "
                       "the group's ‖w‖²), the rest of the budget then spent on the total; sum = least total error "
                       "(by α per unit of cost; it can empty a group whose weights are small in absolute terms)")


class ChannelScheme(Scheme):
    """Channel-group pruning (see the module docstring)."""

    name = "channels"
    Options = ChannelOptions
    options: ChannelOptions
    scope = "model"

    def selecting(self) -> bool:
        return True

    # ----------------------------------------------------- output-space error
    def output_error(self) -> OutputError | None:
        return OutputError(self.options.damping, per_channel=True) if self.options.error == "output" else None

    def moment_layers(self) -> list[str]:
        """The consumers: every priced layer reading a group's channels."""
        consumers = {n for g in self.groups for n in g.consumers}
        return [n for n in self.layers if n in consumers]

    def output_metric(self, moments: dict[str, torch.Tensor], damping: float) -> torch.Tensor:
        """A diagonal metric: a consumer's weight column c weighs E[x_c²] (scaled to a largest 1 in the layer) + δ.

        Removing channel c takes ``W[:, c]·x_c`` from every consumer's output; its energy over the inputs is
        ``‖W[:, c]‖²·E[x_c²]`` (for a conv, spatial correlations within the channel are left out). Every other
        entry — producer rows, biases, norm parameters — weighs δ, so the penalty still holds them.
        """
        metric = torch.full((self.length,), float(damping), dtype=torch.float64)
        for name, energy in moments.items():
            weight = self.offsets[(name, "weight")]
            scaled = energy.double().cpu() / max(float(energy.max()), 1e-300)
            columns = scaled.reshape(1, -1, *([1] * (weight.dim() - 2))).expand(weight.shape)
            metric[weight.reshape(-1)] += columns.reshape(-1)
        return metric

    # ------------------------------------------------------------- planning
    def bind(self, model: nn.Module, layers: list[str], example_input: Any) -> Binding:
        found = channel_groups(model, example_input)
        if not found.traced:
            log.warning("channels: every layer stays dense: %s", found.reason)
        self.skipped = [(g, g.blocked or self._outside(g, layers)) for g in found.groups]
        self.groups = [g for g, reason in self.skipped if not reason]
        self.skipped = [(g, reason) for g, reason in self.skipped if reason]
        self.untraced = found.reason
        if found.unused and self.groups:
            log.warning("channels: layers %s hold weights the forward pass on the example input never reads (a branch "
                        "it does not take, a head used only in training); if they read channels this run prunes, the "
                        "compressed model fails where they run. Give an example_input that takes every branch, or "
                        "keep the layers that feed them whole (options.ignore)", ", ".join(found.unused))
        for g, reason in self.skipped:
            log.info("channels: %s stays dense: %s", g.describe(), reason)
        _warn_kept(self.skipped, layers, found.traced and not self.groups)
        modules = {name: m for name, m in model.named_modules()}
        touched = [n for n in modules if any(s.module == n for g in self.groups for s in g.slices)]
        params = [p for n in touched for p in _own_params(modules[n])]
        priced = [n for n in layers if isinstance(modules[n], PRICED)]  # a glob may reach tables, norms …
        self.layers = [n for n in touched if isinstance(modules[n], PRICED)] if self.groups else priced
        if not self.groups:
            params = [modules[n].weight for n in priced]
        self.sizes = {n: _channels(modules[n]) for n in self.layers}
        self.depthwise = {n for n in touched if isinstance(modules[n], nn.Conv2d) and modules[n].groups > 1}
        self.offsets, self.length = _offsets(touched, modules)
        self.index = _positions(self.groups, self.offsets) if self.groups else []
        self.sites = {name: spec for name, spec in found.attention.items()
                      if any(s.module == name for g in self.groups for s in g.slices)}
        return Binding(params, self.layers, self.sites)

    def _outside(self, group: ChannelGroup, layers: list[str]) -> str:
        for producer in group.producers:
            if producer not in layers:
                return f"its producer {producer} is not among the task's layers"
            if any(fnmatch.fnmatchcase(producer, pattern) for pattern in self.options.ignore):
                return f"its producer {producer} is ignored (options.ignore)"
        return ""

    # ---------------------------------------------------------------- C step
    def candidates(self, w: torch.Tensor, ctx: CStepContext) -> Coupled | None:
        if not self.groups:
            return None
        parts, cuts, norms_of = [], [], []
        for group, index in zip(self.groups, self.index):
            norms = _norms(w, index, ctx.input_metric)
            ascending = torch.cumsum(torch.sort(norms)[0], 0)
            sizes = kept_sizes(group, self.options.multiple)
            errors = [float(ascending[group.channels - k - 1]) if k < group.channels else 0.0 for k in sizes]
            parts.append(Candidates([KeptChannels(k, group.channels) for k in sizes],
                                    torch.tensor(errors, dtype=torch.float64)))
            cuts.append([self._cuts(group, group.channels - k) for k in sizes])
            norms_of.append(norms)
        return Coupled(parts, cuts, self.options.rounds, [float(n.sum()) for n in norms_of], data=norms_of)

    def _cuts(self, group: ChannelGroup, removed: int) -> dict[str, tuple[int, int]]:
        """What removing ``removed`` channels of ``group`` takes from each layer it touches."""
        cuts: dict[str, tuple[int, int]] = {}
        for s in group.slices:
            if s.role == "heads":  # an attention core: fewer heads of queries/keys and of values
                spec = self.sites[s.module]
                cuts[s.module] = (removed * spec.out_channels // spec.groups, removed * spec.in_channels // spec.groups)
                continue
            if s.module not in self.sizes:
                continue  # a norm: not priced
            count = removed * s.width
            out, inp = cuts.get(s.module, (0, 0))
            if s.role == "columns":
                cuts[s.module] = (out, inp + count)
            else:
                cuts[s.module] = (out + count, inp + (count if s.module in self.depthwise else 0))
        return cuts

    def compress(self, w: torch.Tensor, ctx: CStepContext) -> State:
        w = w.detach()
        delta = w.clone()
        kept = []
        norms_of = ctx.candidates.data if isinstance(ctx.candidates, Coupled) else []
        for g, (group, index) in enumerate(zip(self.groups, self.index)):
            k = ctx.chosen_forms()[g].kept if norms_of else group.channels
            norms = norms_of[g] if norms_of else _norms(w, index, ctx.input_metric)
            keep = torch.sort(torch.topk(norms, k).indices)[0]
            drop = torch.ones(group.channels, dtype=torch.bool)
            drop[keep] = False
            delta[index[drop].reshape(-1)] = 0
            kept.append({"group": group.index, "channels": group.channels, "kept": k, "indices": keep.tolist(),
                         "producers": group.producers, "consumers": group.consumers})
        dense = [{"group": g.index, "channels": g.channels, "producers": g.producers, "reason": reason}
                 for g, reason in self.skipped]
        return State({"weight": delta}, {"form": "channels", "groups": kept, "dense_groups": dense,
                                         "untraced": self.untraced})

    def decompress(self, state: State) -> torch.Tensor:
        return state.tensors["weight"]

    # ------------------------------------------------------ forms, realization
    def layer_forms(self, state: State, shapes: Sequence[tuple[int, ...]]) -> list[Form]:
        removed = self._removed(state)
        forms: list[Form] = []
        for name in self.layers:
            rows, cols = (len(removed.get(name, {}).get(r, ())) for r in ("rows", "columns"))
            out, inp = self.sizes[name]
            forms.append(Resized(out - rows, inp - cols) if rows or cols else Dense())
        return forms

    def _removed(self, state: State) -> dict[str, dict[str, set[int]]]:
        """Rows and columns removed from every module the groups touch."""
        removed: dict[str, dict[str, set[int]]] = {}
        for s in (s for g in self.groups for s in g.module_slices):
            removed.setdefault(s.module, {"rows": set(), "columns": set()})
        for entry, group in zip(state.meta.get("groups", []), self.groups):
            dropped = sorted(set(range(group.channels)) - set(entry["indices"]))
            for s in group.module_slices:
                removed[s.module][s.role].update(i for c in dropped for i in s.indices[c])
        return removed

    def realize_layers(self, state: State, model: nn.Module) -> dict[str, nn.Module]:
        new = {}
        for name, cut in self._removed(state).items():
            if cut["rows"] or cut["columns"]:
                new[name] = smaller(get_module(model, name), cut["rows"], cut["columns"])
        return new


def _norms(w: torch.Tensor, index: torch.Tensor, metric: torch.Tensor | None) -> torch.Tensor:
    """Each channel's squared norm over its entries (``index``: channels × entries), in the diagonal ``metric``."""
    squares = w.detach()[index].double().pow(2)
    if metric is not None:
        squares = squares * metric.to(squares.device)[index]
    return squares.sum(1)


def _warn_kept(skipped: list[tuple[ChannelGroup, str]], layers: list[str], nothing_left: bool) -> None:
    """One warning for the groups of the asked-for layers that the model's structure keeps dense, by reason.

    A transformer's residual stream keeps two groups per block: one line counting them says what a line per
    group would, without burying the rest (each group is in the info log). The model's own output is not
    counted: its width is the model's contract.
    """
    kept = [reason for g, reason in skipped if g.blocked and not g.is_output and all(p in layers for p in g.producers)]
    if kept:
        reasons = Counter(re.sub(r" in [\w.]+$", "", reason) for reason in kept)
        log.warning("channels: %d channel group(s) of these layers stay dense: %s", len(kept),
                    "; ".join(f"{n}× {why}" for why, n in reasons.items()))
    if nothing_left:
        own = [f"{g.describe()}: {reason}" for g, reason in skipped if any(p in layers for p in g.producers)]
        log.warning("channels: no channel group of these layers can be pruned, so every layer stays dense%s",
                    f" ({own[0]})" if own else "")


def _own_params(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in (getattr(module, "weight", None), getattr(module, "bias", None)) if isinstance(p, nn.Parameter)]


def _channels(module: nn.Module) -> tuple[int, int]:
    """(outputs, inputs) of a Linear or Conv2d."""
    return module.weight.shape[0], module.in_features if isinstance(module, nn.Linear) else module.in_channels


def _offsets(touched: list[str], modules: dict[str, nn.Module]) -> tuple[dict[tuple[str, str], torch.Tensor], int]:
    """Where each (module, "weight" | "bias") lives in the task's flat parameter vector (in its shape), and its length."""
    offsets, start = {}, 0
    for name in touched:
        for kind, p in zip(("weight", "bias"), (getattr(modules[name], "weight", None), getattr(modules[name], "bias", None))):
            if isinstance(p, nn.Parameter):
                offsets[(name, kind)] = (start + torch.arange(p.numel())).reshape(p.shape)
                start += p.numel()
    return offsets, start


def _positions(groups: list[ChannelGroup], offsets: dict[tuple[str, str], torch.Tensor]) -> list[torch.Tensor]:
    """For each group, a (channels, entries) tensor of positions in the task's flat parameter vector."""
    out = []
    for group in groups:
        rows = []
        for c in range(group.channels):
            parts = []
            for s in group.module_slices:
                idx = torch.tensor(s.indices[c])
                weight, bias = offsets.get((s.module, "weight")), offsets.get((s.module, "bias"))
                if s.role == "columns":
                    parts.append(weight[:, idx].reshape(-1))
                    continue
                parts.extend(t[idx].reshape(-1) for t in (weight, bias) if t is not None)
            rows.append(torch.cat(parts))
        out.append(torch.stack(rows))
    return out


def smaller(module: nn.Module, rows: set[int], columns: set[int]) -> nn.Module:
    """``module`` without the given output rows and input columns (a BatchNorm: without those entries)."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return _smaller_norm(module, _kept(module.num_features, rows))
    keep_rows = _kept(module.weight.shape[0], rows)
    kw = {"device": module.weight.device, "dtype": module.weight.dtype}
    if isinstance(module, nn.Linear):
        keep_cols = _kept(module.in_features, columns)
        new: nn.Module = nn.Linear(len(keep_cols), len(keep_rows), bias=module.bias is not None, **kw)
        weight = module.weight[keep_rows][:, keep_cols]
    elif isinstance(module, nn.Conv2d):
        depthwise = module.groups > 1  # a depthwise conv follows its channels: rows and inputs are one set
        keep_cols = keep_rows if depthwise else _kept(module.in_channels, columns)
        new = nn.Conv2d(len(keep_cols), len(keep_rows), module.kernel_size, module.stride, module.padding,
                        module.dilation, len(keep_rows) if depthwise else 1, module.bias is not None,
                        module.padding_mode, **kw)
        weight = module.weight[keep_rows] if depthwise else module.weight[keep_rows][:, keep_cols]
    else:
        raise TypeError(f"channels cannot shrink a {type(module).__name__}")
    with torch.no_grad():
        new.weight.copy_(weight)
        if module.bias is not None:
            new.bias.copy_(module.bias[keep_rows])
    return new


def _smaller_norm(module: nn.Module, keep: torch.Tensor) -> nn.Module:
    """The norm over the kept channels, on the device and in the dtype of the one it replaces."""
    like = next((t for t in (module.weight, module.running_mean) if t is not None), None)
    kw = {"device": like.device, "dtype": like.dtype} if like is not None else {}
    new = type(module)(len(keep), module.eps, module.momentum, module.affine, module.track_running_stats, **kw)
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            old = getattr(module, name)
            if old is not None:
                getattr(new, name).copy_(old[keep])
        if module.num_batches_tracked is not None:
            new.num_batches_tracked.copy_(module.num_batches_tracked)
    return new


def _kept(total: int, removed: set[int]) -> torch.Tensor:
    return torch.tensor([i for i in range(total) if i not in removed], dtype=torch.long)


@lcpress.hookimpl
def lcpress_register_schemes(register) -> None:
    register(ChannelScheme)
