"""The one weight format (pipeline.weights): safetensors files and content fingerprints."""

from __future__ import annotations

import pytest
import torch

from pipeline.errors import PipelineError
from pipeline.weights import load_weights, save_weights, tensor_fingerprint


def test_weights_round_trip_exactly_with_shared_and_strided_tensors(tmp_path):
    base = torch.randn(4, 6)
    state = {"a": base, "tied": base, "strided": base.t(), "half": torch.randn(3).bfloat16(),
             "ids": torch.arange(5, dtype=torch.int16), "flag": torch.tensor([True, False])}
    save_weights(state, tmp_path / "w.safetensors")
    loaded = load_weights(tmp_path / "w.safetensors")
    assert set(loaded) == set(state)
    for name, tensor in state.items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor)
    assert tensor_fingerprint(loaded) == tensor_fingerprint(state)


def test_the_fingerprint_is_the_contents_not_the_order_or_container():
    state = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.zeros(3)}
    reference = tensor_fingerprint(state)
    assert tensor_fingerprint(dict(reversed(state.items()))) == reference
    assert tensor_fingerprint({"w": state["w"].t().contiguous().t(), "b": state["b"]}) == reference
    changed = [
        {"w": state["w"].reshape(3, 2), "b": state["b"]},  # shape
        {"w": state["w"].double(), "b": state["b"]},  # dtype
        {"w2": state["w"], "b": state["b"]},  # name
        {"w": state["w"] + 1e-6, "b": state["b"]},  # one value
    ]
    assert len({reference, *(tensor_fingerprint(s) for s in changed)}) == len(changed) + 1
    assert tensor_fingerprint(state, extra=b"arch") != reference


def test_missing_or_old_weights_say_what_to_do(tmp_path):
    with pytest.raises(PipelineError, match="no weights at"):
        load_weights(tmp_path / "model.safetensors")
    (tmp_path / "model.pt").write_bytes(b"old")
    with pytest.raises(PipelineError, match=r"model\.pt is the format of an older version"):
        load_weights(tmp_path / "model.safetensors")
    (tmp_path / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(PipelineError, match="cannot read the weights"):
        load_weights(tmp_path / "model.safetensors")
