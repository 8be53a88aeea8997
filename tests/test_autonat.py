"""AutoNAT-L (U-ViT) port and importer, checked without the real weights.

* A random checkpoint with the published keys and shapes at full width (768, 8 heads) but reduced
  depth (2 in-blocks, mid, 2 out-blocks) goes through the CLI importer and ``load_generator``; its
  logits must equal :func:`reference_forward`, an independent transcription of the spec's forward
  (``pretrained-generators.md`` §1.4) in plain tensor operations on the state dict.
* Deliberately wrong ports (flags of the reference) must land clearly outside the tolerance.
* The full-size layout (314 keys) is compared with ``tests/fixtures/autonat_l_keys.json`` (taken
  from the spec's parameter manifest) on the meta device.
* KA-MIG on the imported backbone: a zero adapter changes nothing; a live one enters before the
  blocks in the order of spec §2.3.
* The AutoNAT-L-T8 sampling preset (spec §1.8) validates and gives the published masked counts.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.config import FusionConfig, config_from_dict, merge_overlay
from pipeline.errors import PipelineError
from pipeline.model.autonat import autonat_spec, check_state, import_autonat, load_autonat_state
from pipeline.model.convert import main
from pipeline.model.generators import build_generator, load_generator
from pipeline.model.io import save_generator, spec_from_architecture
from pipeline.model.knowledge import KnowledgeGraphs, csr_from_coo
from pipeline.model.transformer import MaskGIT, count_parameters
from pipeline.model.uvit import UViT, UViTSpec
from pipeline.sampling import decode_plan
from pipeline.shards import TokenMeta, write_meta
from tests.helpers import generator_spec

REPO = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).parent / "fixtures" / "autonat_l_keys.json"
TOL = 1e-5
# A wrong port must miss the reference by at least this much (10x the tolerance).
CLEARLY = 10 * TOL

# Published shapes (spec §1.2, §1.5) except the depth: 2 in-blocks + mid + 2 out-blocks.
V, C, L, D, HEADS, HIDDEN, HALF = 1024, 1000, 256, 768, 8, 3072, 2


# --------------------------------------------------------------------------------------------
# A random checkpoint in the published layout
# --------------------------------------------------------------------------------------------


def published_layout(half: int = HALF) -> list[tuple[str, tuple[int, ...]]]:
    """The keys and shapes of spec §1.5 with ``half`` in-blocks and ``half`` out-blocks, in order."""
    keys: list[tuple[str, tuple[int, ...]]] = []
    for name, rows, positions in (("token_emb", V + 1, L), ("context_embed", C + 1, 1)):
        keys += [(f"{name}.word_embeddings.weight", (rows, D)),
                 (f"{name}.position_embeddings.weight", (positions, D)),
                 (f"{name}.LayerNorm.weight", (D,)), (f"{name}.LayerNorm.bias", (D,))]
    blocks = [f"in_blocks.{j}" for j in range(half)] + ["mid_block"]
    blocks += [f"out_blocks.{j}" for j in range(half)]
    for block in blocks:
        keys += [(f"{block}.norm1.weight", (D,)), (f"{block}.norm1.bias", (D,)),
                 (f"{block}.attn.qkv.weight", (3 * D, D)),
                 (f"{block}.attn.proj.weight", (D, D)), (f"{block}.attn.proj.bias", (D,)),
                 (f"{block}.norm2.weight", (D,)), (f"{block}.norm2.bias", (D,)),
                 (f"{block}.mlp.fc1.weight", (HIDDEN, D)), (f"{block}.mlp.fc1.bias", (HIDDEN,)),
                 (f"{block}.mlp.fc2.weight", (D, HIDDEN)), (f"{block}.mlp.fc2.bias", (D,))]
        if block.startswith("out_blocks"):
            keys += [(f"{block}.skip_linear.weight", (D, 2 * D)), (f"{block}.skip_linear.bias", (D,))]
    keys += [("norm.weight", (D,)), ("norm.bias", (D,)), ("mlm_layer.bias", (1, 1, V + 1)),
             ("mlm_layer.fc.weight", (D, D)), ("mlm_layer.fc.bias", (D,)),
             ("mlm_layer.ln.weight", (D,)), ("mlm_layer.ln.bias", (D,))]
    return keys


def random_state(layout: list[tuple[str, tuple[int, ...]]], seed: int = 0) -> dict[str, torch.Tensor]:
    """std-0.02 tensors (the models' init scale, spec §5.1); LayerNorm weights 1 + noise, biases noise."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in layout:
        value = 0.02 * torch.randn(shape, generator=generator)
        if ("LayerNorm" in key or ".norm" in key or key.startswith("norm.") or ".ln." in key) and \
                key.endswith(".weight"):
            value = 1.0 + 5 * value  # 1 +- 0.1
        state[key] = value
    return state


# --------------------------------------------------------------------------------------------
# The reference forward: spec §1.4 (and §2.3 for the adapter) in plain tensor operations
# --------------------------------------------------------------------------------------------


def reference_forward(
    sd: dict[str, torch.Tensor],
    tokens: torch.Tensor,
    labels: torch.Tensor,
    heads: int = HEADS,
    *,
    inject: Callable[[int], torch.Tensor] | None = None,
    skip_order: str = "x_skip",  # wrong: "skip_x"
    pairing: str = "lifo",  # wrong: "fifo"
    gelu: str = "erf",  # wrong: "tanh"
    embedding_eps: float = 1e-6,  # wrong: 1e-5
    eps: float = 1e-5,  # every other LayerNorm (blocks, final norm, MLM head)
    qkv_layout: str = "3hd",  # wrong: "h3d"
    injection: str = "spec",  # wrong: "forward" (i = block number), "after_skip"
) -> torch.Tensor:
    def layer_norm(x: torch.Tensor, prefix: str, ln_eps: float = eps) -> torch.Tensor:
        mean = x.mean(-1, keepdim=True)
        var = ((x - mean) ** 2).mean(-1, keepdim=True)  # biased, as torch
        return (x - mean) / torch.sqrt(var + ln_eps) * sd[f"{prefix}.weight"] + sd[f"{prefix}.bias"]

    def linear(x: torch.Tensor, prefix: str, bias: bool = True) -> torch.Tensor:
        y = x @ sd[f"{prefix}.weight"].T
        return y + sd[f"{prefix}.bias"] if bias else y

    def act(x: torch.Tensor) -> torch.Tensor:
        if gelu == "tanh":
            return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
        return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))

    def attention(h: torch.Tensor, prefix: str) -> torch.Tensor:
        batch, length, dim = h.shape
        head_dim = dim // heads
        qkv = linear(h, f"{prefix}.qkv", bias=False)  # no qkv bias
        if qkv_layout == "3hd":  # channel = which * dim + head * head_dim + d
            qkv = qkv.reshape(batch, length, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
        else:  # channel = head * 3 * head_dim + which * head_dim + d
            qkv = qkv.reshape(batch, length, heads, 3, head_dim).permute(3, 0, 2, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, H, N, hd)
        weights = torch.softmax((q @ k.transpose(-1, -2)) * head_dim**-0.5, dim=-1)
        out = (weights @ v).transpose(1, 2).reshape(batch, length, dim)  # heads concatenated
        return linear(out, f"{prefix}.proj")

    def block(x: torch.Tensor, prefix: str, skip: torch.Tensor | None = None,
              signal: torch.Tensor | None = None) -> torch.Tensor:
        if skip is not None:
            if signal is not None and injection != "after_skip":
                x = x + signal
            pair = [x, skip] if skip_order == "x_skip" else [skip, x]
            x = linear(torch.cat(pair, dim=-1), f"{prefix}.skip_linear")
            if signal is not None and injection == "after_skip":
                x = x + signal
        elif signal is not None:
            x = x + signal
        x = x + attention(layer_norm(x, f"{prefix}.norm1"), f"{prefix}.attn")
        hidden = act(linear(layer_norm(x, f"{prefix}.norm2"), f"{prefix}.mlp.fc1"))
        return x + linear(hidden, f"{prefix}.mlp.fc2")

    half = len({k.split(".")[1] for k in sd if k.startswith("in_blocks.")})
    points = 2 * half + 1

    def signal(kind: str, j: int = 0) -> torch.Tensor | None:
        if inject is None:
            return None
        order = {"in": j, "mid": half, "out": half + 1 + j}[kind]  # the block's execution number
        if injection == "forward":
            return inject(order)
        return inject(points - 1 - order)  # spec §2.3: lists consumed from the end

    image = sd["token_emb.word_embeddings.weight"][tokens]
    image = image + sd["token_emb.position_embeddings.weight"][: tokens.shape[1]]
    image = layer_norm(image, "token_emb.LayerNorm", embedding_eps)
    cls = sd["context_embed.word_embeddings.weight"][labels[:, None]]
    cls = cls + sd["context_embed.position_embeddings.weight"][0]
    cls = layer_norm(cls, "context_embed.LayerNorm", embedding_eps)
    x = torch.cat([cls, image], dim=1)  # class token first

    skips = []
    for j in range(half):
        x = block(x, f"in_blocks.{j}", signal=signal("in", j))
        skips.append(x)
    x = block(x, "mid_block", signal=signal("mid"))
    for j in range(half):
        skip = skips.pop() if pairing == "lifo" else skips[j]
        x = block(x, f"out_blocks.{j}", skip=skip, signal=signal("out", j))

    x = layer_norm(x, "norm")
    h = layer_norm(act(linear(x, "mlm_layer.fc")), "mlm_layer.ln")
    logits = h @ sd["token_emb.word_embeddings.weight"].T + sd["mlm_layer.bias"]  # all V + 1 rows
    return logits[:, 1:, : sd["token_emb.word_embeddings.weight"].shape[0] - 1]


WRONG_PORTS = {
    "skip concat [skip, x]": {"skip_order": "skip_x"},
    "skip pairing FIFO": {"pairing": "fifo"},
    "tanh GELU": {"gelu": "tanh"},
    "embedding LayerNorm eps 1e-5": {"embedding_eps": 1e-5},
    "qkv layout [H][3][D]": {"qkv_layout": "h3d"},
}


# --------------------------------------------------------------------------------------------
# Fixtures: the checkpoint, its import through the CLI, and the reference logits
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    return random_state(published_layout())


@pytest.fixture(scope="module")
def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, V, (2, L), generator=generator)
    tokens[torch.rand(2, L, generator=generator) < 0.5] = V  # mask id 1024
    return tokens, torch.tensor([7, C])  # a class, and the null class 1000


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory, state: dict[str, torch.Tensor]) -> Path:
    root = tmp_path_factory.mktemp("autonat")
    torch.save(state, root / "nnet_ema.pth")
    assert main(["--from", "autonat", str(root / "nnet_ema.pth"), str(root / "base")]) == 0
    return root / "base"


@pytest.fixture(scope="module")
def backbone(converted: Path) -> UViT:
    return load_generator(converted, "cpu")


@pytest.fixture(scope="module")
def logits(backbone: UViT, inputs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return backbone(*inputs)


@pytest.fixture(scope="module")
def reference(state: dict[str, torch.Tensor], inputs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return reference_forward(state, *inputs)


# --------------------------------------------------------------------------------------------
# Numerical equivalence
# --------------------------------------------------------------------------------------------


def test_converted_model_matches_reference(backbone: UViT, logits: torch.Tensor,
                                           reference: torch.Tensor) -> None:
    assert isinstance(backbone, UViT) and not backbone.training
    assert backbone.spec == UViTSpec(codebook_size=V, num_classes=C, seq_len=L, dim=D, depth=2 * HALF,
                                     heads=8)
    assert (backbone.mask_id, backbone.null_class, backbone.injection_points) == (V, C, 2 * HALF + 1)
    assert backbone.token_meta == TokenMeta(16, 16, V, C, "imported:autonat")
    assert logits.shape == (2, L, V) and logits.dtype == torch.float32
    assert logits.std() > 0.1  # the check is not vacuous
    assert (logits - reference).abs().max().item() < TOL


@pytest.mark.parametrize("name", list(WRONG_PORTS))
def test_wrong_ports_miss_the_reference(name: str, state: dict[str, torch.Tensor],
                                        inputs: tuple[torch.Tensor, torch.Tensor],
                                        logits: torch.Tensor) -> None:
    wrong = reference_forward(state, *inputs, **WRONG_PORTS[name])
    assert (wrong - logits).abs().max().item() > CLEARLY, name


def test_layer_norm_eps_as_published(backbone: UViT) -> None:
    """1e-6 in the two embedding LayerNorms, 1e-5 everywhere else (spec §1.7 item 3). Checked on the
    modules as well: a 1e-6 in the block/head norms moves the logits by only ~1e-4 (13x the tolerance)."""
    eps = {name: m.eps for name, m in backbone.named_modules() if isinstance(m, torch.nn.LayerNorm)}
    assert len(eps) == 2 + 2 * (2 * HALF + 1) + 2
    assert all(value == (1e-6 if name.endswith(".LayerNorm") else 1e-5) for name, value in eps.items()), eps


def test_reference_is_the_stored_tensors(backbone: UViT, state: dict[str, torch.Tensor]) -> None:
    loaded = backbone.state_dict()
    assert list(loaded) == [k for k, _ in published_layout()]
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


# --------------------------------------------------------------------------------------------
# The full-size layout
# --------------------------------------------------------------------------------------------


def test_full_size_layout_matches_fixture() -> None:
    expected = json.loads(FIXTURE.read_text())
    assert len(expected) == 314
    with torch.device("meta"):
        model = UViT(UViTSpec())
    assert [(k, list(v.shape)) for k, v in model.state_dict().items()] == list(expected.items())
    assert count_parameters(model) == 193_655_297  # spec §1.6
    assert model.injection_points == 25
    # The importer reads the same architecture off the shapes alone (meta tensors: no memory).
    meta_state = {k: torch.empty(shape, device="meta") for k, shape in expected.items()}
    assert autonat_spec(meta_state) == UViTSpec()
    imported = load_autonat_state(meta_state)
    assert imported.spec == UViTSpec() and len(imported.state_dict()) == 314


def test_reduced_layout_is_the_fixture_pattern() -> None:
    """The test checkpoint's layout is the fixture's, minus the blocks it leaves out."""
    expected = json.loads(FIXTURE.read_text())
    kept = {f"in_blocks.{j}." for j in range(HALF)} | {f"out_blocks.{j}." for j in range(HALF)}
    reduced = [(k, tuple(s)) for k, s in expected.items()
               if not k.startswith(("in_blocks.", "out_blocks.")) or any(k.startswith(p) for p in kept)]
    assert reduced == published_layout()


# --------------------------------------------------------------------------------------------
# Strict import: errors, tolerated extras, CLI
# --------------------------------------------------------------------------------------------

TINY = UViTSpec(codebook_size=12, num_classes=3, seq_len=4, dim=16, depth=4, heads=2)


@pytest.fixture
def tiny_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return UViT(TINY).state_dict()


def import_error(state: dict, tmp_path: Path, heads: int = 2) -> str:
    torch.save(state, tmp_path / "ckpt.pth")
    with pytest.raises(PipelineError) as info:
        import_autonat(tmp_path / "ckpt.pth", heads=heads)
    return str(info.value)


def test_tiny_round_trip_and_position_ids_tolerated(tiny_state: dict, tmp_path: Path) -> None:
    state = {**tiny_state, "token_emb.position_ids": torch.arange(4)[None]}
    torch.save(state, tmp_path / "ckpt.pth")
    model = import_autonat(tmp_path / "ckpt.pth", heads=2)
    assert model.spec == TINY
    assert all(torch.equal(model.state_dict()[k], v) for k, v in tiny_state.items())
    assert all(p.requires_grad for p in model.parameters())
    # An AutoNAT training-checkpoint directory: its EMA weights are nnet_ema.pth.
    (tmp_path / "1000.ckpt").mkdir()
    torch.save(tiny_state, tmp_path / "1000.ckpt" / "nnet_ema.pth")
    assert import_autonat(tmp_path / "1000.ckpt", heads=2).spec == TINY


def test_missing_key_is_named(tiny_state: dict, tmp_path: Path) -> None:
    del tiny_state["out_blocks.1.skip_linear.bias"]
    del tiny_state["mlm_layer.bias"]
    message = import_error(tiny_state, tmp_path)
    assert "2 missing: out_blocks.1.skip_linear.bias, mlm_layer.bias" in message


def test_unexpected_key_is_named(tiny_state: dict, tmp_path: Path) -> None:
    tiny_state["in_blocks.0.attn.qkv.bias"] = torch.zeros(48)  # a qkv_bias=True port
    message = import_error(tiny_state, tmp_path)
    assert "1 unexpected: in_blocks.0.attn.qkv.bias" in message and "missing" not in message


def test_wrong_shape_is_named(tiny_state: dict, tmp_path: Path) -> None:
    tiny_state["mlm_layer.bias"] = torch.zeros(13)
    message = import_error(tiny_state, tmp_path)
    assert "1 wrong shape: mlm_layer.bias (13,) (expected (1, 1, 13))" in message


def test_other_layout_errors(tiny_state: dict, tmp_path: Path) -> None:
    assert "a 'module.' prefix" in import_error({f"module.{k}": v for k, v in tiny_state.items()}, tmp_path)
    assert "not a flat state dict" in import_error({"state_dict": tiny_state}, tmp_path)
    uneven = {k: v for k, v in tiny_state.items() if not k.startswith("out_blocks.1.")}
    assert "2 in_blocks but 1 out_blocks" in import_error(uneven, tmp_path)
    assert "must be divisible by heads" in import_error(tiny_state, tmp_path, heads=3)
    message = import_error({"x": torch.zeros(1)}, tmp_path)
    assert "key 'token_emb.word_embeddings.weight' is missing" in message


def test_cli_errors_are_one_line_exit_2(tiny_state: dict, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    del tiny_state["norm.bias"]
    torch.save(tiny_state, tmp_path / "ckpt.pth")
    assert main(["--from", "autonat", str(tmp_path / "ckpt.pth"), str(tmp_path / "out"), "--heads", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "norm.bias" in err
    assert not (tmp_path / "out").exists()
    assert main(["--from", "autonat", str(tmp_path / "absent.pth"), str(tmp_path / "out")]) == 2


def test_cli_as_module(tiny_state: dict, tmp_path: Path) -> None:
    """``python -m pipeline.model.convert``: a bad checkpoint gives one ``error:`` line and exit code 2."""
    tiny_state["in_blocks.1.attn.qkv.weight"] = torch.zeros(48, 8)
    torch.save(tiny_state, tmp_path / "ckpt.pth")
    command = [sys.executable, "-m", "pipeline.model.convert", "--from", "autonat",
               str(tmp_path / "ckpt.pth"), str(tmp_path / "out"), "--heads", "2"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert result.stderr == ("error: checkpoint does not match the AutoNAT U-ViT layout: 1 wrong shape: "
                             "in_blocks.1.attn.qkv.weight (48, 8) (expected (48, 16))\n")


def test_cli_tokens_meta(tiny_state: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.save(tiny_state, tmp_path / "ckpt.pth")
    real = TokenMeta(2, 2, 12, 3, "vqgan:abc")
    write_meta(tmp_path / "tokens", real)
    args = ["--from", "autonat", str(tmp_path / "ckpt.pth"), "--heads", "2", "--tokens-meta"]
    assert main([*args, str(tmp_path / "tokens" / "meta.json"), str(tmp_path / "out")]) == 0
    model = load_generator(tmp_path / "out", expected_meta=real)
    assert model.token_meta == real and model.variant == "base"
    write_meta(tmp_path / "other", TokenMeta(2, 2, 16, 3, "vqgan:abc"))
    assert main([*args, str(tmp_path / "other"), str(tmp_path / "out2")]) == 2
    assert "codebook_size: weights 12 vs tokens 16" in capsys.readouterr().err


def test_check_state_lists_every_difference() -> None:
    expected = {"a": (2,), "b": (3,), "c": (4,)}
    with pytest.raises(PipelineError, match=r"1 missing: b; 1 unexpected: z; 1 wrong shape: c \(5,\)"):
        check_state({"a": torch.zeros(2), "c": torch.zeros(5), "z": torch.zeros(1)}, expected)


def test_io_dispatch(tmp_path: Path) -> None:
    old = MaskGIT(generator_spec(8, 2, 4, dim=8, depth=2, heads=2))
    save_generator(old, tmp_path / "old", variant="base", token_meta=TokenMeta(2, 2, 8, 2, "t"))
    config = json.loads((tmp_path / "old" / "config.json").read_text())
    assert "arch" not in config["architecture"]  # directories written before AutoNAT support
    assert isinstance(load_generator(tmp_path / "old"), MaskGIT)
    assert spec_from_architecture(TINY.to_dict()) == TINY and TINY.to_dict()["arch"] == "uvit"
    with pytest.raises(PipelineError, match="unknown generator architecture 'dit'"):
        spec_from_architecture({**TINY.to_dict(), "arch": "dit"})


# --------------------------------------------------------------------------------------------
# KA-MIG on the imported backbone
# --------------------------------------------------------------------------------------------


def random_graphs(codebook_size: int, num_classes: int, seq_len: int, seed: int = 0) -> KnowledgeGraphs:
    """Small random co-occurrence / similarity graphs and a random compatible set."""
    generator = torch.Generator().manual_seed(seed)
    graphs = KnowledgeGraphs(codebook_size, num_classes, seq_len)
    for name in ("cooccurrence", "similarity"):
        edges = 4 * codebook_size
        index = torch.randint(0, codebook_size, (2, edges), generator=generator)
        graphs.edges[name] = csr_from_coo(index, torch.rand(edges, generator=generator) / 4, codebook_size)
    rows = (num_classes + 1) * seq_len
    per_row = torch.randint(0, 3, (rows,), generator=generator)
    graphs.compatible_ptr = torch.cat([torch.zeros(1, dtype=torch.int64), per_row.cumsum(0)])
    graphs.compatible_tokens = torch.randint(0, codebook_size, (int(per_row.sum()),),
                                             generator=generator).to(torch.int16)
    return graphs


def kamig_on(backbone: UViT, seed: int = 0) -> UViT:
    spec = backbone.spec
    model = build_generator(spec, FusionConfig(), random_graphs(spec.codebook_size, spec.num_classes,
                                                                   spec.seq_len, seed))
    missing, unexpected = model.load_state_dict(backbone.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("adapter.") for k in missing)
    return model.eval()


def test_zero_adapter_on_converted_backbone_is_exact(backbone: UViT, logits: torch.Tensor,
                                                     inputs: tuple[torch.Tensor, torch.Tensor]) -> None:
    model = kamig_on(backbone)
    assert isinstance(model, UViT) and model.adapter.depth == backbone.injection_points == 5
    with torch.no_grad():
        assert torch.equal(model(*inputs), logits)


def test_live_adapter_matches_reference_injection(backbone: UViT, state: dict[str, torch.Tensor],
                                                  inputs: tuple[torch.Tensor, torch.Tensor]) -> None:
    """The adapter's signals enter where spec §2.3 says: checked against the reference forward."""
    model = kamig_on(backbone)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for param in model.adapter.projections.values():
            param.copy_(0.05 * torch.randn(param.shape, generator=generator))
        produced = model(*inputs)
        inject = model.adapter(*inputs, model.token_embeddings)
        expected = reference_forward(state, *inputs, inject=inject)
        assert (produced - expected).abs().max().item() < TOL
        for wrong in ("forward", "after_skip"):
            miss = (reference_forward(state, *inputs, inject=inject, injection=wrong) - produced).abs().max()
            assert miss.item() > CLEARLY, wrong


def test_kamig_uvit_saves_and_loads(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = kamig_on(UViT(TINY).eval())
    with torch.no_grad():
        for param in model.adapter.projections.values():
            param.normal_(0, 0.1)
    save_generator(model, tmp_path / "kamig", variant="kamig", token_meta=TokenMeta(2, 2, 12, 3, "t"))
    loaded = load_generator(tmp_path / "kamig")
    assert isinstance(loaded, UViT) and loaded.adapter.depth == TINY.injection_points == 5
    tokens, labels = torch.tensor([[1, 12, 5, 7], [12, 12, 3, 0]]), torch.tensor([2, 3])
    with torch.no_grad():
        assert torch.equal(loaded(tokens, labels), model(tokens, labels))


def block_order(model: UViT) -> list[torch.nn.Module]:
    return [*model.in_blocks, model.mid_block, *model.out_blocks]


@pytest.mark.parametrize("slot", range(5))
def test_each_slot_enters_before_its_block(slot: int) -> None:
    """Only projection ``slot`` non-zero: the first block whose input changes is the spec's one,
    by exactly ``inject(slot)``, and out-blocks see it before the skip fusion (in their x argument)."""
    torch.manual_seed(0)
    model = kamig_on(UViT(TINY).eval())
    tokens, labels = torch.tensor([[1, 12, 5, 7], [12, 12, 3, 0]]), torch.tensor([2, 3])
    # spec §2.3 with 2 in-blocks: in[j] <- 4 - j, mid <- 2, out[j] <- 1 - j; in execution order:
    target = {4: 0, 3: 1, 2: 2, 1: 3, 0: 4}[slot]

    def block_inputs() -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        seen: list[tuple[torch.Tensor, torch.Tensor | None]] = []
        hooks = [b.register_forward_pre_hook(lambda _m, args: seen.append((args[0], (args[1:] or [None])[0])))
                 for b in block_order(model)]
        with torch.no_grad():
            model(tokens, labels)
        for hook in hooks:
            hook.remove()
        return seen

    baseline = block_inputs()
    with torch.no_grad():
        model.adapter.projections["cooccurrence"][slot].normal_(0, 0.5)
        signal = model.adapter(tokens, labels, model.token_embeddings)(slot)
    assert signal.abs().max() > 0
    changed = block_inputs()
    for i in range(target):
        assert torch.equal(changed[i][0], baseline[i][0])
    assert torch.allclose(changed[target][0] - baseline[target][0], signal, atol=1e-6)
    if changed[target][1] is not None:  # an out-block: its skip is the plain in-block output
        assert torch.equal(changed[target][1], baseline[target][1])


# --------------------------------------------------------------------------------------------
# The AutoNAT-L-T8 sampling preset
# --------------------------------------------------------------------------------------------


def test_autonat_t8_preset() -> None:
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    preset = yaml.safe_load((REPO / "configs" / "autonat_l_t8.yaml").read_text())
    cfg = config_from_dict(merge_overlay(base, preset), source="params.yaml + autonat_l_t8.yaml")
    plan = decode_plan(cfg.sample, 256)
    # spec §1.8: still masked after each step (the last step fills everything).
    assert plan.masked_after == (244, 225, 203, 190, 159, 104, 66, 0)
    assert plan.choice_temperature[-1] == 0.0  # no Gumbel noise at the last step
    assert plan.cfg[:3] == (0.0001,) * 3 and plan.temperature[-1] == pytest.approx(0.7133060703601533)
