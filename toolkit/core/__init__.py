"""The core: the LC algorithm and the plugin contract it runs on. Knows no scheme or cost model by name.

Read in this order:

* the contract — :mod:`~lcpress.core.forms` (what a layer is, what it can
  become), :mod:`~lcpress.core.scheme` (compression schemes),
  :mod:`~lcpress.core.costmodel` and :mod:`~lcpress.core.measured` (cost
  models, measured ones with per-device tables), :mod:`~lcpress.core.parts`
  (schemes made of other schemes);
* the plugin machinery — :mod:`~lcpress.core.registry` (built-ins and entry
  points, registered one way) and :mod:`~lcpress.core.guard` (one guard around
  every call into plugin code);
* the model — :mod:`~lcpress.core.graph` (one traced forward pass, the
  dataflow graph), :mod:`~lcpress.core.surgery` (replace layers in place),
  :mod:`~lcpress.core.views` (parameters as the tensor a scheme compresses);
* the algorithm — :mod:`~lcpress.core.plan` (config → plugins → tasks, once),
  :mod:`~lcpress.core.budget` (α trade-offs and global budgets),
  :mod:`~lcpress.core.sensitivity` (a layer's measured metric drop),
  :mod:`~lcpress.core.engine` (the LC loop), :mod:`~lcpress.core.realize`
  (compressed layers → fast modules), :mod:`~lcpress.core.tree` (nested
  states ⇄ JSON + tensors, never pickled).

The core imports the foundation (errors, options, config, hookspecs), the
inference modules (:mod:`lcpress.nn`) and the algebra (:mod:`lcpress.linalg`),
never files, runs, reports or the CLI; ``tests/test_architecture.py`` keeps it so.
"""
