"""The one typed, validated configuration of the pipeline, loaded from ``params.yaml``.

The package: :mod:`.schema` (the sections and their defaults), :mod:`.checks` (what one field's
type cannot express), :mod:`.messages` (YAML values in, error messages out) and :mod:`.loading`
(``params.yaml``, presets and ``python -m pipeline.config``).

DVC accepts any key in ``params.yaml`` (and ``dvc exp run -S`` with ``+key`` adds new ones), so a
typo such as ``fusion.wieght`` would otherwise be ignored silently. Every stage therefore loads the
*whole* file through :func:`load_config` before doing any work; an unknown key, a wrong type or an
out-of-range value raises :class:`ConfigError` with the dotted key, the allowed values and, for
typos, the closest valid key.

The schema is a tree of frozen, strict pydantic models: ``Field(ge=/gt=/le=/lt=)`` bounds numbers,
``Literal`` types list the allowed values. Strict means a YAML value is never reinterpreted: an
integer is accepted for a float field (and stored as a float), but a bool is never a number, a
string never a number, a number never a string, and ``Literal`` values must match exactly (1 is not
``"1"`` nor ``true``). Pydantic's errors are translated into this package's messages by
:func:`pipeline.config.messages.error_message`. Constructing a section directly
(``SampleConfig(steps=4)``) validates too (a bad value raises pydantic's ``ValidationError``);
:func:`replace` copies a section with changes and raises :class:`ConfigError`.

Presets (``configs/*.yaml``) are partial overlays merged onto ``params.yaml`` by
``python -m pipeline.config apply PRESET``.
"""

from pipeline.config.loading import DEFAULT_PARAMS, apply_preset, config_from_dict, load_config, merge_overlay
from pipeline.config.messages import ConfigError
from pipeline.config.schema import (
    AdapterName,
    ClassifierConfig,
    Config,
    CooccurrenceConfig,
    DataConfig,
    EvalConfig,
    FusionConfig,
    GraphName,
    GraphsConfig,
    KamigConfig,
    ModelConfig,
    OfficialGraphsConfig,
    Recipe,
    SampleConfig,
    SamplingPrecision,
    SimilarityConfig,
    StrategyConfig,
    TokenDraw,
    TokenizeConfig,
    TokenizerConfig,
    TrainConfig,
    replace,
)

__all__ = [
    "DEFAULT_PARAMS",
    "AdapterName",
    "ClassifierConfig",
    "Config",
    "ConfigError",
    "CooccurrenceConfig",
    "DataConfig",
    "EvalConfig",
    "FusionConfig",
    "GraphName",
    "GraphsConfig",
    "KamigConfig",
    "ModelConfig",
    "OfficialGraphsConfig",
    "Recipe",
    "SampleConfig",
    "SamplingPrecision",
    "SimilarityConfig",
    "StrategyConfig",
    "TokenDraw",
    "TokenizeConfig",
    "TokenizerConfig",
    "TrainConfig",
    "apply_preset",
    "config_from_dict",
    "load_config",
    "merge_overlay",
    "replace",
]
