"""Parts of composite schemes: registered schemes with their own options, combined by another scheme.

The ``additive`` scheme (Δ = Σ_j Δ_j) and the ``sequential`` scheme
(Δ = Δ_n(… Δ_1(w))) are built from parts, each any registered scheme —
built-in or from a third-party package — with its own validated options. A
third-party composite scheme takes ``list[PartOptions]`` in its options and
builds :class:`Parts` from them the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lcpress.core.forms import LayerSpec
from lcpress.core.guard import plugin_call
from lcpress.core.registry import get_registry, plugin_label
from lcpress.core.scheme import CStepContext, Scheme, State
from lcpress.errors import PartError, PluginError
from lcpress.options import Options, option


@dataclass
class PartOptions(Options):
    """One part of a composite scheme (``additive``, ``sequential``)."""

    scheme: str = option(help="registered scheme name of this part")
    options: dict[str, Any] = option(default_factory=dict, help="the part scheme's options (a fixed form)")
    reshape: int = option(1, help="view the weight matrix as (m·p, n/p), block-interleaved; 1 = the weight as it is",
                          ge=1)

    def validate(self) -> None:
        try:
            scheme_cls = get_registry().scheme(self.scheme)
        except PluginError as exc:
            self.fail("scheme", str(exc))
        where = f"{getattr(self, '_where', '')}.options" if getattr(self, "_where", "") else "options"
        self.scheme_class = scheme_cls
        self.scheme_options = scheme_cls.Options.from_dict(self.options, where)


class Parts:
    """The schemes of a composite's parts, and what a composite does with them.

    Part states live inside the composite's one state: tensors under
    ``part{j}/name``, metas as the list ``meta["parts"]``.
    """

    #: What to tell a user whose part would select its own form.
    FIXED_FORM_HINT = ("would choose its own form; give it a fixed one "
                       "(low_rank: rank, prune: keep or keep_fraction, quantize: k)")

    def __init__(self, options: list[PartOptions]) -> None:
        self.schemes: list[Scheme] = [p.scheme_class(p.scheme_options) for p in options]

    def __len__(self) -> int:
        return len(self.schemes)

    def __iter__(self):
        return iter(self.schemes)

    def __getitem__(self, j: int) -> Scheme:
        return self.schemes[j]

    def compress(self, j: int, w: torch.Tensor, ctx: CStepContext) -> State:
        """Part ``j``'s C step, with a failure reported as part ``j``'s (a :class:`PartError` naming its plugin)."""
        part = self.schemes[j]
        with plugin_call(part, "in compress()", error=PartError, subject=f"part {j}, {plugin_label(part)}"):
            return part.compress(w, ctx)

    @staticmethod
    def context(ctx: CStepContext, j: int, previous: State | None, spec: LayerSpec | None) -> CStepContext:
        """Part ``j``'s C-step context: the composite's μ, cost model, RNG and step, its own warm start and layer.

        Never the composite's candidates or choice: parts have fixed forms.
        """
        return CStepContext(mu=ctx.mu, cost_model=ctx.cost_model, spec=spec, previous=previous,
                            generator=ctx.generator, step=ctx.step, layer=f"{ctx.layer} part {j}")

    @staticmethod
    def join(states: list[State]) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
        """The parts' states as one state's tensors (``part{j}/name``) and the list of their metas."""
        tensors = {f"part{j}/{name}": t for j, s in enumerate(states) for name, t in s.tensors.items()}
        return tensors, [s.meta for s in states]

    @staticmethod
    def state(state: State, j: int) -> State:
        """Part ``j``'s state inside a composite state made by :meth:`join` (metas under ``parts``)."""
        prefix = f"part{j}/"
        tensors = {k[len(prefix):]: v for k, v in state.tensors.items() if k.startswith(prefix)}
        return State(tensors, state.meta["parts"][j])

    def states(self, state: State) -> list[State]:
        """Every part's state inside a composite state."""
        return [self.state(state, j) for j in range(len(state.meta["parts"]))]
