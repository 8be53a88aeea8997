"""The typed params: defaults, params.yaml completeness, and clear errors for bad values."""

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from pipeline.config import (
    Config,
    ConfigError,
    CooccurrenceConfig,
    FusionConfig,
    GraphsConfig,
    SampleConfig,
    TrainConfig,
    apply_preset,
    config_from_dict,
    load_config,
    replace,
)

REPO = Path(__file__).resolve().parents[1]


def _flatten(tree, prefix=""):
    keys = set()
    for key, value in tree.items():
        if isinstance(value, dict) and key != "strategy":
            keys |= _flatten(value, f"{prefix}{key}.")
        else:
            keys.add(f"{prefix}{key}")
    return keys


def test_params_yaml_is_valid_and_lists_every_key():
    # DVC can only track a param that exists in params.yaml, so every schema key must be there.
    cfg = load_config(REPO / "params.yaml")
    on_disk = yaml.safe_load((REPO / "params.yaml").read_text())
    assert _flatten(on_disk) == _flatten(Config().to_dict())
    assert cfg.fusion.weight == 1.0


def test_params_yaml_holds_the_schema_defaults():
    # A key missing from an overlay takes the schema's default: the two must not drift apart.
    assert load_config(REPO / "params.yaml") == Config()


def test_required_top_level_sections():
    sections = set(Config().to_dict())
    assert {"seed", "data", "tokenizer", "tokenize", "graphs", "model", "train", "kamig", "fusion",
            "sample", "eval"} <= sections


def test_unknown_key_names_key_and_suggests():
    with pytest.raises(ConfigError) as info:
        config_from_dict({"fusion": {"wieght": 0.5}})
    message = str(info.value)
    assert "fusion.wieght" in message
    assert "did you mean 'fusion.weight'" in message
    assert "weight" in message and "graphs" in message  # the allowed keys are listed


def test_unknown_top_level_section():
    with pytest.raises(ConfigError, match="unknown key 'fusoin'.*did you mean 'fusion'"):
        config_from_dict({"fusoin": {"weight": 1.0}})


@pytest.mark.parametrize(
    ("raw", "pattern"),
    [
        ({"fusion": {"weight": -1.0}}, r"'fusion.weight' must be >= 0.0, got -1.0"),
        ({"fusion": {"weight": "high"}}, r"'fusion.weight' must be a number >= 0.0, got 'high'"),
        ({"fusion": {"weight": True}}, r"'fusion.weight' must be a number"),
        ({"model": {"depth": 2.5}}, r"'model.depth' must be an integer >= 1"),
        ({"sample": {"schedule": "cosin"}}, r"'sample.schedule' must be one of 'cosine', 'arccos', 'linear'"),
        ({"fusion": {"graphs": ["cooccurrence", "semantic"]}}, r"'fusion.graphs\[1\]' must be one of"),
        ({"data": {"source": "mnist"}}, r"'data.source' must be one of 'fashion-mnist', 'imagefolder'"),
        ({"train": {"mask_beta": [12]}}, r"'train.mask_beta' must be a list of 2 values"),
        ({"model": {"dim": 130, "heads": 4}}, r"model.dim \(130\) must be divisible by model.heads"),
        ({"data": {"source": "imagefolder"}}, r"data.root must name the image folder"),
        ({"fusion": "heavy"}, r"'fusion' must be a mapping"),
    ],
)
def test_bad_values_are_refused_with_the_key(raw, pattern):
    with pytest.raises(ConfigError, match=pattern):
        config_from_dict(raw)


def test_ints_are_accepted_for_floats_and_types_are_kept():
    cfg = config_from_dict({"fusion": {"weight": 1}, "train": {"mask_beta": [12, 3]}})
    assert isinstance(cfg.fusion.weight, float)
    assert cfg.train.mask_beta == (12.0, 3.0)


def test_sampling_strategy_is_checked_against_steps():
    good = {"mask_ratio": [0.75, 0.5, 0.25, 0.0], "cfg": [1, 1, 2, 2]}
    cfg = config_from_dict({"sample": {"steps": 4, "strategy": good}})
    assert cfg.sample.strategy.mask_ratio[-1] == 0.0 and cfg.sample.strategy.temperature is None
    assert cfg.sample.strategy.arrays() == {"mask_ratio": (0.75, 0.5, 0.25, 0.0), "cfg": (1.0, 1.0, 2.0, 2.0)}
    with pytest.raises(ConfigError, match="sample.strategy.cfg has 3 values; sample.steps is 4"):
        config_from_dict({"sample": {"steps": 4, "strategy": {"cfg": [1, 1, 1]}}})
    with pytest.raises(ConfigError, match="must end at 0"):
        config_from_dict({"sample": {"steps": 2, "strategy": {"mask_ratio": [0.5, 0.2]}}})
    with pytest.raises(ConfigError, match=r"unknown key 'sample.strategy.tempreature' \(did you mean "
                                          r"'sample.strategy.temperature'\?\)"):
        config_from_dict({"sample": {"steps": 1, "strategy": {"tempreature": [1.0]}}})
    with pytest.raises(ConfigError, match="non-increasing"):
        config_from_dict({"sample": {"steps": 2, "strategy": {"mask_ratio": [0.2, 0.5]}}})


def test_load_config_reports_file_and_yaml_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "params.yaml"
    broken.write_text("fusion: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)
    broken.write_text("fusion:\n  weight: -2\n")
    with pytest.raises(ConfigError, match=r"params.yaml: 'fusion.weight' must be >= 0.0"):
        load_config(broken)


def test_presets_merge_and_validate(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text((REPO / "params.yaml").read_text())
    for preset in sorted((REPO / "configs").glob("*.yaml")):
        params.write_text((REPO / "params.yaml").read_text())
        cfg = apply_preset(preset, params)
        overlay = yaml.safe_load(preset.read_text())
        assert _flatten(overlay) <= _flatten(cfg.to_dict())
        assert load_config(params) == cfg
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  deepth: 3\n")
    before = params.read_text()
    with pytest.raises(ConfigError, match="model.deepth"):
        apply_preset(bad, params)
    assert params.read_text() == before  # a bad preset never half-applies


# --------------------------------------------------------------------------------------------
# Strictness: YAML values are never reinterpreted (except an integer for a float).
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"fusion": {"weight": True}}, "'fusion.weight' must be a number >= 0.0, got True"),
        ({"model": {"depth": False}}, "'model.depth' must be an integer >= 1, got False"),
        ({"train": {"mask_beta": [True, 3]}}, "'train.mask_beta[0]' must be a number, got True"),
        ({"data": {"max_train": True}}, "'data.max_train' must be an integer >= 1, got True"),
    ],
)
def test_a_bool_is_never_a_number(raw, message):
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw)
    assert str(info.value) == f"params: {message}"


def test_an_int_is_accepted_for_a_float_and_stored_as_float():
    cfg = config_from_dict({"fusion": {"weight": 2}, "model": {"dropout": 0}, "sample": {"cfg": 3}})
    assert (cfg.fusion.weight, cfg.model.dropout, cfg.sample.cfg) == (2.0, 0.0, 3.0)
    assert all(type(v) is float for v in (cfg.fusion.weight, cfg.model.dropout, cfg.sample.cfg))
    strategy = config_from_dict({"sample": {"steps": 2, "strategy": {"cfg": [1, 2]}}}).sample.strategy
    assert strategy.cfg == (1.0, 2.0) and all(type(v) is float for v in strategy.cfg)
    assert type(CooccurrenceConfig(top_ratio=1).top_ratio) is float  # keyword construction too


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"model": {"depth": "3"}}, "'model.depth' must be an integer >= 1, got '3'"),
        ({"fusion": {"weight": "1.0"}}, "'fusion.weight' must be a number >= 0.0, got '1.0'"),
        ({"model": {"depth": 3.0}}, "'model.depth' must be an integer >= 1, got 3.0"),
        ({"data": {"root": 5}}, "'data.root' must be a string, got 5"),
        ({"model": {"tie_head": 1}}, "'model.tie_head' must be true or false, got 1"),
        ({"tokenize": {"flip_augment": "true"}}, "'tokenize.flip_augment' must be true or false, got 'true'"),
        ({"model": {"depth": None}}, "'model.depth' must be an integer >= 1, got None"),
        ({"data": {"fashion_mnist_dir": None}}, "'data.fashion_mnist_dir' must be a string, got None"),
    ],
)
def test_no_string_number_conversion_and_null_only_where_allowed(raw, message):
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw)
    assert str(info.value) == f"params: {message}"


def test_null_is_accepted_where_the_type_allows_it():
    cfg = config_from_dict({"data": {"root": None, "max_train": None}, "sample": {"strategy": None},
                            "fusion": None})
    assert cfg.data.root is None and cfg.data.max_train is None and cfg.sample.strategy is None
    assert cfg.fusion == FusionConfig()  # an empty section takes its defaults


@pytest.mark.parametrize("value", [True, 1.0, "1", 2])
def test_literal_values_must_match_exactly(value):
    with pytest.raises(ConfigError) as info:
        config_from_dict({"data": {"synthetic_channels": value}})
    assert str(info.value) == f"params: 'data.synthetic_channels' must be one of 1, 3, got {value!r}"


def test_wrong_literal_names_the_allowed_values():
    with pytest.raises(ConfigError) as info:
        config_from_dict({"graphs": {"similarity": {"index": "Flat"}}})
    assert str(info.value) == (
        "params: 'graphs.similarity.index' must be one of 'flat', 'ivf', 'hnsw', got 'Flat'"
    )
    cfg = config_from_dict({"graphs": {"cooccurrence": {"neighbourhood": 4}}})
    assert cfg.graphs.cooccurrence.neighbourhood == 4


def test_unknown_nested_key_suggests_the_full_dotted_key():
    with pytest.raises(ConfigError) as info:
        config_from_dict({"graphs": {"cooccurrence": {"top_ration": 0.1}}})
    assert str(info.value) == (
        "params: unknown key 'graphs.cooccurrence.top_ration' (did you mean "
        "'graphs.cooccurrence.top_ratio'?). Allowed keys in 'graphs.cooccurrence': neighbourhood, top_ratio"
    )


def test_unknown_keys_are_reported_before_bad_values_of_the_same_section():
    with pytest.raises(ConfigError, match="unknown key 'fusion.wieght'"):
        config_from_dict({"fusion": {"weight": -1, "wieght": 1}})
    with pytest.raises(ConfigError, match="'seed' must be >= 0"):  # fields in schema order
        config_from_dict({"fusion": {"wieght": 1}, "seed": -1})


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"data": {"val_fraction": 0}}, "'data.val_fraction' must be > 0.0 and < 1.0, got 0.0"),
        ({"tokenizer": {"downsamples": 7}}, "'tokenizer.downsamples' must be >= 1 and <= 6, got 7"),
        ({"model": {"dropout": 1}}, "'model.dropout' must be >= 0.0 and < 1.0, got 1.0"),
        ({"data": {"max_train": 0}}, "'data.max_train' must be >= 1, got 0"),
    ],
)
def test_out_of_bounds_names_the_bounds(raw, message):
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw)
    assert str(info.value) == f"params: {message}"


def test_tuples_stay_tuples_and_to_dict_gives_lists():
    cfg = config_from_dict({"fusion": {"graphs": ["similarity"]}, "train": {"mask_beta": [2, 1]}})
    assert cfg.fusion.graphs == ("similarity",) and cfg.train.mask_beta == (2.0, 1.0)
    plain = cfg.to_dict()
    assert plain["fusion"]["graphs"] == ["similarity"] and plain["train"]["mask_beta"] == [2.0, 1.0]
    assert Config().fusion.graphs == ("cooccurrence", "similarity", "incompatibility")


def test_configs_are_frozen():
    cfg = Config()
    with pytest.raises(ValidationError, match="frozen"):
        cfg.train.lr = 0.5
    with pytest.raises(ValidationError, match="frozen"):
        cfg.seed = 1
    assert hash(TrainConfig()) == hash(TrainConfig())


def test_keyword_construction_validates():
    graphs = GraphsConfig(cooccurrence=CooccurrenceConfig(top_ratio=1.0))
    assert graphs.cooccurrence.top_ratio == 1.0 and graphs.similarity.k == 2
    with pytest.raises(ValidationError):
        CooccurrenceConfig(top_ratio=1.5)
    with pytest.raises(ValidationError):
        SampleConfig(stepz=3)
    with pytest.raises(ValidationError):
        TrainConfig(mask_beta=[12.0, 3.0, 1.0])


def test_replace_copies_with_changes_and_validates():
    base = SampleConfig()
    changed = replace(base, steps=4, cfg=2)
    assert (changed.steps, changed.cfg, type(changed.cfg)) == (4, 2.0, float)
    assert base.steps == 8  # the original is untouched
    assert replace(TrainConfig(), mask_beta=[2, 1]).mask_beta == (2.0, 1.0)
    with pytest.raises(ConfigError, match=r"^SampleConfig: 'steps' must be >= 1, got 0$"):
        replace(base, steps=0)
    with pytest.raises(ConfigError, match=r"unknown key 'stepz' \(did you mean 'steps'\?\)"):
        replace(base, stepz=3)
    with pytest.raises(ConfigError, match="model.dim \\(130\\) must be divisible by model.heads"):
        replace(Config(), model=replace(Config().model, dim=130))  # cross-field checks too
