"""MaskGIT decoding (pipeline.sampling) on a tiny fake model, and the sample stage's helpers."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from pipeline.config import SampleConfig, replace
from pipeline.images import grid_classes, grid_selection, render_grid
from pipeline.layout import SAMPLES_SPLIT
from pipeline.sampling import (
    DecodePlan,
    batch_generator,
    class_balanced_labels,
    decode_plan,
    generate_samples,
    guided_logits,
    maskgit_decode,
    write_samples,
)
from pipeline.schedules import counts_from_ratios, masked_counts
from pipeline.shards import TokenMeta, load_split, read_meta

V, L, K = 16, 12, 4  # codebook, sequence length, classes
MASK, NULL = V, K


class FakeModel:
    """Deterministic logits that depend on the visible tokens, the position and the label."""

    def __init__(self, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.token_table = torch.randn(V + 1, V, generator=g)
        self.position_table = torch.randn(L, V, generator=g)
        self.class_table = torch.randn(K + 1, V, generator=g) * 3
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __call__(self, tokens: torch.Tensor, labels: torch.Tensor, positions: torch.Tensor | None = None
                 ) -> torch.Tensor:
        self.calls.append((tokens.clone(), labels.clone()))
        context = self.token_table[tokens].mean(dim=1, keepdim=True)
        logits = self.position_table[None] + context + self.class_table[labels][:, None]
        return logits if positions is None else at_positions(logits, positions)


def at_positions(logits: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """(B, L, V) logits -> (B, M, V) at ``positions`` (B, M)."""
    return logits.gather(1, positions.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))


def decode(model, labels, plan, seed=0, on_step=None):
    return maskgit_decode(model, labels, seq_len=L, mask_id=MASK, null_class=NULL, plan=plan,
                          generator=batch_generator(seed, 0), on_step=on_step)


def plan_for(**overrides) -> DecodePlan:
    return decode_plan(replace(SampleConfig(), **overrides), L)


@pytest.mark.parametrize("schedule", ["cosine", "arccos", "linear"])
@pytest.mark.parametrize("steps", [1, 4, 8])
def test_tokens_revealed_per_step_follow_the_schedule(schedule, steps):
    plan = plan_for(schedule=schedule, steps=steps)
    assert plan.masked_after == tuple(masked_counts(schedule, steps, L))
    seen = []
    decode(FakeModel(), class_balanced_labels(K, 2), plan,
           on_step=lambda step, tokens: seen.append((tokens == MASK).sum(dim=1)))
    assert len(seen) == steps
    for step, masked in enumerate(seen):
        # every row has exactly the scheduled number of masked tokens after every step
        assert masked.tolist() == [plan.masked_after[step]] * (2 * K)


def test_decoded_tokens_never_change_and_nothing_stays_masked():
    snapshots = []
    result = decode(FakeModel(), class_balanced_labels(K, 3), plan_for(steps=6),
                    on_step=lambda step, tokens: snapshots.append(tokens.clone()))
    for before, after in itertools.pairwise(snapshots):
        decided = before != MASK
        assert torch.equal(after[decided], before[decided])
    assert torch.equal(snapshots[-1], result)
    assert not (result == MASK).any()
    assert result.min() >= 0 and result.max() < V


def test_model_sees_its_own_partial_decodes():
    # Step t's input is step t-1's output: the decoder feeds back what it kept.
    model, snapshots = FakeModel(), []
    decode(model, class_balanced_labels(K, 1), plan_for(steps=4, cfg=0.0),
           on_step=lambda step, tokens: snapshots.append(tokens.clone()))
    assert (model.calls[0][0] == MASK).all()
    for step in range(1, 4):
        assert torch.equal(model.calls[step][0], snapshots[step - 1])


def test_same_seed_same_output_and_different_seed_differs():
    labels = class_balanced_labels(K, 4)
    plan = plan_for(steps=5, cfg=1.5)
    first = decode(FakeModel(), labels, plan, seed=7)
    again = decode(FakeModel(), labels, plan, seed=7)
    other = decode(FakeModel(), labels, plan, seed=8)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_cfg_scale_zero_is_the_conditional_logits():
    model = FakeModel()
    tokens = torch.full((3, L), MASK)
    tokens[:, ::2] = 5
    labels = torch.tensor([0, 1, 3])
    positions = torch.arange(1, L, 2).expand(3, -1)  # the masked ones
    cond = model(tokens, labels, positions)
    model.calls.clear()
    assert torch.equal(guided_logits(model, tokens, labels, positions, NULL, 0.0), cond)
    assert len(model.calls) == 1 and not (model.calls[0][1] == NULL).any()  # no unconditional pass

    uncond = model(tokens, torch.full_like(labels, NULL), positions)
    model.calls.clear()
    guided = guided_logits(model, tokens, labels, positions, NULL, 2.0)
    assert len(model.calls) == 1  # conditional and unconditional batched into one call
    batched_tokens, batched_labels = model.calls[0]
    assert batched_tokens.shape[0] == 6 and batched_labels.tolist() == [0, 1, 3, NULL, NULL, NULL]
    # Computed in place on its own tensor, yet bit for bit the textbook expression.
    assert torch.equal(guided, cond + 2.0 * (cond - uncond))


def test_the_in_place_gumbel_noise_is_minus_log_minus_log_uniform_bit_for_bit():
    from pipeline.sampling.decode import _gumbel

    shape = torch.Size((4, L, K + 3))
    noise = _gumbel(shape, torch.Generator().manual_seed(3), torch.device("cpu"))
    uniform = torch.rand(shape, generator=torch.Generator().manual_seed(3)).clamp(1e-20, 1.0)
    assert torch.equal(noise, -torch.log((-torch.log(uniform)).clamp_min(1e-20)))


def test_decoding_with_cfg_zero_ignores_the_unconditional_prediction():
    labels = class_balanced_labels(K, 2)
    plan = plan_for(steps=4, cfg=0.0)
    reference = decode(FakeModel(), labels, plan, seed=3)
    scrambled = FakeModel()
    scrambled.class_table[NULL] = 1000.0 * torch.randn(V)  # a wildly different unconditional head
    assert torch.equal(decode(scrambled, labels, plan, seed=3), reference)


def test_cfg_changes_samples_and_linear_schedule_ramps():
    labels = class_balanced_labels(K, 4)
    assert not torch.equal(decode(FakeModel(), labels, plan_for(cfg=0.0)),
                           decode(FakeModel(), labels, plan_for(cfg=3.0)))
    plan = plan_for(steps=5, cfg=2.0, cfg_schedule="linear")
    assert plan.cfg == pytest.approx((0.0, 0.5, 1.0, 1.5, 2.0))
    assert plan_for(steps=3, cfg=2.0).cfg == (2.0, 2.0, 2.0)


def test_choice_temperature_is_annealed_to_zero():
    plan = plan_for(steps=4, choice_temperature=4.0)
    assert plan.choice_temperature == pytest.approx((3.0, 2.0, 1.0, 0.0))


def test_low_temperature_without_noise_is_greedy_on_the_most_confident():
    # temperature -> 0 and no choice noise: single step decoding is the argmax everywhere
    model = FakeModel()
    plan = DecodePlan(masked_after=(0,), temperature=(1e-4,), choice_temperature=(0.0,), cfg=(0.0,))
    labels = torch.tensor([0, 2])
    out = decode(model, labels, plan)
    expected = model(torch.full((2, L), MASK), labels).argmax(-1)
    assert torch.equal(out, expected)


def test_confidence_ranks_the_untempered_probabilities(monkeypatch: pytest.MonkeyPatch):
    """The temperature tempers the draw only. Position 0's top token has the higher untempered
    probability (0.74 vs 0.52), position 1's the higher one at temperature 4 (0.51 vs 0.23): with
    one position left masked after the first step, MaskGIT and AutoNAT keep position 0."""
    import pipeline.sampling.decode as decode

    # No Gumbel noise: every draw is the argmax, so the test sees the confidence ranking alone.
    monkeypatch.setattr(decode, "_gumbel", lambda shape, generator, device: torch.zeros(shape))
    logits = torch.full((2, 8), -30.0)
    logits[0, :] = 0.0
    logits[0, 3] = 3.0  # one strong token among seven plain ones
    logits[1, 5], logits[1, 6] = 2.0, 1.9  # two close candidates, nothing else
    plan = DecodePlan(masked_after=(1, 0), temperature=(4.0, 4.0), choice_temperature=(0.0, 0.0),
                      cfg=(0.0, 0.0))
    after = []
    maskgit_decode(lambda tokens, labels, where: at_positions(logits.expand(len(tokens), -1, -1), where),
                   torch.tensor([0]), seq_len=2, mask_id=8, null_class=1, plan=plan,
                   generator=torch.Generator().manual_seed(0),
                   on_step=lambda step, tokens: after.append(tokens.clone()))
    assert after[0].tolist() == [[3, 8]]  # tempered confidences would have kept position 1 instead
    assert after[1].tolist() == [[3, 5]]


def test_strategy_arrays_replace_the_schedule_per_step():
    strategy = {"mask_ratio": [0.5, 0.25, 0.0], "cfg": [0.0, 1.0, 3.0], "temperature": [1.0, 0.5, 0.1],
                "choice_temperature": [2.0, 1.0, 0.0]}
    plan = plan_for(steps=3, strategy=strategy)
    assert plan.masked_after == (6, 3, 0)
    assert plan.cfg == (0.0, 1.0, 3.0)
    assert plan.temperature == (1.0, 0.5, 0.1)
    assert plan.choice_temperature == (2.0, 1.0, 0.0)
    # a partial strategy keeps the schedule for the other keys
    partial = plan_for(steps=3, strategy={"cfg": [1.0, 2.0, 3.0]})
    assert partial.masked_after == tuple(masked_counts("cosine", 3, L))
    # the unconditional pass runs exactly on the steps whose scale is non-zero
    model = FakeModel()
    decode(model, class_balanced_labels(K, 1), plan)
    assert [bool((labels == NULL).any()) for _, labels in model.calls] == [False, True, True]


def test_counts_from_ratios_reveal_at_least_one_token_per_step():
    assert counts_from_ratios([0.99, 0.98, 0.0], 12) == (11, 10, 0)
    assert counts_from_ratios([1.0, 1.0, 0.5, 0.0], 4) == (3, 2, 1, 0)
    with pytest.raises(ValueError, match="non-increasing"):
        DecodePlan(masked_after=(3, 4, 0), temperature=(1.0,) * 3, choice_temperature=(0.0,) * 3,
                   cfg=(0.0,) * 3)


def test_more_steps_than_tokens_still_decodes_everything():
    out = decode(FakeModel(), class_balanced_labels(K, 1), plan_for(steps=L + 4))
    assert not (out == MASK).any()


def test_batches_are_independent_of_run_order():
    # Batch b's samples depend only on (seed, b): the basis for splitting work across processes.
    cfg = replace(SampleConfig(), per_class=3, batch_size=5, steps=4)
    whole = generate_samples(FakeModel(), num_classes=K, seq_len=L, mask_id=MASK, null_class=NULL,
                             sample_cfg=cfg, seed=11)
    labels = class_balanced_labels(K, 3)
    second = maskgit_decode(FakeModel(), labels[5:10], seq_len=L, mask_id=MASK, null_class=NULL,
                            plan=decode_plan(cfg, L), generator=batch_generator(11, 1))
    assert np.array_equal(whole.tokens[5:10], second.numpy())


@pytest.mark.parametrize("token_draw", ["gumbel_max", "inverse_cdf"])
@pytest.mark.parametrize("chunk_rows", [1, 3, 10, 64])
def test_decoding_in_row_chunks_gives_the_whole_batch_tokens(chunk_rows, token_draw):
    # The sampler decodes CPU batches in row chunks for the cache: the noise of each chunk comes
    # from the same generator stream, so every token must match one whole-batch decode.
    plan = plan_for(steps=5, temperature=1.3, choice_temperature=4.5, cfg=2.0)
    labels = class_balanced_labels(K, 5)[:19]
    whole, chunked = (
        maskgit_decode(FakeModel(), labels, seq_len=L, mask_id=MASK, null_class=NULL, plan=plan,
                       generator=batch_generator(3, 0), token_draw=token_draw, chunk_rows=rows)
        for rows in (None, chunk_rows))
    assert torch.equal(chunked, whole)


def textbook_decode(model: FakeModel, labels: torch.Tensor, plan: DecodePlan, seed: int) -> torch.Tensor:
    """The decoder as first written: the logits, log-softmax and Gumbel-max draw at *every*
    position of the grid, decoded ones included, then a where() keeps those."""
    generator = batch_generator(seed, 0)
    tokens = torch.full((len(labels), L), MASK)

    def gumbel(shape):
        uniform = torch.rand(shape, generator=generator).clamp(1e-20, 1.0)
        return -torch.log((-torch.log(uniform)).clamp_min(1e-20))

    for step in range(plan.steps):
        cond = model(tokens, labels)
        logits = cond + plan.cfg[step] * (cond - model(tokens, torch.full_like(labels, NULL)))
        log_probs = torch.log_softmax(logits, -1)
        tempered = torch.log_softmax(logits / plan.temperature[step], -1)
        sampled = (tempered + gumbel(tempered.shape)).argmax(-1)
        confidence = log_probs.gather(-1, sampled[..., None])[..., 0]
        if plan.choice_temperature[step] > 0:
            confidence = confidence + plan.choice_temperature[step] * gumbel(confidence.shape)
        masked = tokens == MASK
        confidence = torch.where(masked, confidence, torch.full_like(confidence, torch.inf))
        tokens = torch.where(masked, sampled, tokens)
        if plan.masked_after[step]:
            tokens = tokens.scatter(1, confidence.topk(plan.masked_after[step], largest=False).indices, MASK)
    return tokens


def test_gumbel_max_draws_the_tokens_of_the_textbook_full_grid_decoder():
    """The decoder asks for logits at masked positions only, yet still draws the Gumbel noise of the
    whole grid: the generator's stream, and with it every sample of earlier runs, is unchanged."""
    plan = plan_for(steps=5, temperature=1.3, choice_temperature=4.5, cfg=2.0)
    labels = class_balanced_labels(K, 3)
    textbook = textbook_decode(FakeModel(), labels, plan, seed=5)
    assert torch.equal(decode(FakeModel(), labels, plan, seed=5), textbook)


def test_samples_are_class_balanced_and_written_as_token_shards(tmp_path):
    cfg = replace(SampleConfig(), per_class=5, batch_size=7, steps=3)
    samples = generate_samples(FakeModel(), num_classes=K, seq_len=L, mask_id=MASK, null_class=NULL,
                               sample_cfg=cfg, seed=0)
    meta = TokenMeta(grid_h=3, grid_w=4, codebook_size=V, num_classes=K, tokenizer_fingerprint="abc")
    write_samples(tmp_path / "base", meta, samples)
    assert read_meta(tmp_path / "base") == meta
    split = load_split(tmp_path / "base" / SAMPLES_SPLIT)
    assert np.bincount(split.labels, minlength=K).tolist() == [5] * K
    assert split.image_ids.tolist() == list(range(5 * K))
    assert np.array_equal(split.tokens, samples.tokens)
    # same seed, same bytes
    write_samples(tmp_path / "again", meta, generate_samples(
        FakeModel(), num_classes=K, seq_len=L, mask_id=MASK, null_class=NULL, sample_cfg=cfg, seed=0))
    shard = f"{SAMPLES_SPLIT}/part-00000.parquet"
    assert (tmp_path / "base" / shard).read_bytes() == (tmp_path / "again" / shard).read_bytes()


def test_grid_has_one_row_per_class():
    assert grid_classes(10, 10) == list(range(10))
    assert grid_classes(1000, 5) == [0, 250, 500, 749, 999]
    labels = class_balanced_labels(3, 4).numpy()
    chosen = grid_selection(labels, [0, 2], 3)
    assert labels[chosen].tolist() == [0, 0, 0, 2, 2, 2]
    images = np.zeros((2, 3, 1, 28, 28), np.uint8)
    images[1] = 255
    picture = render_grid(images, ["0 zero", "2 two"])
    assert picture.mode == "RGB"
    assert picture.height == 2 * 56 + 3 * 2  # tiles upscaled to 56 px, 2 px padding
    pixels = np.asarray(picture)
    assert pixels[-4, -4].tolist() == [255, 255, 255] and pixels[4, -4].tolist() == [0, 0, 0]


@pytest.mark.parametrize("token_draw", ["gumbel_max", "inverse_cdf"])
def test_sampled_tokens_follow_the_tempered_model_distribution(token_draw):
    # One position, fixed logits: token frequencies over many rows match softmax(logits / T).
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, 0.5])

    def fixed(tokens, labels, positions):
        return logits.expand(tokens.shape[0], 1, 5)

    for temperature in (1.0, 2.0):
        plan = DecodePlan(masked_after=(0,), temperature=(temperature,), choice_temperature=(1.0,),
                          cfg=(0.0,))
        out = maskgit_decode(fixed, torch.zeros(20000, dtype=torch.long), seq_len=1, mask_id=5, null_class=1,
                             plan=plan, generator=batch_generator(0, 0), token_draw=token_draw)
        frequencies = torch.bincount(out[:, 0], minlength=5).double() / len(out)
        expected = torch.softmax(logits.double() / temperature, 0)
        # 4 standard errors of a frequency: a token drawn one index off fails by far more
        torch.testing.assert_close(frequencies, expected, atol=0.015, rtol=0)


def test_inverse_cdf_draws_the_first_token_whose_cumulative_probability_passes_the_uniform():
    from pipeline.sampling.decode import inverse_cdf

    probabilities = torch.tensor([0.1, 0.2, 0.3, 0.4])
    log_probs = probabilities.log().expand(8, 1, 4)
    uniforms = torch.rand(8, 1, 1, generator=torch.Generator().manual_seed(2))
    drawn = inverse_cdf(log_probs, torch.Generator().manual_seed(2))
    # by hand: token 0 below 0.1, 1 below 0.3, 2 below 0.6, 3 above
    expected = [0 if u < 0.1 else 1 if u < 0.3 else 2 if u < 0.6 else 3 for u in uniforms.flatten().tolist()]
    assert drawn.flatten().tolist() == expected
    assert len(set(expected)) >= 3  # the seed reaches most branches


@pytest.mark.parametrize(("schedule", "expected"), [
    # floor(256 * gamma(k / 8)), worked out by hand: cos(pi/16) = 0.98079 -> 251.08 -> 251, ...
    ("cosine", [251, 236, 212, 181, 142, 97, 49, 0]),  # MaskGIT's T8 at 16 x 16 tokens
    # acos(k / 8) / (pi / 2): 0.92022, 0.83914, 0.75529, 0.66667, 0.57020, 0.46011, 0.32172
    ("arccos", [235, 214, 193, 170, 145, 117, 82, 0]),
    ("linear", [224, 192, 160, 128, 96, 64, 32, 0]),
])
def test_masked_counts_are_the_hand_computed_ones(schedule: str, expected: list[int]) -> None:
    assert masked_counts(schedule, 8, 256) == expected


def test_bf16_sampling_warns_on_a_cpu_without_native_bf16(monkeypatch, caplog) -> None:
    """bf16 on a CPU that emulates it samples slower than float32: the user is told, once per
    model, and nothing is said where the CPU has AVX512-BF16 or AMX, or for float32."""
    import pipeline.sampling.generate as generate
    from tests.test_model import make_model

    model = make_model()
    for native, precision, warned in ((False, "bf16", True), (True, "bf16", False), (False, "no", False)):
        monkeypatch.setattr(generate, "cpu_has_native_bf16", lambda native=native: native)
        caplog.clear()
        with caplog.at_level("WARNING", logger=generate.__name__):
            generate.model_logits(model, torch.device("cpu"), precision)
        assert any("no native bf16" in r.getMessage() for r in caplog.records) == warned, (native, precision)


def test_chunked_cpu_logits_are_the_whole_batch_logits() -> None:
    """The sampler's CPU forward runs in row chunks for the cache; it must give the same bytes as
    one forward of the whole batch, for a model with an adapter too (its precomputed tables)."""
    from pipeline.config import FusionConfig
    from pipeline.model.generators import build_generator
    from pipeline.sampling.generate import model_logits
    from tests.helpers import generator_spec
    from tests.test_autonat import random_graphs

    spec = generator_spec(24, 3, 40, dim=32, depth=2, heads=2)
    torch.manual_seed(0)
    model = build_generator(spec, FusionConfig(), random_graphs(24, 3, 40, 0)).eval()
    with torch.no_grad():
        for param in model.adapter.parameters():
            param.add_(0.1 * torch.randn_like(param))
    model.precompute()
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 25, (300, 40), generator=generator)  # 12,000 tokens: three chunks
    labels = torch.randint(0, 4, (300,), generator=generator)
    every = torch.arange(40).expand(300, -1)
    some = torch.stack([torch.randperm(40, generator=generator)[:17].sort().values for _ in range(300)])
    cpu = torch.device("cpu")
    with torch.no_grad():
        reference = model(tokens, labels)
        assert torch.equal(model_logits(model, cpu)(tokens, labels, every), reference)
        assert torch.equal(model_logits(model, cpu)(tokens, labels, some), at_positions(reference, some))
        # The opt-in bf16 forward: other numbers (hence its own param), close to float32's.
        bf16 = model_logits(model, cpu, "bf16")(tokens, labels, every)
        assert bf16.dtype == torch.bfloat16 and not torch.equal(bf16.float(), reference)
        torch.testing.assert_close(bf16.float(), reference, atol=0.1, rtol=0.05)
        assert torch.equal(model_logits(model, cpu, "no")(tokens, labels, every), reference)
