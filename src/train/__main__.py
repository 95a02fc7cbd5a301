"""`python -m archsmith.train ...`, what torchrun starts on every rank: the `archsmith train` command."""

import sys

from archsmith.cli import app

app(["train", *sys.argv[1:]], prog_name="python -m archsmith.train")
