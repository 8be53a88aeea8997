"""FID's sampling noise from disjoint draws (study.noise, scripts/sampling_noise.py)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from pipeline.metrics.fid import feature_stats
from study.noise import Draw, balanced_disjoint_subsets, noise_table
from tests.helpers import REPO_ROOT

CLASSES = 4


def class_major_labels(per_class: int) -> np.ndarray:
    return np.repeat(np.arange(CLASSES), per_class)


def test_subsets_are_disjoint_class_balanced_and_paired_by_labels():
    labels = class_major_labels(25)
    subsets = balanced_disjoint_subsets(labels, 20, seed=3)
    assert len(subsets) == 5
    joined = np.concatenate(subsets)
    assert len(np.unique(joined)) == len(joined) == 100
    for subset in subsets:
        assert np.bincount(labels[subset], minlength=CLASSES).tolist() == [5] * CLASSES
    again = balanced_disjoint_subsets(labels.copy(), 20, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(subsets, again, strict=True))
    assert not np.array_equal(subsets[0], balanced_disjoint_subsets(labels, 20, seed=4)[0])
    with pytest.raises(ValueError, match="same count of each"):
        balanced_disjoint_subsets(labels, 22)


def _draw(variant: str, seed: int, shift: float, per_class: int = 400, dim: int = 6) -> Draw:
    rng = np.random.default_rng(seed)
    features = rng.normal(shift, 1.0, (CLASSES * per_class, dim))
    return Draw(variant, seed, features, class_major_labels(per_class))


def test_noise_shrinks_with_n_and_matches_the_bootstrap():
    reference = feature_stats(np.random.default_rng(99).normal(0.0, 1.0, (20_000, 6)))
    # A model well away from the reference, like the study's (FID about 48): there FID is close to
    # linear in the sample's statistics and the bootstrap estimates its noise. Near FID 0 it does
    # not (at n = 400 here it is 4x the disjoint draws' spread).
    draws = [_draw("model", seed, 1.0) for seed in (1, 2)]
    table = noise_table(draws, reference, sizes=[40, 400], bootstrap=50)
    small, large = table["rows"]
    assert (small["n"], small["subsets"], large["n"], large["subsets"]) == (40, 80, 400, 8)
    assert small["sd"] > 3 * large["sd"]  # about sqrt(10) less noise, and the 1/n bias shrinks too
    assert small["mean"] > large["mean"]
    for row in (small, large):
        assert 0.5 < row["bootstrap_se"] / row["sd"] < 2.0
    assert table["contrast"] == []


def test_the_paired_contrast_uses_the_same_subsets_of_each_seed():
    reference = feature_stats(np.random.default_rng(99).normal(0.0, 1.0, (20_000, 6)))
    same = noise_table([_draw("a", 1, 0.0), _draw("b", 1, 0.0)], reference, [400], 0, contrast=("a", "b"))
    assert same["contrast"] == [{"contrast": "a − b", "n": 400, "subsets": 4, "mean": 0.0, "sd": 0.0}]
    assert same["rows"][0]["bootstrap_se"] is None
    shifted = noise_table([_draw("a", 1, 0.3), _draw("b", 1, 0.0), _draw("a", 2, 0.3), _draw("b", 2, 0.0)],
                          reference, [400, 1600], 0, contrast=("a", "b"))
    at_400, at_1600 = shifted["contrast"]
    assert at_400["subsets"] == 8 and at_1600["subsets"] == 2
    assert at_400["mean"] > 0.4 and at_1600["mean"] > 0.4  # 6 dims x 0.3^2 = 0.54 from the mean shift
    mismatched = Draw("b", 1, np.zeros((1600, 6)), np.roll(class_major_labels(400), 1))
    with pytest.raises(ValueError, match="different labels"):
        noise_table([_draw("a", 1, 0.0), mismatched], reference, [400], 0, contrast=("a", "b"))


@pytest.mark.parametrize(("arguments", "message"), [
    (["--variants", "kamig", "nope"], "unknown variants ['nope']"),
    ([], "dvc exp apply <experiment>"),  # a workspace without trained models
])
def test_the_script_refuses_before_any_work(tmp_path, arguments, message):
    result = subprocess.run([sys.executable, str(REPO_ROOT / "scripts/sampling_noise.py"), *arguments],
                            cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("error: ") and message in result.stderr
