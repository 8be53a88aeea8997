"""pipeline/layout.py and dvc.yaml name the same variants and the same output paths."""

from __future__ import annotations

import yaml

from pipeline import layout
from tests.helpers import REPO_ROOT

STAGES = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]


def _outs(stage: dict) -> set[str]:
    entries = stage.get("outs", []) + stage.get("metrics", []) + stage.get("plots", [])
    return {next(iter(o)) if isinstance(o, dict) else o for o in entries}


def test_variant_names_match_the_dag() -> None:
    assert tuple(STAGES["finetune"]["foreach"]) == layout.FINETUNE_VARIANTS
    assert tuple(STAGES["sample"]["foreach"]) == layout.GENERATOR_VARIANTS
    assert tuple(STAGES["evaluate"]["foreach"]) == layout.GENERATOR_VARIANTS


def test_stage_outputs_are_the_layout_paths() -> None:
    variant = "${key}"
    assert {str(p) for p in layout.training_outputs(variant)} == _outs(STAGES["finetune"]["do"])
    assert {str(p) for p in layout.training_outputs(layout.BASE)} == _outs(STAGES["train_base"])
    item = "${item}"
    sample = {str(layout.samples_dir(item)), str(layout.sample_grid(item)), str(layout.sample_metrics(item))}
    assert sample == _outs(STAGES["sample"]["do"])
    assert {str(layout.eval_metrics(item))} == _outs(STAGES["evaluate"]["do"])
    for floor in layout.FLOORS:
        assert {str(layout.eval_metrics(floor))} == _outs(STAGES[f"evaluate_{floor}"])
    assert str(layout.REFERENCE_DIR) in _outs(STAGES["reference"])
    assert {str(layout.TOKENIZER_DIR), str(layout.stage_metrics("tokenizer"))} <= _outs(STAGES["tokenizer"])
    classifier = {str(layout.CLASSIFIER_DIR), str(layout.stage_metrics("classifier"))}
    assert classifier == _outs(STAGES["classifier"])
    assert {str(layout.PREPARED_DIR), str(layout.stage_metrics("prepare"))} == _outs(STAGES["prepare"])
