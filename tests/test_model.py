"""MaskGIT backbone: shapes, conditioning, masking of training batches, loss, save/load."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from pipeline.errors import PipelineError
from pipeline.model.generators import load_generator
from pipeline.model.io import save_generator
from pipeline.model.transformer import MaskGIT, count_parameters
from pipeline.shards import TokenMeta
from pipeline.training.batches import mask_batch, masked_loss
from tests.helpers import generator_spec

V, C, L = 32, 4, 16


def make_model(seed: int = 0, **overrides) -> MaskGIT:
    torch.manual_seed(seed)
    spec = generator_spec(V, C, L, **{"dim": 16, "depth": 2, "heads": 4, "dropout": 0.0, **overrides})
    return MaskGIT(spec).eval()


def test_attributes_and_logit_shapes() -> None:
    model = make_model()
    assert (model.codebook_size, model.mask_id, model.num_classes, model.null_class, model.seq_len) == (
        V, V, C, C, L)
    assert model.tok_emb.num_embeddings == V + 1 and model.cls_emb.num_embeddings == C + 1
    tokens = torch.randint(0, V + 1, (5, L))  # includes masked positions
    labels = torch.tensor([0, 1, 2, 3, C])  # includes the null class
    logits = model(tokens, labels)
    assert logits.shape == (5, L, V) and logits.dtype == torch.float32  # the mask token is never predicted
    with pytest.raises(ValueError, match="expected tokens"):
        model(tokens[:, :-1], labels)
    with pytest.raises(ValueError, match="expected tokens"):
        model(tokens, labels[:-1])


def test_tied_head_shares_the_token_embeddings() -> None:
    tied, untied = make_model(tie_head=True), make_model(tie_head=False)
    assert count_parameters(untied) - count_parameters(tied) == V * 16
    names = {id(p) for n, p in tied.named_parameters() if n.startswith(tied.head_prefix)}
    assert id(tied.tok_emb.weight) not in names
    with torch.no_grad():  # changing the codebook embeddings changes the output projection too
        before = tied(torch.full((1, L), V), torch.tensor([0]))
        tied.tok_emb.weight[:V] += 1.0
        after = tied(torch.full((1, L), V), torch.tensor([0]))
    assert not torch.allclose(before, after)


def test_attention_is_bidirectional_and_class_conditioned() -> None:
    model = make_model()
    tokens = torch.randint(0, V, (1, L))
    later = tokens.clone()
    later[0, -1] = (later[0, -1] + 1) % V
    with torch.no_grad():
        out = model(tokens, torch.tensor([1]))
        # A change at the last position reaches the first one: no causal mask.
        assert not torch.allclose(out[0, 0], model(later, torch.tensor([1]))[0, 0])
        assert not torch.allclose(out, model(tokens, torch.tensor([2])))
        assert not torch.allclose(out, model(tokens, torch.tensor([model.null_class])))


@pytest.mark.parametrize("backbone", ["maskgit", "uvit"])
def test_logits_at_positions_are_the_full_logits_there(backbone: str) -> None:
    """The sampler asks for the logits of its masked positions only (the head skips the others):
    the full forward's numbers there, bit for bit at the sampler's sizes (here 40 x 7 rows). With a
    handful of rows the matmul library may take its small-matrix kernel, so those match to
    rounding."""
    from pipeline.model.uvit import UViT, UViTSpec

    torch.manual_seed(0)
    model = make_model() if backbone == "maskgit" else UViT(
        UViTSpec(codebook_size=V, num_classes=C, seq_len=L, dim=16, depth=2, heads=2)).eval()
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, V + 1, (40, L), generator=generator)
    labels = torch.randint(0, C + 1, (40,), generator=generator)
    positions = torch.stack([torch.randperm(L, generator=generator)[:7].sort().values for _ in range(40)])
    with torch.no_grad():
        full = model(tokens, labels)
        chosen = model(tokens, labels, positions)
        tiny = model(tokens[:1], labels[:1], positions[:1, :2])
    there = full.gather(1, positions.unsqueeze(-1).expand(-1, -1, V))
    assert chosen.shape == (40, 7, V) and torch.equal(chosen, there)
    torch.testing.assert_close(tiny, there[:1, :2], rtol=1e-5, atol=1e-6)


def test_mlp_gelu_in_place_without_autograd_is_the_textbook_mlp() -> None:
    """Without autograd the MLP applies GELU in place (less memory traffic when sampling). Either
    way the output must be the textbook ``proj(gelu(fc(x)))`` bit for bit, and with autograd the
    gradients the textbook ones."""
    torch.manual_seed(0)
    mlp = make_model().blocks[0].mlp
    x = torch.randn(3, 5, 16)
    textbook = mlp.proj(torch.nn.functional.gelu(mlp.fc(x)))
    with torch.no_grad():
        assert torch.equal(mlp(x), textbook)
    with torch.inference_mode():
        assert torch.equal(mlp(x), textbook)
    leaf = x.clone().requires_grad_(True)
    output = mlp(leaf)
    assert torch.equal(output, textbook)
    output.square().sum().backward()
    expected = torch.autograd.grad(mlp.proj(torch.nn.functional.gelu(mlp.fc(x.clone().requires_grad_(True))))
                                   .square().sum(), mlp.fc.weight)[0]
    assert torch.equal(mlp.fc.weight.grad, expected) and leaf.grad is not None


def test_dropout_only_in_training_mode() -> None:
    model = make_model(dropout=0.5)
    tokens, labels = torch.randint(0, V, (2, L)), torch.tensor([0, 1])
    with torch.no_grad():
        assert torch.equal(model(tokens, labels), model(tokens, labels))
        model.train()
        assert not torch.equal(model(tokens, labels), model(tokens, labels))


@pytest.mark.parametrize("schedule", ["cosine", "beta"])
def test_mask_batch_masks_ceil_ratio_tokens_and_at_least_one(schedule: str) -> None:
    tokens = torch.randint(0, V, (400, L))
    labels = torch.randint(0, C, (400,))
    generator = torch.Generator().manual_seed(0)
    batch = mask_batch(tokens, labels, generator, mask_schedule=schedule, mask_beta=(12.0, 3.0),
                       p_uncond=0.0, mask_id=V, null_class=C)
    counts = batch.mask.sum(1)
    assert counts.min() >= 1 and counts.max() <= L
    assert torch.equal(batch.inputs[batch.mask], torch.full((int(counts.sum()),), V))
    assert torch.equal(batch.inputs[~batch.mask], tokens[~batch.mask])
    assert torch.equal(batch.targets, tokens) and torch.equal(batch.labels, labels)
    # The counts are ceil(ratio * L) for ratios drawn from the schedule: same generator, same ratios.
    from pipeline.schedules import sample_train_mask_ratio

    ratios = sample_train_mask_ratio(schedule, 400, torch.Generator().manual_seed(0), (12.0, 3.0))
    assert torch.equal(counts, torch.ceil(ratios * L).long().clamp(1, L))
    mean = counts.float().mean().item() / L
    expected = 12 / 15 if schedule == "beta" else 2 / math.pi  # E[cos(pi u / 2)] = 2 / pi
    assert abs(mean - expected) < 0.05
    # Deterministic for a generator seed; different seeds give different masks.
    again = mask_batch(tokens, labels, torch.Generator().manual_seed(0), mask_schedule=schedule,
                       mask_beta=(12.0, 3.0), p_uncond=0.0, mask_id=V, null_class=C)
    other = mask_batch(tokens, labels, torch.Generator().manual_seed(1), mask_schedule=schedule,
                       mask_beta=(12.0, 3.0), p_uncond=0.0, mask_id=V, null_class=C)
    assert torch.equal(batch.mask, again.mask) and not torch.equal(batch.mask, other.mask)


def test_label_dropout_uses_the_null_class() -> None:
    tokens, labels = torch.randint(0, V, (2000, L)), torch.randint(0, C, (2000,))
    batch = mask_batch(tokens, labels, torch.Generator().manual_seed(0), mask_schedule="cosine",
                       mask_beta=(12.0, 3.0), p_uncond=0.1, mask_id=V, null_class=C)
    dropped = batch.labels == C
    assert 0.07 < dropped.float().mean() < 0.13
    assert torch.equal(batch.labels[~dropped], labels[~dropped])


def test_masked_loss_counts_only_masked_positions() -> None:
    tokens = torch.randint(0, V, (3, L))
    batch = mask_batch(tokens, torch.zeros(3, dtype=torch.long), torch.Generator().manual_seed(0),
                       mask_schedule="cosine", mask_beta=(12.0, 3.0), p_uncond=0.0, mask_id=V, null_class=C)
    logits = torch.randn(3, L, V)
    # Perfect predictions at masked positions, garbage elsewhere: zero loss, full accuracy.
    logits[batch.mask] = torch.nn.functional.one_hot(tokens[batch.mask], V).float() * 100.0
    loss, correct, count = masked_loss(logits, batch, label_smoothing=0.0)
    assert loss.item() < 1e-6 and correct == count == batch.mask.sum()
    smoothed, _, _ = masked_loss(logits, batch, label_smoothing=0.1)
    assert smoothed.item() > 1.0  # smoothing penalises overconfidence


def test_base_model_save_and_load_round_trip(tmp_path: Path) -> None:
    model = make_model(seed=3, tie_head=False)
    meta = TokenMeta(4, 4, V, C, "fp")
    save_generator(model, tmp_path / "base", variant="base", token_meta=meta)
    assert sorted(p.name for p in (tmp_path / "base").iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_generator(tmp_path / "base", expected_meta=meta)
    assert loaded.adapter is None and not loaded.training and loaded.spec == model.spec
    tokens, labels = torch.randint(0, V + 1, (4, L)), torch.randint(0, C + 1, (4,))
    with torch.no_grad():
        assert torch.equal(loaded(tokens, labels), model(tokens, labels))
    with pytest.raises(PipelineError, match="codebook_size: model 32 vs tokens 64"):
        load_generator(tmp_path / "base", expected_meta=TokenMeta(4, 4, 64, C, "fp"))
    with pytest.raises(PipelineError, match="not found"):
        load_generator(tmp_path / "missing")
