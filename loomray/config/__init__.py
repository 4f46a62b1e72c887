"""Typed run configuration: preset YAML + dotted overrides, validated once.

    cfg = load_config("cifar10", ["train.lr=1e-4", "coupling.caches=8"])

Every section is a dataclass; unknown keys, wrong types and impossible values
raise ``ConfigError`` with one sentence that names the key. The CLI turns that
into exit code 2. Old configs (e.g. inside checkpoints) are read with missing
keys filled from the defaults, so new fields never break them.
"""

from loomray.config.checks import check_applicable, validate
from loomray.config.identity import RESULT_FREE, dump_config, run_id, run_identity, run_label
from loomray.config.reading import (
    config_from_dict,
    flatten_dotted,
    load_config,
    load_config_values,
    parse_overrides,
    preset_names,
    read_text_file,
    set_dotted,
    yaml_problem,
)
from loomray.config.schema import (
    DATASETS,
    MODELS,
    NAME,
    PRECISIONS,
    TOYS,
    Config,
    ConfigError,
    CouplingConfig,
    DataConfig,
    EvalConfig,
    ModelConfig,
    TrainConfig,
)

__all__ = [
    "DATASETS",
    "MODELS",
    "NAME",
    "PRECISIONS",
    "RESULT_FREE",
    "TOYS",
    "Config",
    "ConfigError",
    "CouplingConfig",
    "DataConfig",
    "EvalConfig",
    "ModelConfig",
    "TrainConfig",
    "check_applicable",
    "config_from_dict",
    "dump_config",
    "flatten_dotted",
    "load_config",
    "load_config_values",
    "parse_overrides",
    "preset_names",
    "read_text_file",
    "run_id",
    "run_identity",
    "run_label",
    "set_dotted",
    "validate",
    "yaml_problem",
]
