"""classifier -> reference -> sample@base -> evaluate@base / the floors on tiny synthetic data.

Runs the stage bodies in a temporary working directory with a randomly initialised tokenizer and
generator (no training), so it checks the wiring, the output formats and determinism, not quality.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline import layout
from pipeline.config import config_from_dict
from pipeline.data import MANIFEST_PATH, build_manifest
from pipeline.metrics import METRIC_KEYS
from pipeline.model.generators import build_generator
from pipeline.model.io import save_generator
from pipeline.shards import TokenMeta, load_split, write_meta
from pipeline.stages import classifier as classifier_stage
from pipeline.stages import evaluate as evaluate_stage
from pipeline.stages import reference as reference_stage
from pipeline.stages import sample as sample_stage
from pipeline.tokenizer.base import save_tokenizer
from pipeline.tokenizer.vqvae import VQVAE
from tests.helpers import generator_spec

CLASSES, PER_CLASS, SIZE, CODES = 4, 6, 16, 32

PARAMS = {
    "seed": 3,
    "data": {"source": "synthetic", "max_train": 160, "max_val": 80, "image_size": SIZE,
             "synthetic_classes": CLASSES},
    "tokenizer": {"codebook_size": CODES, "downsamples": 2},
    "sample": {"per_class": PER_CLASS, "batch_size": 10, "steps": 4, "grid_columns": 3, "cfg": 1.0},
    "eval": {"batch_size": 32, "holdout": 40,
             "classifier": {"steps": 40, "batch_size": 32, "width": 8, "feature_dim": 16}},
}


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A repository-like working directory with prepared data, tokens meta, tokenizer and base model."""
    monkeypatch.chdir(tmp_path)
    cfg = config_from_dict(PARAMS)
    table, _, names = build_manifest(cfg)
    MANIFEST_PATH.parent.mkdir(parents=True)
    pq.write_table(table, MANIFEST_PATH)
    MANIFEST_PATH.with_name("classes.json").write_text(json.dumps(names))

    tokenizer = VQVAE(channels=1, image_size=SIZE, hidden=16, code_dim=8, codebook_size=CODES,
                      downsamples=2, res_blocks=0)
    fingerprint = save_tokenizer(tokenizer, layout.TOKENIZER_DIR)
    meta = TokenMeta(grid_h=4, grid_w=4, codebook_size=CODES, num_classes=CLASSES,
                     tokenizer_fingerprint=fingerprint)
    write_meta(layout.TOKENS_DIR, meta)
    spec = generator_spec(CODES, CLASSES, 16, dim=32, depth=1, heads=2)
    save_generator(build_generator(spec), layout.model_dir("base"), variant="base", token_meta=meta)
    return cfg, meta


def test_stages_end_to_end(workdir, tmp_path):
    cfg, meta = workdir
    classifier_stage.run(cfg)
    accuracy = json.loads((tmp_path / "metrics/classifier.json").read_text())["val_accuracy"]
    assert 0.0 <= accuracy <= 1.0

    reference_stage.run(cfg)
    info = json.loads((tmp_path / "data/reference/info.json").read_text())
    assert info["images"] == 80 and info["inception"] is False
    assert not (tmp_path / "data/reference/inception.npz").exists()

    sample_stage.run(cfg, "base")
    split = load_split(tmp_path / "data/samples/base/samples")
    assert split.meta == meta
    assert np.bincount(split.labels, minlength=CLASSES).tolist() == [PER_CLASS] * CLASSES
    grid = Image.open(tmp_path / "metrics/plots/samples_base.png")
    assert grid.height == CLASSES * (64 + 2) + 2  # one row per class; 16 px tiles upscaled x4
    throughput = json.loads((tmp_path / "metrics/sample_base.json").read_text())
    assert throughput["n_samples"] == CLASSES * PER_CLASS and throughput["images_per_s"] > 0

    shard = tmp_path / "data/samples/base/samples/part-00000.parquet"
    first = shard.read_bytes()
    sample_stage.run(cfg, "base")
    assert shard.read_bytes() == first  # same seed, same bytes

    evaluate_stage.run(cfg, "base")
    evaluate_stage.run(cfg, "real")
    evaluate_stage.run(cfg, "recon")
    base = json.loads((tmp_path / "metrics/eval_base.json").read_text())
    real = json.loads((tmp_path / "metrics/eval_real.json").read_text())
    recon = json.loads((tmp_path / "metrics/eval_recon.json").read_text())
    for result in (base, real, recon):
        assert tuple(sorted(result)) == tuple(sorted(METRIC_KEYS))
        assert result["fid_inception"] is None and result["inception_score"] is None
        assert result["n_samples"] == CLASSES * PER_CLASS
    latest = json.loads((tmp_path / "metrics/sample_base.json").read_text())  # from the second run
    assert base["sampling_images_per_s"] == pytest.approx(latest["images_per_s"])
    assert real["sampling_images_per_s"] is None and recon["sampling_images_per_s"] is None
    assert base["fid_small_sample"] and base["fid_subsets"] == {}  # 24 images: no subset below
    # Held-out real images are far closer to val than a random generator's samples, and than the
    # untrained tokenizer's reconstructions of the same images.
    assert real["fid"] < base["fid"] and real["fid"] < recon["fid"]
