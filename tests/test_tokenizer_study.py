"""scripts/tokenizer_study.py skips a recipe only when a row holds exactly its settings."""

from __future__ import annotations

import importlib.util
import json

from pipeline.config import Config
from tests.helpers import REPO_ROOT

spec = importlib.util.spec_from_file_location("tokenizer_study", REPO_ROOT / "scripts/tokenizer_study.py")
tokenizer_study = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tokenizer_study)


def test_a_row_counts_as_measured_only_for_its_own_settings_and_image_count():
    base = Config()
    longer = tokenizer_study.recipe_config(base, "steps=1000", 10_000)
    rows = [{"tokenizer": longer.to_dict()["tokenizer"], "n_images": 10_000}]
    assert tokenizer_study.measured(rows, longer)
    # The same recipe label on a changed params.yaml is a different tokenizer: measured afresh.
    other_lr = tokenizer_study.recipe_config(base, "steps=1000 lr=0.001", 10_000)
    assert not tokenizer_study.measured(rows, other_lr)
    assert not tokenizer_study.measured(rows, tokenizer_study.recipe_config(base, "steps=1000", 5_000))


def test_the_committed_rows_match_the_recipes_they_name():
    rows = json.loads((REPO_ROOT / "reports/tokenizer_study.json").read_text())
    for row in rows:
        cfg = tokenizer_study.recipe_config(Config(), row["recipe"], row["n_images"])
        assert tokenizer_study.measured([row], cfg), row["recipe"]
