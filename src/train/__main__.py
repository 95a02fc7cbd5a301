"""`python -m archsmith.train ...`, what torchrun starts on every rank: the `archsmith train` command.

A rank leaves with os._exit once the command has returned (every file written and closed, the process group
destroyed): interpreter shutdown would otherwise run C++ static destructors while a communication library's threads
may still be winding down, which now and then aborts a finished rank ("terminate called without an active
exception") and turns a good run into a failed one.
"""

import os
import sys

from archsmith.cli import app

try:
    app(["train", *sys.argv[1:]], prog_name="python -m archsmith.train")
    code = 0
except SystemExit as exc:
    code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    if not isinstance(exc.code, (int, type(None))):
        print(exc.code, file=sys.stderr)
sys.stdout.flush()
sys.stderr.flush()
os._exit(code)
