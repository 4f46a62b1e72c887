"""`python -m loomray` runs the command line."""

from loomray.cli import app

app(prog_name="loomray")
