"""Exact linear algebra for C steps — public, for scheme authors.

* :mod:`lcpress.linalg.spectral`: all squared singular values of a matrix and
  the top singular vectors, from a batched float64 eigendecomposition of the
  smaller Gram matrix (:func:`spectra`); ``Σ_{i>r} s_i²`` is the exact error
  of every rank r, which is what a rank-selecting C step needs.
* :mod:`lcpress.linalg.matrices`: a weight as the matrix a low-rank scheme
  factorizes (conv ``channel`` / ``spatial`` / ``input`` shapes, block-interleaved
  reshapes), and back.
* :mod:`lcpress.linalg.whitening`: low rank in a metric ``Σ = L Lᵀ`` (output-space
  error over real inputs) as plain low rank of ``W L``.
* :mod:`lcpress.linalg.finite`: whether a weight holds only finite values, at
  the cost of one sum (:func:`all_finite`).
* :mod:`lcpress.linalg.kmeans`: optimal 1-D k-means (every codebook size's
  exact error from one dynamic program; a binned and refined variant for
  millions of values) and Lloyd's iterations.
"""

from lcpress.linalg.finite import all_finite
from lcpress.linalg.kmeans import KMeans1D, binned_kmeans, lloyd, optimal_kmeans
from lcpress.linalg.matrices import Shape, from_matrix, reshape_matrix, to_matrix, unreshape_matrix
from lcpress.linalg.spectral import Spectrum, spectra, spectrum
from lcpress.linalg.whitening import unwhiten, whiten, whitening_factor

__all__ = ["all_finite", "Shape", "Spectrum", "spectra", "spectrum", "to_matrix", "from_matrix", "reshape_matrix", "unreshape_matrix",
           "KMeans1D", "optimal_kmeans", "binned_kmeans", "lloyd",
           "whitening_factor", "whiten", "unwhiten"]
