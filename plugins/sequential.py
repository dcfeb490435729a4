"""Sequential combinations: each part compresses what the previous part produced.

``Δ(θ) = Δ_n(θ_n)`` where part j compresses ``Δ_{j−1}(θ_{j−1})`` and part 1
compresses ``w``. Pruning followed by quantization of the remaining weights
is one config::

    scheme: sequential
    options:
      parts:
        - {scheme: prune, options: {keep_fraction: 0.05}}
        - {scheme: quantize, options: {k: 4, zeros: keep}}

Every LC C step runs the whole chain, so the L step always pulls the
weights towards a pruned *and* quantized target. The stored form, the
price and the realized module are the last part's (``quantize`` with
``zeros: keep`` stores the surviving positions, their codes and the
codebook). Unlike ``additive``, the chain is a heuristic for the joint
constraint: each step is exact for its own constraint, given its input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

import lcpress
from lcpress import CStepContext, Form, LayerSpec, Options, PartOptions, Parts, Scheme, State, option


@dataclass
class SequentialOptions(Options):
    parts: list[PartOptions] = option(help="the parts, applied in order: [{scheme, options}, …]")

    def validate(self) -> None:
        if len(self.parts) < 2:
            self.fail("parts", "give at least two parts (one part is that scheme on its own)")
        for j, part in enumerate(self.parts):
            if part.reshape != 1:
                self.fail("parts", f"part {j}: sequential parts take the weight as it is (reshape: 1)")


class SequentialScheme(Scheme):
    """Δ_n(… Δ_1(w)): a chain of fixed-form schemes (see the module docstring)."""

    name = "sequential"
    Options = SequentialOptions
    options: SequentialOptions
    kinds = frozenset({"linear", "conv2d", "embedding"})  # as far as every part compresses the layer's kind

    def __init__(self, options: SequentialOptions | None = None) -> None:
        super().__init__(options)
        self.parts = Parts(self.options.parts)

    def check_shared(self) -> str | None:
        for j, part in enumerate(self.parts):
            problem = part.check_shared()
            if problem:
                return f"sequential part {j} ({part.name}): {problem}"
        return None

    def check_layer(self, spec: LayerSpec | None, module: nn.Module | None) -> str | None:
        for j, part in enumerate(self.parts):
            if part.selecting():
                return f"sequential part {j} ({part.name}) {Parts.FIXED_FORM_HINT}"
            problem = part.refuses(spec, module)
            if problem:
                return f"sequential part {j} ({part.name}): {problem}"
        return None

    def compress(self, w: torch.Tensor, ctx: CStepContext) -> State:
        previous = ctx.previous.meta.get("parts") if ctx.previous is not None else None
        x = w.detach()
        states = []
        for j, part in enumerate(self.parts):
            earlier = Parts.state(ctx.previous, j) if previous is not None else None
            sub = Parts.context(ctx, j, earlier, spec=ctx.spec)
            state = self.parts.compress(j, x, sub)
            x = part.decompress(state).reshape(w.shape)
            states.append(state)
        tensors, metas = Parts.join(states)
        return State(tensors, {"form": "sequential", "parts": metas})

    def _last(self, state: State) -> State:
        return Parts.state(state, len(self.parts) - 1)

    def decompress(self, state: State) -> torch.Tensor:
        return self.parts[-1].decompress(self._last(state))

    def form(self, state: State) -> Form:
        return self.parts[-1].form(self._last(state))

    def layer_forms(self, state: State, shapes: Sequence[tuple[int, ...]]) -> list[Form]:
        return self.parts[-1].layer_forms(self._last(state), shapes)

    def split(self, state: State, shapes: Sequence[tuple[int, ...]]) -> list[State] | None:
        last = self.parts[-1].split(self._last(state), shapes)
        if last is None:
            return None
        n = len(self.parts)  # a layer's state keeps the last part's: all that Δ(θ), its form and module read
        return [State({f"part{n - 1}/{k}": v for k, v in s.tensors.items()},
                      {"form": "sequential", "parts": [{}] * (n - 1) + [s.meta]}) for s in last]

    def encode(self, state: State) -> nn.Module | None:
        return self.parts[-1].encode(self._last(state))

    def realize(self, state: State, module: nn.Module) -> nn.Module:
        return self.parts[-1].realize(self._last(state), module)


@lcpress.hookimpl
def lcpress_register_schemes(register) -> None:
    register(SequentialScheme)
