"""``python -m lcpress``: the command line, as ``torchrun -m lcpress`` starts it on every rank."""

import os
import sys

# `python -m` puts the current directory first on the import path; lcpress imports user code only from where a
# config points (its folder) or from installed packages, so a folder it is run from can never inject a module.
sys.path[:] = [p for p in sys.path if p not in ("", os.getcwd())]

from lcpress.cli import main  # noqa: E402
from lcpress.runs.distributed import launched  # noqa: E402

code = main()
if launched():
    # A rank has written and printed everything by now. Interpreter teardown can still abort it ("terminate
    # called without an active exception" from gloo's and DDP's C++ threads) on a busy machine, which torchrun
    # reports as a failed run; leave without it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
sys.exit(code)
