"""``python -m lcpress``: the command line, as ``torchrun -m lcpress`` starts it on every rank."""

import os
import sys

from lcpress.cli import main
from lcpress.runs.distributed import launched

code = main()
if launched():
    # A rank has written and printed everything by now. Interpreter teardown can still abort it ("terminate
    # called without an active exception" from gloo's and DDP's C++ threads) on a busy machine, which torchrun
    # reports as a failed run; leave without it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
sys.exit(code)
