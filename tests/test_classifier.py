"""The domain classifier (pipeline.metrics.classifier): learns, is deterministic, round-trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.config import ClassifierConfig
from pipeline.data import synthetic_image
from pipeline.errors import PipelineError
from pipeline.images import quantize
from pipeline.metrics.classifier import (
    ClassifierSpec,
    DomainClassifier,
    accuracy,
    classify,
    load_classifier,
    random_batches,
    save_classifier,
    train_classifier,
)

CLASSES, SIZE = 5, 28


def synthetic_split(split: str, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    pairs = [synthetic_image(i, split, SIZE, 1, CLASSES) for i in range(count)]
    images = torch.from_numpy(np.stack([image for image, _ in pairs]))
    return images, torch.tensor([label for _, label in pairs])


@pytest.fixture(scope="module")
def data():
    return synthetic_split("train", 300), synthetic_split("val", 150)


def spec() -> ClassifierSpec:
    return ClassifierSpec(channels=1, image_size=SIZE, num_classes=CLASSES, feature_dim=32, width=16)


def fit(train, seed=0, steps=150) -> DomainClassifier:
    settings = ClassifierConfig(steps=steps, batch_size=32, lr=3e-3, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    return train_classifier(spec(), random_batches(*train, 32, generator), settings)


def test_classifier_learns_held_out_classes(data):
    train, (val_images, val_labels) = data
    model = fit(train)
    features, logits = classify(model, val_images.split(64))
    assert features.shape == (150, 32) and logits.shape == (150, CLASSES)
    assert (features >= 0).all()  # post-ReLU penultimate activations
    assert accuracy(logits, val_labels.numpy()) > 0.8  # chance is 0.2


def test_training_depends_on_its_own_seed_not_the_global_one(data):
    train, (_val_images, _) = data
    torch.manual_seed(123)
    first = fit(train, seed=4, steps=15)
    torch.manual_seed(456)
    second = fit(train, seed=4, steps=15)
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), name
    other = fit(train, seed=5, steps=15)
    assert not torch.equal(first.head.weight, other.head.weight)


def test_save_and_load_give_the_same_outputs(tmp_path, data):
    train, (val_images, _) = data
    model = fit(train, steps=10)
    save_classifier(model, tmp_path / "classifier", extra={"val_accuracy": 0.5})
    loaded = load_classifier(tmp_path / "classifier")
    assert loaded.spec == model.spec and not loaded.training
    for a, b in zip(classify(model, [val_images[:20]]), classify(loaded, [val_images[:20]])):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(PipelineError, match="dvc repro classifier"):
        load_classifier(tmp_path / "missing")


@pytest.mark.parametrize(("size", "blocks"), [(28, 2), (32, 2), (16, 1), (64, 3), (256, 5)])
def test_architecture_scales_with_the_image_size(size, blocks):
    spec = ClassifierSpec(channels=3, image_size=size, num_classes=7, feature_dim=16, width=32)
    model = DomainClassifier(spec)
    assert model.spec.downsamples == blocks
    features, logits = model.eval().features_and_logits(torch.rand(2, 3, size, size))
    assert features.shape == (2, 16) and logits.shape == (2, 7)


def test_inputs_are_uint8_and_quantize_rounds():
    model = DomainClassifier(spec())
    with pytest.raises(TypeError, match="uint8"):
        classify(model, [torch.rand(2, 1, SIZE, SIZE)])
    values = quantize(torch.tensor([0.0, 0.5 / 255, 0.6 / 255, 1.0, 1.5, -0.2]))
    assert values.tolist() == [0, 0, 1, 255, 255, 0] or values.tolist() == [0, 1, 1, 255, 255, 0]
    assert values.dtype == torch.uint8
