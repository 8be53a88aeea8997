"""The trained VQ-VAE tokenizer: interface shapes, determinism, persistence, codebook upkeep."""

import numpy as np
import pytest
import torch

from pipeline.config import TokenizerConfig, replace
from pipeline.data import synthetic_image
from pipeline.errors import PipelineError
from pipeline.tokenizer.base import save_tokenizer, tokenizer_fingerprint
from pipeline.tokenizer.registry import load_tokenizer
from pipeline.tokenizer.train import build_vqvae, evaluate_tokenizer, random_batches, train_vqvae
from pipeline.tokenizer.vqvae import VQVAE, EMAQuantizer

TINY = TokenizerConfig(codebook_size=32, code_dim=8, hidden=16, steps=150, batch_size=32, lr=3e-3)


def _images(n=256, size=16):
    return np.stack([synthetic_image(i, "train", size, 1, 4)[0] for i in range(n)])


def _train(cfg):
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = build_vqvae(cfg, channels=1, image_size=16)
    losses = train_vqvae(model, random_batches(_images(), 32, generator), cfg, generator, torch.device("cpu"))
    return model.eval(), losses


def _report(model):
    images = (torch.from_numpy(_images(128)).float() / 255).split(64)
    return evaluate_tokenizer(model, iter(images), torch.device("cpu"))


@pytest.fixture(scope="module")
def trained():
    return _train(TINY)


def test_encode_decode_shapes_and_ranges(trained):
    model, _ = trained
    images = torch.from_numpy(_images(5)).float() / 255
    tokens = model.encode(images)
    assert model.grid == (4, 4) and model.seq_len == 16
    assert tokens.shape == (5, 16) and tokens.dtype == torch.int64
    assert int(tokens.min()) >= 0 and int(tokens.max()) < model.codebook_size
    decoded = model.decode(tokens)
    assert decoded.shape == (5, 1, 16, 16)
    assert float(decoded.min()) >= 0 and float(decoded.max()) <= 1


def test_encoding_is_deterministic_and_batch_independent(trained):
    model, _ = trained
    images = torch.from_numpy(_images(6)).float() / 255
    together = model.encode(images)
    one_by_one = torch.cat([model.encode(images[i : i + 1]) for i in range(6)])
    torch.testing.assert_close(together, one_by_one, rtol=0, atol=0)
    torch.testing.assert_close(model.encode(images), together, rtol=0, atol=0)


def test_row_major_token_order():
    # A code written into one latent cell must come back at index row * grid_w + col.
    model = VQVAE(channels=1, image_size=16, hidden=8, code_dim=4, codebook_size=16, downsamples=2)
    latents = torch.randn(1, 4, 4, 4)
    model.quantizer.codebook.copy_(torch.randn(16, 4) * 10)
    latents[:] = model.quantizer.codebook[0][None, :, None, None]
    latents[0, :, 1, 2] = model.quantizer.codebook[7]
    flat = latents.permute(0, 2, 3, 1).reshape(-1, 4)
    tokens = model.quantizer.nearest(flat).view(1, -1)
    assert tokens[0, 1 * 4 + 2] == 7 and int((tokens != 0).sum()) == 1


def test_training_reduces_loss_and_keeps_codes_alive(trained):
    model, losses = trained
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:5])
    report = _report(model)
    assert report.codebook_usage > 0.8
    assert report.psnr > 13
    assert report.perplexity > 8


def test_without_restarts_the_codebook_collapses(trained):
    # The same run with restarts switched off: on these simple images most codes die.
    model, _ = _train(replace(TINY, dead_threshold=0.0))
    assert _report(model).codebook_usage < 0.5 * _report(trained[0]).codebook_usage


def test_dead_codes_are_restarted():
    quantizer = EMAQuantizer(codebook_size=8, code_dim=2, decay=0.5, dead_threshold=1.0).train()
    generator = torch.Generator().manual_seed(0)
    # All inputs sit near one point: after initialisation most codes get nothing and must be
    # restarted at (noisy copies of) real inputs instead of staying where nothing maps to them.
    z = torch.randn(4, 2, 4, 4) * 0.01 + 5.0
    quantizer(z, generator)
    far_code = torch.tensor([[-100.0, -100.0]])
    quantizer.codebook[3] = far_code
    quantizer.ema_count[3] = 0.0
    quantizer(z, generator)
    assert torch.linalg.norm(quantizer.codebook[3] - 5.0) < 1.0


def test_save_load_round_trip_and_fingerprint(trained, tmp_path):
    model, _ = trained
    fingerprint = save_tokenizer(model, tmp_path / "tok")
    loaded = load_tokenizer(tmp_path / "tok")
    images = torch.from_numpy(_images(4)).float() / 255
    torch.testing.assert_close(loaded.encode(images), model.encode(images), rtol=0, atol=0)
    assert tokenizer_fingerprint(tmp_path / "tok") == fingerprint
    assert save_tokenizer(model, tmp_path / "again") == fingerprint  # same weights, same identity
    with torch.no_grad():
        model.decoder.net[0].bias.add_(1.0)
    assert save_tokenizer(model, tmp_path / "changed") != fingerprint


def test_missing_tokenizer_dir_is_a_clear_error(tmp_path):
    with pytest.raises(PipelineError, match="dvc repro tokenizer"):
        load_tokenizer(tmp_path / "nothing")
