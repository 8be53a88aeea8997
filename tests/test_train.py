"""Training: EMA, schedules, deterministic data order, resume == uninterrupted, and the stages."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pipeline.config import FusionConfig, TrainConfig, config_from_dict
from pipeline.ema import EMA
from pipeline.graphs.storage import load_knowledge_graphs
from pipeline.model.generators import build_generator, load_generator
from pipeline.model.knowledge import KnowledgeGraphs
from pipeline.model.transformer import MaskGIT
from pipeline.shards import TokenMeta, TokenSplit, write_meta, write_shard
from pipeline.training.batches import SampleOrder, step_batch
from pipeline.training.checkpoints import list_checkpoints
from pipeline.training.loop import TrainRun, evaluate_masked, train_generator
from pipeline.training.optim import learning_rate
from tests.helpers import REPO_ROOT, generator_spec, write_graph_files
from tests.test_knowledge import C, H, V, W, toy_data

L = H * W
META = TokenMeta(H, W, V, C, "toy-tokenizer")


def split(n: int = 96, seed: int = 0) -> TokenSplit:
    tokens, labels = toy_data(n, seed)
    return TokenSplit(np.arange(n), labels.astype(np.int32), tokens.astype(np.int32), META)


def recipe(**overrides) -> TrainConfig:
    base = {"steps": 6, "batch_size": 8, "lr": 3e-3, "warmup_steps": 2, "grad_accum": 2,
            "checkpoint_every": 2, "log_every": 2, "val_images": 16, "ema_decay": 0.9}
    return TrainConfig(**{**base, **overrides})


def run_for(checkpoint_dir: str | Path, fingerprint: dict | None = None, live_dir: str | Path | None = None,
            trainable: list[str] | None = None, **overrides) -> TrainRun:
    return TrainRun(recipe=recipe(**overrides), seed=0, stream="base", checkpoint_dir=Path(checkpoint_dir),
                    fingerprint={"run": 1} if fingerprint is None else fingerprint,
                    live_dir=None if live_dir is None else Path(live_dir),
                    trainable=None if trainable is None else tuple(trainable))


def tiny_model(seed: int = 0) -> MaskGIT:
    torch.manual_seed(seed)
    return MaskGIT(generator_spec(V, C, L, dim=16, depth=2, heads=2, dropout=0.1))


# --------------------------------------------------------------------------------------------
# Pieces
# --------------------------------------------------------------------------------------------


def test_ema_update_follows_the_warmed_up_decay() -> None:
    param = torch.nn.Parameter(torch.tensor([0.0, 10.0]))
    ema = EMA([("w", param)], decay=0.99)
    with torch.no_grad():
        param.copy_(torch.tensor([1.0, 0.0]))
    ema.update([("w", param)])
    d0 = 1 / 10  # min(0.99, (1 + 0) / (10 + 0))
    torch.testing.assert_close(ema.shadow["w"], torch.tensor([d0 * 0 + (1 - d0) * 1, d0 * 10 + 0.0]))
    previous = ema.shadow["w"].clone()
    ema.update([("w", param)])
    d1 = 2 / 11
    torch.testing.assert_close(ema.shadow["w"], d1 * previous + (1 - d1) * param.detach())
    assert ema.decay_at(10_000) == 0.99
    # Round trip through state_dict, and copy_to writes the average into a module.
    restored = EMA([("w", torch.nn.Parameter(torch.zeros(2)))], decay=0.5)
    restored.load_state_dict(ema.state_dict())
    assert restored.updates == 2 and restored.decay == 0.99
    module = torch.nn.Module()
    module.w = torch.nn.Parameter(torch.zeros(2))
    restored.copy_to(module)
    torch.testing.assert_close(module.w.detach(), ema.shadow["w"])


def test_ema_without_warmup_uses_the_decay_from_step_0() -> None:
    """kamig.ema_warmup: constant, the official KA-MIG EMA: after 1500 steps at 0.9999 the average
    still holds 0.9999^1500 = 86% of the initial weights."""
    param = torch.nn.Parameter(torch.zeros(1))
    ema = EMA([("w", param)], decay=0.9999, warmup=False)
    assert ema.decay_at(0) == 0.9999
    with torch.no_grad():
        param.fill_(1.0)
    for _ in range(1500):
        ema.update([("w", param)])
    assert ema.shadow["w"].item() == pytest.approx(1 - 0.9999**1500, rel=1e-4)
    assert pytest.approx(0.861, abs=1e-3) == 0.9999**1500  # 86% of the initial weights


def test_learning_rate_warmup_then_cosine_or_constant() -> None:
    s = recipe(steps=100, warmup_steps=10, lr=1.0)
    assert learning_rate(s, 0) == pytest.approx(0.1) and learning_rate(s, 9) == pytest.approx(1.0)
    assert learning_rate(s, 10) == pytest.approx(1.0)
    assert learning_rate(s, 55) == pytest.approx(0.5)
    assert learning_rate(s, 99) < 0.001
    constant = recipe(steps=100, warmup_steps=10, lr=1.0, lr_schedule="constant")
    assert learning_rate(constant, 99) == 1.0


def test_sample_order_is_a_fresh_permutation_per_epoch_and_deterministic() -> None:
    order = SampleOrder(10, seed=0, stream="base")
    first, second = order.indices(0, 10), order.indices(10, 10)
    assert sorted(first.tolist()) == sorted(second.tolist()) == list(range(10))
    assert not torch.equal(first, second)
    straddling = order.indices(7, 6)  # crosses the epoch boundary
    assert torch.equal(straddling, torch.cat([first[7:], second[:3]]))
    assert torch.equal(SampleOrder(10, 0, "base").indices(0, 10), first)
    assert not torch.equal(SampleOrder(10, 1, "base").indices(0, 10), first)
    assert not torch.equal(SampleOrder(10, 0, "finetune").indices(0, 10), first)


def test_step_batch_is_a_function_of_seed_and_step() -> None:
    data = split()
    tokens, labels = torch.from_numpy(data.tokens), torch.from_numpy(data.labels)
    s = recipe()
    a = step_batch(s, 0, "base", 3, SampleOrder(len(data), 0, "base"), tokens, labels, V, C)
    b = step_batch(s, 0, "base", 3, SampleOrder(len(data), 0, "base"), tokens, labels, V, C)
    c = step_batch(s, 0, "base", 4, SampleOrder(len(data), 0, "base"), tokens, labels, V, C)
    d = step_batch(s, 1, "base", 3, SampleOrder(len(data), 1, "base"), tokens, labels, V, C)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.inputs, c.inputs) and not torch.equal(a.inputs, d.inputs)


# --------------------------------------------------------------------------------------------
# Resume
# --------------------------------------------------------------------------------------------


def _assert_same_state(a: MaskGIT, b: MaskGIT) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


# Run in a child process that SIGKILLs itself inside step `stop + 1`, after `stop` completed
# steps: a real interruption, with nothing in the production code that knows about tests.
_KILLED_RUN = """
import os, signal, sys
from pathlib import Path

import torch

import pipeline.ema
from pipeline.training.loop import train_generator
from tests.test_train import run_for, split, tiny_model

stop, every = int(sys.argv[1]), int(sys.argv[2])
torch.set_num_threads(int(sys.argv[3]))  # the parent's: float reductions must add up alike
update, calls = pipeline.ema.EMA.update, []


def update_then_die(self, named):
    calls.append(1)
    if len(calls) > stop:
        os.kill(os.getpid(), signal.SIGKILL)
    update(self, named)


pipeline.ema.EMA.update = update_then_die
data = split()
train_generator(tiny_model(), run_for("cut", live_dir="live_cut", checkpoint_every=every), data, data)
"""


def _killed_run(directory: Path, stop: int, every: int) -> int:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    args = [str(stop), str(every), str(torch.get_num_threads())]
    return subprocess.run([sys.executable, "-c", _KILLED_RUN, *args], cwd=directory, env=env,
                          capture_output=True, timeout=300).returncode


@pytest.mark.parametrize(("checkpoint_every", "stop_after", "saved"), [(2, 3, 2), (3, 5, 3)])
def test_killed_and_resumed_run_equals_uninterrupted_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, checkpoint_every: int, stop_after: int, saved: int
) -> None:
    monkeypatch.chdir(tmp_path)  # DVCLive inspects the repository around the working directory
    data = split()
    full = train_generator(tiny_model(), run_for(tmp_path / "full", live_dir=tmp_path / "live_full",
                                                 checkpoint_every=checkpoint_every), data, data)
    # Killed in the step after stop_after: the steps since the newest checkpoint are redone on
    # resume (with checkpoint_every 3 the checkpoint also falls between two log steps).
    assert _killed_run(tmp_path, stop_after, checkpoint_every) == -signal.SIGKILL
    assert [step for step, _ in list_checkpoints(tmp_path / "cut")] == [saved]
    # The resumed process starts from a differently initialised model: the checkpoint must win.
    resumed = train_generator(tiny_model(seed=7), run_for(tmp_path / "cut", live_dir=tmp_path / "live_cut",
                                                          checkpoint_every=checkpoint_every), data, data)
    _assert_same_state(full.model, resumed.model)
    for key in ("loss", "val_loss", "val_masked_accuracy"):
        assert full.metrics[key] == resumed.metrics[key]
    # Only the newest checkpoint is kept, and the replayed DVCLive curve has every logged step.
    assert [step for step, _ in list_checkpoints(tmp_path / "cut")] == [6]
    curves = [(tmp_path / live / "plots" / "metrics" / "train" / "loss.tsv").read_text().splitlines()
              for live in ("live_full", "live_cut")]
    assert [line.split("\t")[:2] for line in curves[0]] == [line.split("\t")[:2] for line in curves[1]]
    assert [line.split("\t")[0] for line in curves[1]] == ["step", "2", "4", "6"]


def test_checkpoints_of_another_run_definition_are_discarded(tmp_path: Path) -> None:
    data = split()
    # A longer run leaves its step-4 checkpoint; resuming it would skip the shorter run entirely.
    train_generator(tiny_model(), run_for(tmp_path / "ck", fingerprint={"lr": 1}, steps=4), data, None)
    assert list_checkpoints(tmp_path / "ck")
    shorter = {"fingerprint": {"lr": 2}, "steps": 2}
    fresh = train_generator(tiny_model(), run_for(tmp_path / "ck", **shorter), data, None)
    reference = train_generator(tiny_model(), run_for(tmp_path / "ref", **shorter), data, None)
    _assert_same_state(fresh.model, reference.model)
    assert json.loads((tmp_path / "ck" / "run.json").read_text()) == {"lr": 2}


def test_frozen_backbone_trains_only_the_named_parameters(tmp_path: Path) -> None:
    data = split()
    graph_dir = write_graph_files(tmp_path / "graphs", data.tokens, data.labels, V, (H, W))
    fusion = FusionConfig()
    graphs = load_knowledge_graphs(graph_dir, codebook_size=V, num_classes=C, seq_len=L, graphs=fusion.graphs,
                                   min_count=fusion.min_count)
    start = tiny_model()
    model = build_generator(start.spec, fusion, KnowledgeGraphs.from_data(graphs))
    model.load_state_dict(start.state_dict(), strict=False)
    trainable = [n for n, _ in model.named_parameters() if n.startswith(("adapter.", model.head_prefix))]
    result = train_generator(model, run_for(tmp_path / "ck", trainable=trainable), data, None)
    final = result.model.state_dict()
    for name, value in start.state_dict().items():
        assert torch.equal(final[name], value) == (not name.startswith("head.")), name
    projection = final["adapter.projections.cooccurrence"]
    assert projection.shape[0] == 2 and torch.count_nonzero(projection) > 0
    params = dict(model.named_parameters())
    assert result.metrics["trainable_params"] == sum(params[n].numel() for n in trainable)


# --------------------------------------------------------------------------------------------
# The stages, end to end on a toy token directory
# --------------------------------------------------------------------------------------------


def _write_tokens(root: Path) -> None:
    for name, (n, seed) in {"train": (96, 0), "val": (24, 1)}.items():
        tokens, labels = toy_data(n, seed)
        write_shard(root / "data/tokens" / name / "part-00000.parquet", META, np.arange(n), labels, tokens)
    write_meta(root / "data/tokens", META)
    tokens, labels = toy_data(96, 0)
    write_graph_files(root / "data/graphs", tokens, labels, V, (H, W))


def test_train_base_and_finetune_stages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.stages import finetune, train_base

    monkeypatch.chdir(tmp_path)
    _write_tokens(tmp_path)
    cfg = config_from_dict({
        "model": {"dim": 16, "depth": 2, "heads": 2},
        "train": {"steps": 4, "batch_size": 8, "warmup_steps": 1, "checkpoint_every": 2, "log_every": 2,
                  "val_images": 16},
        "kamig": {"steps": 3, "warmup_steps": 1},
        "fusion": {"weight": 0.5},
    })
    train_base.run(cfg)
    for variant in ("control", "permuted", "kamig"):
        finetune.run(cfg, variant)

    variants = ("base", "control", "permuted", "kamig")
    metrics = {v: json.loads((tmp_path / f"metrics/train_{v}.json").read_text()) for v in variants}
    keys = {"loss", "val_loss", "val_masked_accuracy", "params", "adapter_params", "tokens_per_s"}
    for values in metrics.values():
        assert keys <= set(values)
        assert all(np.isfinite(v) for v in values.values())
    assert metrics["base"]["adapter_params"] == 0 < metrics["kamig"]["adapter_params"]
    head = sum(p.numel() for n, p in load_generator(tmp_path / "models/kamig").named_parameters()
               if n.startswith("head."))
    assert metrics["control"]["trainable_params"] == head == metrics["kamig"]["trainable_params"] - \
        metrics["kamig"]["adapter_params"]
    assert metrics["permuted"]["trainable_params"] == metrics["kamig"]["trainable_params"]
    for variant in variants:
        assert (tmp_path / f"metrics/live/train_{variant}/plots/metrics/train/loss.tsv").is_file()

    base, control, permuted, kamig = (load_generator(tmp_path / "models" / v, expected_meta=META)
                                      for v in variants)
    assert base.adapter is None
    assert control.adapter is None and kamig.adapter.fusion.weight == 0.5
    # Frozen backbone (the default): both fine-tunes keep the base backbone bit for bit.
    base_state = base.state_dict()
    for model in (control, kamig):
        state = model.state_dict()
        for name in ("tok_emb.weight", "blocks.0.attn.qkv.weight", "pos_emb"):
            assert torch.equal(state[name], base_state[name])
    # The head-only control trains the head alone; KA-MIG's projections leave zero.
    assert not torch.equal(control.state_dict()["head.dense.weight"], base_state["head.dense.weight"])
    assert torch.count_nonzero(kamig.adapter.projections["similarity"]) > 0
    # The null control: the same weight and statistics, other token labels on the graph nodes.
    assert permuted.adapter.fusion.weight == 0.5
    weights = [m.adapter.similarity_weight.sort().values for m in (permuted, kamig)]
    assert torch.equal(*weights)
    assert not torch.equal(permuted.adapter.similarity_col, kamig.adapter.similarity_col)
    assert torch.equal(permuted.adapter.compatible_ptr, kamig.adapter.compatible_ptr)

    # A repeated run with the same params finds its final checkpoint: same weights, no retraining.
    before = load_file(str(tmp_path / "models/kamig/model.safetensors"))
    finetune.run(cfg, "kamig")
    after = load_file(str(tmp_path / "models/kamig/model.safetensors"))
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("arch", ["maskgit", "uvit"])
def test_official_adapter_finetunes_through_the_stages(
    arch: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fusion.adapter: official on both backbones: the fine-tunes read data/graphs_official, train the
    adapter and the head only; the control is the head-only fine-tune without an adapter."""
    from pipeline.model.official import OfficialAdapter
    from pipeline.stages import finetune, train_base

    monkeypatch.chdir(tmp_path)
    _write_tokens(tmp_path)
    assert (tmp_path / "data/graphs_official/cooccurrence.parquet").is_file()
    cfg = config_from_dict({
        "model": {"dim": 16, "depth": 2, "heads": 2, "arch": arch},
        "train": {"steps": 4, "batch_size": 8, "warmup_steps": 1, "checkpoint_every": 2, "log_every": 2,
                  "val_images": 16},
        "kamig": {"steps": 3, "warmup_steps": 1, "ema_decay": 0.9999, "ema_warmup": "constant"},
        "fusion": {"adapter": "official", "null_negative": "zero"},
    })
    train_base.run(cfg)
    for variant in ("control", "permuted", "kamig"):
        finetune.run(cfg, variant)
    base, control, permuted, kamig = (load_generator(tmp_path / "models" / v, expected_meta=META)
                                      for v in ("base", "control", "permuted", "kamig"))
    assert all(isinstance(m.adapter, OfficialAdapter) for m in (permuted, kamig))
    assert control.adapter is None and kamig.adapter.fusion.weight == 1.0
    for name, value in base.state_dict().items():  # the frozen backbone, head aside
        if not name.startswith(kamig.head_prefix):
            assert torch.equal(kamig.state_dict()[name], value), name
    assert any(torch.count_nonzero(p) > 0 for p in kamig.adapter.zero_convs.parameters())
    # The null control: the same edge weights on relabelled nodes.
    weights = [m.adapter.cooccurrence_edge_weight.sort().values for m in (permuted, kamig)]
    assert torch.equal(*weights)
    assert not torch.equal(permuted.adapter.cooccurrence_edge_index, kamig.adapter.cooccurrence_edge_index)
    trainable = json.loads((tmp_path / "metrics/train_kamig.json").read_text())["trainable_params"]
    head = sum(p.numel() for n, p in kamig.named_parameters() if n.startswith(kamig.head_prefix))
    assert trainable == head + sum(p.numel() for p in kamig.adapter.parameters())


def test_training_learns_the_toy_distribution(tmp_path: Path) -> None:
    """Class c uses mostly its own third of the codebook: a trained model must find that out."""
    data, val = split(400, seed=0), split(120, seed=1)
    run = run_for(tmp_path / "ck", steps=80, batch_size=32, grad_accum=1, lr=1e-2, warmup_steps=5,
                  checkpoint_every=80, val_images=120, ema_decay=0.9)
    before = evaluate_masked(tiny_model(), val, run.recipe, seed=0)
    assert before["val_loss"] == pytest.approx(np.log(V), rel=0.05)  # untrained: uniform over V
    result = train_generator(tiny_model(), run, data, val)
    # With the class known, about V / C = 8 candidates remain per token: loss well below log(24).
    assert result.metrics["val_loss"] < np.log(V) - 0.4
    assert result.metrics["val_masked_accuracy"] > 2.0 / V


def test_train_base_imports_a_published_backbone_and_finetune_runs_on_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """train.init: checkpoint. A random checkpoint in AutoNAT's layout (reduced width and depth)
    becomes models/base unchanged, and the fine-tunes train the adapter and mlm_layer.* on it."""
    from pipeline.model.uvit import UViT, UViTSpec
    from pipeline.stages import finetune, train_base

    monkeypatch.chdir(tmp_path)
    _write_tokens(tmp_path)
    torch.manual_seed(3)
    published = UViT(UViTSpec(codebook_size=V, num_classes=C, seq_len=L, dim=16, depth=2, heads=2))
    (tmp_path / "pretrained/autonat").mkdir(parents=True)
    torch.save(published.state_dict(), tmp_path / "pretrained/autonat/autonat.pth")
    cfg = config_from_dict({
        "model": {"arch": "uvit", "dim": 16, "depth": 2, "heads": 2},
        "train": {"init": "checkpoint", "checkpoint": "pretrained/autonat/autonat.pth", "batch_size": 8,
                  "checkpoint_every": 2, "log_every": 2, "val_images": 16},
        "kamig": {"steps": 3, "warmup_steps": 1, "batch_size": 8, "grad_clip": None, "betas": [0.99, 0.99]},
    })
    train_base.run(cfg)
    base = load_generator(tmp_path / "models/base", expected_meta=META)
    assert isinstance(base, UViT) and base.adapter is None
    _assert_same_state(base, published.eval())
    assert json.loads((tmp_path / "metrics/train_base.json").read_text())["trainable_params"] == 0

    finetune.run(cfg, "kamig")
    kamig = load_generator(tmp_path / "models/kamig", expected_meta=META)
    assert isinstance(kamig, UViT) and kamig.adapter.depth == kamig.injection_points == 3
    state, before = kamig.state_dict(), published.state_dict()
    for name, value in before.items():  # the frozen backbone is bit for bit the published one
        assert torch.equal(state[name], value) == (not name.startswith("mlm_layer.")), name


@pytest.mark.parametrize(("train", "message"), [
    ({"init": "checkpoint", "checkpoint": "pretrained/autonat/x.pth"}, "set model.arch to 'uvit'"),
    ({"init": "checkpoint"}, "inside pretrained/autonat/"),
])
def test_importing_a_checkpoint_needs_the_uvit_and_a_file_in_pretrained(train: dict, message: str) -> None:
    from pipeline.config import ConfigError

    model = {"arch": "uvit"} if "checkpoint" not in train else {}
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"model": model, "train": train})
    # pretrained/x.pth: inside pretrained/ but not in the folder train_base depends on.
    for outside in ("weights/x.pth", "pretrained/autonat/../x.pth", "pretrained/autonat", "pretrained/x.pth"):
        with pytest.raises(ConfigError, match="inside pretrained/autonat/"):
            config_from_dict({"model": {"arch": "uvit"},
                              "train": {"init": "checkpoint", "checkpoint": outside}})


@pytest.mark.parametrize(("overrides", "message"), [
    ({}, "set model.arch to 'uvit' and fusion.adapter to 'official'"),
    ({"model": {"arch": "uvit"}, "fusion": {"adapter": "official", "null_negative": "zero",
                                            "graphs": ["similarity"]}}, "must list all three"),
    ({"model": {"arch": "uvit"}, "fusion": {"adapter": "official", "null_negative": "zero"},
      "kamig": {"checkpoint": "pretrained/autonat/x.pth"}}, "kamig.checkpoint must name a file inside "
                                                            "pretrained/kamig/"),
])
def test_importing_the_released_kamig_needs_its_setting(overrides: dict, message: str) -> None:
    from pipeline.config import ConfigError, merge_overlay

    raw = merge_overlay({"kamig": {"init": "checkpoint", "checkpoint": "pretrained/kamig/m.pth"}}, overrides)
    with pytest.raises(ConfigError, match=message):
        config_from_dict(raw)
