"""docs/config.md is generated from the config dataclasses and must match the code."""

import dataclasses
from pathlib import Path

from loomray.config import Config
from loomray.config.reference import field_docs, render_reference

DOC = Path(__file__).resolve().parents[1] / "docs" / "config.md"


def test_docs_config_md_is_the_generated_reference():
    assert DOC.read_text() == render_reference() + "\n", (
        "docs/config.md is stale: loomray config reference > docs/config.md"
    )


def test_every_key_is_documented():
    docs = field_docs()
    for section in dataclasses.fields(Config):
        if section.name == "name":
            continue
        cls = type(getattr(Config(), section.name))
        missing = [f.name for f in dataclasses.fields(cls) if not docs[cls.__name__].get(f.name)]
        assert not missing, f"{section.name}: no docstring for {missing}"
