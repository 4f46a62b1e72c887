"""The `loomray` command line: parse, validate, call the library.

One module per group of commands; each registers its commands on the apps of
``loomray.cli.common`` (which imports none of them) when it is imported below.
"""

import importlib

from loomray.cli.common import app

# the order of the help's commands: train and status, sweep, sample and evaluate,
# presets/import/table, then `bench` (its own before those of encode and reflow)
GROUPS = ("train", "sweep", "evaluate", "configs", "bench", "bench_model", "latents", "reflow")
for _group in GROUPS:
    importlib.import_module(f"loomray.cli.{_group}")


__all__ = ["app"]
