"""Storage in bits — what a compressed model takes on disk or in memory.

A layer's cost is the bits its form stores: 32 per real number by default,
``⌈log2 K⌉`` per codebook index plus the codebook for quantized forms, the
non-zero values plus a packed mask or index list (whichever is smaller) for
sparse forms, and the sum of the parts for additive combinations. Forms say
it themselves (:meth:`lcpress.Form.storage_bits`), so a third-party form is
priced correctly as soon as it overrides that method.
"""

from __future__ import annotations

from dataclasses import dataclass

import lcpress
from lcpress import CostModel, Form, LayerSpec, Options, option


@dataclass
class StorageOptions(Options):
    dtype_bits: int = option(32, help="bits of one stored real number (32 for float32, 16 for half precision)",
                             choices=(8, 16, 32, 64))


class StorageCost(CostModel):
    """Bits stored by the layer in the given form (weights, indices, codebooks and bias)."""

    name = "storage"
    unit = "bits"
    Options = StorageOptions
    options: StorageOptions

    def cost(self, spec: LayerSpec, form: Form) -> float:
        return float(form.storage_bits(spec, self.options.dtype_bits))


@lcpress.hookimpl
def lcpress_register_cost_models(register) -> None:
    register(StorageCost)
