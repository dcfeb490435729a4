"""Files: everything lcpress writes and reads, pickle-free and atomic.

:mod:`~lcpress.io.files` (safetensors + JSON header, checksummed),
:mod:`~lcpress.io.modelfile` (``lcpress.save`` / ``lcpress.load``),
:mod:`~lcpress.io.checkpoint` (resumable LC state), :mod:`~lcpress.io.rundir`
(run directories and the rules that keep earlier work safe),
:mod:`~lcpress.io.export` (ONNX).
"""
