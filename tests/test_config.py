"""The typed params: defaults, params.yaml completeness, and clear errors for bad values."""

from pathlib import Path

import pytest
import yaml

from pipeline.config import Config, ConfigError, apply_preset, config_from_dict, load_config

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
    assert cfg.sample.strategy["mask_ratio"][-1] == 0.0
    with pytest.raises(ConfigError, match="sample.strategy.cfg has 3 values; sample.steps is 4"):
        config_from_dict({"sample": {"steps": 4, "strategy": {"cfg": [1, 1, 1]}}})
    with pytest.raises(ConfigError, match="must end at 0"):
        config_from_dict({"sample": {"steps": 2, "strategy": {"mask_ratio": [0.5, 0.2]}}})
    with pytest.raises(ConfigError, match="unknown key"):
        config_from_dict({"sample": {"steps": 1, "strategy": {"tempreature": [1.0]}}})


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
