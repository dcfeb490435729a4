"""The modules realized models are built from — public, for plugin authors.

A scheme's :meth:`~lcpress.Scheme.realize` returns a module that computes the
layer with weight Δ(θ). These are the pieces lcpress's own schemes use, and
every one of them is rebuilt from a saved file without pickle:

* structural modules (:mod:`lcpress.nn.modules`): :class:`PointwiseConv2d`
  (a 1×1 conv as one GEMM), :class:`GroupedLinear`, :class:`ParallelSum`
  (additive branches), :class:`ScatterChannels` (pruned outputs put back in
  place), :class:`InterleavedLowRank`, and :func:`two_stage` for two thin
  layers holding given factors;
* store-small, run-dense layers (:mod:`lcpress.nn.codecs`):
  :class:`DecodedLinear` / :class:`DecodedConv2d` / :class:`DecodedEmbedding` (all :class:`DecodedLayer`) holding weight codecs
  (:class:`CodebookWeight`, :class:`SparseWeight`,
  :class:`SparseCodebookWeight`, :class:`DenseWeight`), built by
  :func:`decoded`;
* bit packing (:mod:`lcpress.nn.bitpack`) for codec payloads.

A plugin whose realized module is a class of its own allow-lists it with the
``lcpress_register_modules`` hook (docs/plugins.md).
"""

from lcpress.nn.bitpack import bits_for, pack_bits, packed_size, unpack_bits
from lcpress.nn.codecs import (CodebookWeight, DecodedConv2d, DecodedEmbedding, DecodedLayer, DecodedLinear, DenseWeight,
                               SparseCodebookWeight, SparseWeight, WeightCodec, decoded, sparse_index_bits)
from lcpress.nn.modules import (GroupedLinear, InterleavedLowRank, ParallelSum, PointwiseConv2d, ScatterChannels,
                                is_plain_pointwise, two_stage)

__all__ = [
    "PointwiseConv2d", "is_plain_pointwise", "GroupedLinear", "ParallelSum", "ScatterChannels", "InterleavedLowRank", "two_stage",
    "WeightCodec", "DenseWeight", "CodebookWeight", "SparseWeight", "SparseCodebookWeight",
    "DecodedLayer", "DecodedLinear", "DecodedConv2d", "DecodedEmbedding", "decoded", "sparse_index_bits",
    "bits_for", "pack_bits", "unpack_bits", "packed_size",
]
