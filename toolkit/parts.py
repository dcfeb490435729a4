"""Parts of composite schemes: one registered scheme, its options, and its view.

The ``additive`` scheme (Δ = Σ_j Δ_j) and the ``sequential`` scheme
(Δ = Δ_n(… Δ_1(w))) are built from parts, each any registered scheme —
built-in or from a third-party package — with its own validated options.
A third-party composite scheme takes ``list[PartOptions]`` the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

from .errors import PluginError
from .forms import LayerSpec
from .options import Options, option
from .scheme import CStepContext, Scheme, State

#: What to tell a user whose part would select its own form.
FIXED_FORM_HINT = ("would choose its own form; give it a fixed one "
                   "(low_rank: rank, prune: keep or keep_fraction, quantize: k)")


@dataclass
class PartOptions(Options):
    """One part of a composite scheme (``additive``, ``sequential``)."""

    scheme: str = option(help="registered scheme name of this part")
    options: dict[str, Any] = option(default_factory=dict, help="the part scheme's options (a fixed form)")
    reshape: int = option(1, help="view the weight matrix as (m·p, n/p), block-interleaved; 1 = the weight as it is")

    def validate(self) -> None:
        if self.reshape < 1:
            self.fail("reshape", f"must be at least 1, got {self.reshape}")
        from .registry import get_registry

        try:
            scheme_cls = get_registry().scheme(self.scheme)
        except PluginError as exc:
            self.fail("scheme", str(exc))
        where = f"{getattr(self, '_where', '')}.options" if getattr(self, "_where", "") else "options"
        self.scheme_class = scheme_cls
        self.scheme_options = scheme_cls.Options.from_dict(self.options, where)


def build_parts(parts: list[PartOptions]) -> list[Scheme]:
    """One scheme instance per part, with the part's validated options."""
    return [p.scheme_class(p.scheme_options) for p in parts]


def pack_states(states: list[State]) -> tuple[dict[str, "torch.Tensor"], list[dict[str, Any]]]:
    """The parts' states as one state's tensors (``part{j}/name``) and a list of their metas."""
    tensors = {f"part{j}/{name}": t for j, s in enumerate(states) for name, t in s.tensors.items()}
    return tensors, [s.meta for s in states]


def part_state(state: State, j: int) -> State:
    """Part ``j``'s state inside a composite state made by :func:`pack_states` (metas under ``parts``)."""
    prefix = f"part{j}/"
    tensors = {k[len(prefix):]: v for k, v in state.tensors.items() if k.startswith(prefix)}
    return State(tensors, state.meta["parts"][j])


def part_context(ctx: CStepContext, j: int, previous: State | None, spec: LayerSpec | None) -> CStepContext:
    """Part ``j``'s C-step context: the composite's μ, cost model, RNG and step, its own warm start and layer.

    Never the composite's candidates or choice: parts have fixed forms.
    """
    return CStepContext(mu=ctx.mu, cost_model=ctx.cost_model, spec=spec, previous=previous,
                        generator=ctx.generator, step=ctx.step, layer=f"{ctx.layer} part {j}")


class PartError(RuntimeError):
    """A part of a composite scheme raised; the message names the part and the plugin it came from."""


def compress_part(j: int, part: Scheme, w: "torch.Tensor", ctx: Any) -> State:
    """``part.compress(w, ctx)``, with a failure reported as part ``j``'s, naming its plugin."""
    from .errors import LcpressError
    from .registry import describe

    try:
        return part.compress(w, ctx)
    except LcpressError:
        raise
    except Exception as exc:
        raise PartError(f"part {j}, {describe(part)}: {type(exc).__name__}: {exc}") from exc
