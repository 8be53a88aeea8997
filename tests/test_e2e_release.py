"""The paper's route through the DAG, on the tiny preset with random reduced checkpoints.

AutoNAT's weights are imported as the base model (``train.init: checkpoint``), the fine-tunes use
the official adapter, and then the authors' released KA-MIG model is imported as ``kamig``
(``kamig.init: checkpoint``): adding its files under ``pretrained/kamig/`` must not re-run the base
model, and ``dvc repro`` must sample and score the imported model.
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import pytest
import torch
import yaml

from pipeline import layout
from pipeline.config import FusionConfig
from pipeline.model.generators import load_generator
from pipeline.model.kamig import ReleasedFiles, import_kamig
from pipeline.model.official import OfficialAdapter, OfficialGraphs, RowConstantMatrix
from pipeline.model.uvit import UViT, UViTSpec
from tests.helpers import copy_repo, run

pytestmark = pytest.mark.e2e

# The tiny preset's tokens: 16 px images, 2 downsamples (4 x 4 grid), 32 codes, 4 classes.
SPEC = UViTSpec(codebook_size=32, num_classes=4, seq_len=16, dim=32, depth=2, heads=2)


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def set_params(repo: Path, changes: dict) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for dotted, value in changes.items():
        *parents, key = dotted.split(".")
        section = params
        for name in parents:
            section = section[name]
        section[key] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def write_release(folder: Path) -> ReleasedFiles:
    """A random KA-MIG release in the published layout, with its three pickled graph files."""
    generator = torch.Generator().manual_seed(5)
    backbone = UViT(SPEC).state_dict()
    edges = {}
    for name in ("cooccurrence", "similarity"):
        index = torch.randint(0, SPEC.codebook_size, (2, 80), generator=generator)
        edges[name] = (index, torch.rand(80, generator=generator))
    shape = (SPEC.num_classes, SPEC.seq_len, SPEC.codebook_size)
    incompatible = (torch.rand(shape, generator=generator) < 0.7).float()
    incompatibility = incompatible / incompatible.sum(-1, keepdim=True).clamp_min(1.0)
    dense = torch.cat([incompatibility, torch.zeros(1, SPEC.seq_len, SPEC.codebook_size)])
    graphs = OfficialGraphs(SPEC.codebook_size, SPEC.num_classes, SPEC.seq_len, edges,
                            RowConstantMatrix.from_dense(dense.reshape(-1, SPEC.codebook_size)))
    adapter = OfficialAdapter(SPEC.dim, SPEC.injection_points, graphs,
                              FusionConfig(adapter="official", null_negative="zero"))
    state = {**backbone, **{f"graph_layer.{k}": 0.02 * torch.randn(v.shape, generator=generator)
                            for k, v in adapter.named_parameters()}}
    folder.mkdir(parents=True, exist_ok=True)
    # The published names, in ReleasedFiles' order (co-occurrence, similarity, incompatibility).
    files = ReleasedFiles(folder / "graph_nnet_ema.pth",
                          *(folder / name for name in layout.KAMIG_RELEASE_GRAPHS.values()))
    torch.save(state, files.checkpoint)
    for path, obj in ((files.cooccurrence, list(edges["cooccurrence"])),
                      (files.similarity, [edges["similarity"][0], edges["similarity"][1].double()]),
                      (files.incompatibility, incompatibility)):
        with open(path, "wb") as handle:
            pickle.dump(obj, handle)
    return files


def test_released_kamig_is_scored_through_the_dag(tmp_path: Path, reproduced_tiny_repo) -> None:
    # From the session's reproduced DAG: data, tokenizer, graphs and the classifier stay cached.
    repo = copy_repo(reproduced_tiny_repo.path, tmp_path / "repo")
    torch.manual_seed(0)
    (repo / "pretrained/autonat").mkdir(parents=True, exist_ok=True)
    torch.save(UViT(SPEC).state_dict(), repo / "pretrained/autonat/nnet_ema.pth")
    set_params(repo, {"model.arch": "uvit", "train.init": "checkpoint",
                      "train.checkpoint": "pretrained/autonat/nnet_ema.pth",
                      "fusion.adapter": "official", "fusion.null_negative": "zero"})
    # Only the stages this route needs: the other variants' sampling and scoring add nothing here.
    targets = ["evaluate@kamig", "finetune@control", "finetune@permuted"]
    first = run(["dvc", "repro", *targets], repo, timeout=1200)
    assert {"train_base", "finetune@permuted", "finetune@kamig", "sample@kamig",
            "evaluate@kamig"} <= stages_run(first.stdout)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", "AutoNAT base, official fine-tunes"], repo)
    control_before = (repo / "models/control/model.safetensors").read_bytes()

    files = write_release(repo / "pretrained/kamig")
    set_params(repo, {"kamig.init": "checkpoint", "kamig.checkpoint": "pretrained/kamig/graph_nnet_ema.pth"})
    second = run(["dvc", "repro", *targets], repo, timeout=1200)
    ran = stages_run(second.stdout)
    assert {"finetune@kamig", "sample@kamig", "evaluate@kamig"} <= ran
    # The base model depends on pretrained/autonat only; the control and the null read the kamig
    # recipe section, so they run again, but resume from their final checkpoints unchanged.
    assert "train_base" not in ran and "finetune@control" in ran, ran
    assert (repo / "models/control/model.safetensors").read_bytes() == control_before

    imported = load_generator(repo / "models/kamig")
    expected = import_kamig(files, heads=SPEC.heads)
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, SPEC.codebook_size + 1, (3, SPEC.seq_len), generator=generator)
    labels = torch.tensor([0, 3, SPEC.num_classes])
    with torch.no_grad():
        assert torch.equal(imported(tokens, labels), expected(tokens, labels))
    assert json.loads((repo / "metrics/train_kamig.json").read_text())["trainable_params"] == 0
    assert json.loads((repo / "metrics/eval_kamig.json").read_text())["fid"] >= 0
