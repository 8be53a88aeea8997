"""``python -m pipeline.generate``: the same images as the sample stage, classes by name or index,
and clear errors for a wrong directory, an unknown class or a tokenizer that does not match."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from pipeline import layout
from pipeline.generate import main
from pipeline.shards import load_split
from pipeline.stages import sample as sample_stage
from pipeline.tokenizer.base import save_tokenizer
from pipeline.tokenizer.registry import load_tokenizer
from pipeline.tokenizer.vqvae import VQVAE
from tests.test_metrics_stages import CLASSES, PARAMS, PER_CLASS, SIZE, workdir  # noqa: F401 (fixture)


def test_the_command_draws_the_sample_stages_images(workdir, tmp_path):  # noqa: F811
    cfg, _ = workdir
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    sample_stage.run(cfg, "base")
    split = load_split(tmp_path / "data/samples/base/samples")
    tokenizer = load_tokenizer(layout.TOKENIZER_DIR)
    with torch.inference_mode():
        expected = (tokenizer.decode(torch.from_numpy(split.tokens).long()).clamp(0, 1) * 255).round()
    expected = expected.to(torch.uint8).numpy()

    assert main(["models/base", "--per-class", str(PER_CLASS), "--out-dir", "drawn", "-o", "grid.png"]) == 0
    drawn = sorted((tmp_path / "drawn").glob("*.png"))
    assert len(drawn) == CLASSES * PER_CLASS
    pixels = np.stack([np.asarray(Image.open(path))[None] for path in drawn])
    assert pixels.shape == (CLASSES * PER_CLASS, 1, SIZE, SIZE)
    assert np.array_equal(pixels, expected)  # same tokens, same decoder: the same images
    assert [int(p.stem.split("class")[1]) for p in drawn] == split.labels.tolist()
    assert Image.open(tmp_path / "grid.png").height == CLASSES * (64 + 2) + 2  # a row per class

    # The opt-in token draw reaches the decoder: the same seed gives other images (the same
    # distribution: tests/test_sampling.py).
    assert main(["models/base", "--per-class", str(PER_CLASS), "--token-draw", "inverse_cdf",
                 "--out-dir", "inverse"]) == 0
    inverse = np.stack([np.asarray(Image.open(path))[None]
                        for path in sorted((tmp_path / "inverse").glob("*.png"))])
    assert inverse.shape == pixels.shape and not np.array_equal(inverse, pixels)

    # Another seed gives other images; classes by name and by index select the same rows.
    assert main(["models/base", "--per-class", "2", "--seed", "9", "--class", "1", "--out-dir", "other"]) == 0
    names = (tmp_path / "data/prepared/classes.json").read_text()
    name = yaml.safe_load(names)[1]
    assert main(["models/base", "--per-class", "2", "--seed", "9", "--class", name.upper(),
                 "--out-dir", "by-name"]) == 0
    for a, b in zip(sorted((tmp_path / "other").glob("*.png")), sorted((tmp_path / "by-name").glob("*.png")),
                    strict=True):
        assert a.read_bytes() == b.read_bytes()


def test_clear_errors(workdir, tmp_path, capsys):  # noqa: F811
    assert main(["nowhere", "-o", "x.png"]) == 2
    assert "not a generator directory" in capsys.readouterr().err
    assert main(["models/base", "--class", "99", "-o", "x.png"]) == 2
    assert "no class '99'" in capsys.readouterr().err
    other = VQVAE(channels=1, image_size=SIZE, hidden=16, code_dim=8, codebook_size=32, downsamples=2,
                  res_blocks=1)
    save_tokenizer(other, tmp_path / "other-tokenizer")
    assert main(["models/base", "--tokenizer", "other-tokenizer", "-o", "x.png"]) == 2
    assert "this model was trained on the other one" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["models/base"])  # no output named
