"""The official KA-MIG adapter and the importer of the released model, checked without the real weights.

* A random checkpoint in the released layout (AutoNAT-L keys plus the ``graph_layer.*`` keys of
  spec Appendix A.2) at full width (768, 8 heads) and reduced depth (2 + 1 + 2 blocks, so 5
  injection points), with every tensor drawn from N(0, 0.02^2) (the zero-initialised projections
  too, as after fine-tuning; LayerNorm weights near 1), and random asymmetric graph pickles in which
  some nodes have self-loops and others not, goes through ``python -m pipeline.model.convert --from
  kamig`` and ``load_generator``.
* Its logits must equal :func:`reference_signals` fed into ``test_autonat.reference_forward``: the
  spec's adapter (§2.3) written here as plain tensor operations on the state dict and the raw
  graph tensors, with GCNConv's arithmetic spelled out per edge.
* Deliberately wrong ports (flags of the reference) must miss it clearly.
"""

from __future__ import annotations

import json
import pickle
import warnings
from pathlib import Path

import pytest
import torch

from pipeline.config import ConfigError, FusionConfig, config_from_dict
from pipeline.errors import PipelineError
from pipeline.model.convert import main
from pipeline.model.generators import build_generator, load_generator
from pipeline.model.official import OfficialAdapter, OfficialGraphs, RowConstantMatrix
from pipeline.model.uvit import UViT
from tests.test_autonat import D, L, V, published_layout, reference_forward

C = 10  # classes: read from the shapes, so a reduced count imports like ImageNet's 1000
HALF = 2
POINTS = 2 * HALF + 1
TOL = 1e-4
GRAPHS = ("co", "re")


def kamig_layout() -> list[tuple[str, tuple[int, ...]]]:
    """Spec §1.5 (with C classes) followed by spec Appendix A.2 for POINTS injection points."""
    layout = [(k, (C + 1, D) if k == "context_embed.word_embeddings.weight" else s)
              for k, s in published_layout(HALF)]
    for graph in GRAPHS:
        for k in (1, 2, 3):
            layout += [(f"graph_layer.{graph}_graph_layer.conv{k}.bias", (D,)),
                       (f"graph_layer.{graph}_graph_layer.conv{k}.lin.weight", (D, D))]
    layout += [("graph_layer.pos_neg_codebook_graph_layer.conv1.weight", (D, D, 1)),
               ("graph_layer.pos_neg_codebook_graph_layer.conv1.bias", (D,))]
    for name in ("zero_convs", "zero_convs_pos"):
        for i in range(POINTS):
            layout += [(f"graph_layer.{name}.{i}.weight", (D, D, 1)), (f"graph_layer.{name}.{i}.bias", (D,))]
    return layout


def random_checkpoint(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in kamig_layout():
        value = 0.02 * torch.randn(shape, generator=generator)
        is_norm = "LayerNorm" in key or ".norm" in key or key.startswith("norm.") or ".ln." in key
        state[key] = 1.0 + 5 * value if is_norm and key.endswith(".weight") else value
    return state


def random_graph(seed: int, edges: int = 6000, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    """An asymmetric graph; every third node has a self-loop (weights kept), the others none."""
    generator = torch.Generator().manual_seed(seed)
    src, dst = torch.randint(0, V, (2, edges), generator=generator)
    keep = src != dst
    loops = torch.arange(0, V, 3)
    src, dst = torch.cat([src[keep], loops]), torch.cat([dst[keep], loops])
    weight = (0.05 + torch.rand(len(src), generator=generator)).to(dtype)
    return [torch.stack([src, dst]), weight]


def random_incompatibility(seed: int) -> torch.Tensor:
    """(C, L, V), row-normalised over the incompatible codes (1 where a code was never seen)."""
    generator = torch.Generator().manual_seed(seed)
    incompatible = (torch.rand(C, L, V, generator=generator) < 0.8).float()
    incompatible[0, 0] = 0.0  # a row with no incompatible code at all
    return incompatible / incompatible.sum(-1, keepdim=True).clamp_min(1.0)


# --------------------------------------------------------------------------------------------
# The reference: spec §2.3 in plain tensor operations
# --------------------------------------------------------------------------------------------


def reference_gcn(x: torch.Tensor, graph: list[torch.Tensor], weight: torch.Tensor, bias: torch.Tensor,
                  *, reversed_edges: bool = False, loops_again: bool = False) -> torch.Tensor:
    (src, dst), w = graph[0], graph[1].to(torch.float32)  # the similarity file's float64: type_as
    if reversed_edges:
        src, dst = dst, src
    nodes = torch.arange(x.shape[0])
    has_loop = torch.zeros(x.shape[0], dtype=torch.bool)
    has_loop[src[src == dst]] = True
    add = nodes if loops_again else nodes[~has_loop]  # right: only where no self-loop exists
    src, dst, w = torch.cat([src, add]), torch.cat([dst, add]), torch.cat([w, torch.ones(len(add))])
    degree = torch.zeros(x.shape[0]).index_add(0, dst, w)  # weighted in-degree
    inv = torch.where(degree > 0, degree**-0.5, torch.zeros_like(degree))
    norm = inv[src] * w * inv[dst]
    messages = norm[:, None] * (x @ weight.T)[src]  # source -> target
    return torch.zeros_like(x).index_add(0, dst, messages) + bias


def reference_signals(sd: dict[str, torch.Tensor], graphs: dict[str, list[torch.Tensor]],
                      incompatibility: torch.Tensor, tokens: torch.Tensor, labels: torch.Tensor, *,
                      last_relu: bool = True,
                      reversed_edges: bool = False, loops_again: bool = False, masked_terms: bool = False,
                      projection_after_matrix: bool = False):
    E = sd["token_emb.word_embeddings.weight"][:V]
    visible = (tokens != V).float()[..., None]
    gathered = {}
    for graph in GRAPHS:
        h, outputs = E, []
        for k in (1, 2, 3):
            prefix = f"graph_layer.{graph}_graph_layer.conv{k}"
            h = reference_gcn(h, graphs[graph], sd[f"{prefix}.lin.weight"], sd[f"{prefix}.bias"],
                              reversed_edges=reversed_edges, loops_again=loops_again)
            h = h if (k == 3 and not last_relu) else torch.relu(h)
            outputs.append(h)
        mean = torch.stack(outputs).mean(0)
        gathered[graph] = torch.cat([mean, torch.zeros(1, D)])[tokens]  # the mask id gathers zeros
    matrices = torch.cat([incompatibility, torch.zeros(1, L, V)])[labels]  # null class: zero matrix
    w_p, b_p = sd["graph_layer.pos_neg_codebook_graph_layer.conv1.weight"][..., 0], \
        sd["graph_layer.pos_neg_codebook_graph_layer.conv1.bias"]
    # Right: project the table (bias included), then the class matrix; wrong: the other way round.
    after = (matrices @ E) @ w_p.T + b_p
    negative = after if projection_after_matrix else matrices @ (E @ w_p.T + b_p)

    def conv(name: str, i: int, x: torch.Tensor) -> torch.Tensor:
        return x @ sd[f"graph_layer.{name}.{i}.weight"][..., 0].T + sd[f"graph_layer.{name}.{i}.bias"]

    def inject(i: int) -> torch.Tensor:
        keep = torch.ones_like(visible) if masked_terms else visible
        co, re = conv("zero_convs", i, gathered["co"]) * keep, conv("zero_convs", i, gathered["re"]) * keep
        pos = conv("zero_convs_pos", i, negative)
        return torch.nn.functional.pad(re + co - pos, (0, 0, 1, 0))  # zero at the class slot

    return inject


WRONG_PORTS = {
    "no ReLU on the last GCN layer": ({"last_relu": False}, {}),
    "reversed edge direction": ({"reversed_edges": True}, {}),
    "self-loops added again": ({"loops_again": True}, {}),
    "co/s terms at masked positions": ({"masked_terms": True}, {}),
    "incompatibility projection after the matrix": ({"projection_after_matrix": True}, {}),
    "projections consumed in forward order": ({}, {"injection": "forward"}),
}


# --------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("kamig")
    state = random_checkpoint()
    graphs = {"co": random_graph(1), "re": random_graph(2, edges=3000, dtype=torch.float64)}
    incompatibility = random_incompatibility(3)
    torch.save(state, root / "graph_nnet_ema.pth")
    for name, obj in (("co.pkl", graphs["co"]), ("re.pkl", graphs["re"]), ("pos.pkl", incompatibility)):
        with open(root / name, "wb") as handle:
            pickle.dump(obj, handle)
    backbone_state = {k: v for k, v in state.items() if not k.startswith("graph_layer.")}
    torch.save(backbone_state, root / "nnet_ema.pth")
    return {"root": root, "state": state, "graphs": graphs, "incompatibility": incompatibility}


def convert_args(root: Path, out: str = "kamig", **overrides: str) -> list[str]:
    files = {"cooccurrence": "co.pkl", "similarity": "re.pkl", "incompatibility": "pos.pkl", **overrides}
    args = ["--from", "kamig", str(root / "graph_nnet_ema.pth"), str(root / out)]
    for flag, name in files.items():
        args += [f"--{flag}", str(root / name)]
    return args


@pytest.fixture(scope="module")
def converted(release: dict[str, object]) -> UViT:
    root = release["root"]
    assert main(convert_args(root)) == 0
    return load_generator(root / "kamig", "cpu")


@pytest.fixture(scope="module")
def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(4)
    tokens = torch.randint(0, V, (3, L), generator=generator)
    tokens[torch.rand(3, L, generator=generator) < 0.5] = V
    return tokens, torch.tensor([7, 0, C])  # two classes (one with an all-compatible row) and the null class


@pytest.fixture(scope="module")
def logits(converted: UViT, inputs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return converted(*inputs)


def reference_logits(release: dict[str, object], inputs: tuple[torch.Tensor, torch.Tensor],
                     signal_flags: dict | None = None, forward_flags: dict | None = None) -> torch.Tensor:
    state = release["state"]
    inject = reference_signals(state, release["graphs"], release["incompatibility"], *inputs,
                               **(signal_flags or {}))
    backbone = {k: v for k, v in state.items() if not k.startswith("graph_layer.")}
    return reference_forward(backbone, *inputs, inject=inject, **(forward_flags or {}))


# --------------------------------------------------------------------------------------------
# Numerical equivalence
# --------------------------------------------------------------------------------------------


def test_converted_release_matches_the_reference(converted: UViT, logits: torch.Tensor, release: dict,
                                                 inputs: tuple[torch.Tensor, torch.Tensor]) -> None:
    assert isinstance(converted.adapter, OfficialAdapter)
    assert (converted.spec.num_classes, converted.spec.seq_len, converted.spec.dim) == (C, L, D)
    assert converted.variant == "kamig" and converted.adapter.fusion.adapter == "official"
    expected = reference_logits(release, inputs)
    delta = (logits - expected).abs().max().item()
    print(f"max |delta logits| = {delta:.2e}")
    assert delta < TOL
    # Not vacuous: the adapter moves the logits far more than the tolerance.
    backbone_only = reference_forward({k: v for k, v in release["state"].items()
                                       if not k.startswith("graph_layer.")}, *inputs)
    assert (logits - backbone_only).abs().max().item() > 100 * TOL


@pytest.mark.parametrize("name", list(WRONG_PORTS))
def test_wrong_ports_miss_the_reference(name: str, logits: torch.Tensor, release: dict,
                                        inputs: tuple[torch.Tensor, torch.Tensor]) -> None:
    signal_flags, forward_flags = WRONG_PORTS[name]
    wrong = reference_logits(release, inputs, signal_flags, forward_flags)
    assert (wrong - logits).abs().max().item() > 10 * TOL, name


def test_precompute_keeps_the_logits(converted: UViT, logits: torch.Tensor,
                                     inputs: tuple[torch.Tensor, torch.Tensor]) -> None:
    with torch.no_grad():
        converted.precompute()
        assert converted.adapter.positive_tables is not None and converted.adapter.negative_tables is not None
        after = converted(*inputs)
        converted.release_precomputed()
    assert (after - logits).abs().max().item() < 1e-5


def test_fresh_official_adapter_returns_the_backbone(converted: UViT, release: dict,
                                                     inputs: tuple[torch.Tensor, torch.Tensor]) -> None:
    graphs = OfficialGraphs.from_state(V, C, L, converted.state_dict(), prefix="adapter.")
    fusion = FusionConfig(adapter="official", null_negative="zero")
    fresh = build_generator(converted.spec, fusion, graphs, seed=0)
    backbone = {k: v for k, v in converted.state_dict().items() if not k.startswith("adapter.")}
    missing, unexpected = fresh.load_state_dict(backbone, strict=False)
    assert not unexpected and all(k.startswith("adapter.") for k in missing)
    plain = UViT(converted.spec)
    plain.load_state_dict(backbone)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(*inputs), plain.eval()(*inputs))


def test_gcn_equals_torch_geometric() -> None:
    """Our GCNConv arithmetic against torch_geometric's own layer, the one the official code uses:
    same state-dict names, same outputs on an asymmetric graph with some self-loops, through the
    whole three-layer branch (ReLU after each layer, mean of the outputs)."""
    from torch_geometric.nn import GCNConv as ReferenceConv

    from pipeline.model.official import GraphBranch, gcn_operator

    torch.manual_seed(0)
    nodes, dim = 40, 16
    src, dst = torch.randint(0, nodes, (2, 150))
    keep = src != dst
    loops = torch.tensor([0, 0, 3, 6, 9, 12, 30])  # most nodes have none; node 0 has two
    edge_index = torch.stack([torch.cat([src[keep], loops]), torch.cat([dst[keep], loops])])
    weight = (0.05 + torch.rand(edge_index.shape[1])).double()  # the similarity file's float64
    ours = GraphBranch(dim, 3, None)
    theirs = [ReferenceConv(dim, dim) for _ in range(3)]
    for conv, reference in zip(ours.children(), theirs, strict=True):
        assert list(reference.state_dict()) == list(conv.state_dict()) == ["bias", "lin.weight"]
        torch.nn.init.normal_(reference.bias, 0, 0.1)
        conv.load_state_dict(reference.state_dict())
    x = torch.randn(nodes, dim)
    crow, col, values = gcn_operator(edge_index, weight, nodes)
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        operator = torch.sparse_csr_tensor(crow, col, values, (nodes, nodes), check_invariants=True)
    outputs, h = [], x
    for reference in theirs:
        h = torch.relu(reference(h, edge_index, weight.float()))  # type_as(x), as the official code
        outputs.append(h)
    with torch.no_grad():
        assert torch.allclose(ours(operator, x), torch.stack(outputs).mean(0), atol=1e-6)


def test_incompatibility_is_held_without_the_dense_tensor(release: dict) -> None:
    dense = torch.cat([release["incompatibility"], torch.zeros(1, L, V)]).reshape(-1, V)
    matrix = RowConstantMatrix.from_dense(dense)
    assert torch.equal(matrix.to_dense(V), dense)
    table = torch.randn(V, 8)
    rows = torch.tensor([0, 5, C * L - 1, C * L])
    assert torch.allclose(matrix.times(table, rows), dense[rows] @ table, atol=1e-5)
    with pytest.raises(ValueError, match="non-zero entries must be equal"):
        RowConstantMatrix.from_dense(torch.rand(3, V))


# --------------------------------------------------------------------------------------------
# Refusals and reports
# --------------------------------------------------------------------------------------------


def test_base_comparison_is_reported(release: dict, capsys: pytest.CaptureFixture[str]) -> None:
    root = release["root"]
    assert main([*convert_args(root, "kamig-base"), "--base", str(root / "nnet_ema.pth")]) == 0
    out = capsys.readouterr().out
    assert "equals" in out and out.count("sha256 ") == 5
    different = dict(release["state"])
    different = {k: v for k, v in different.items() if not k.startswith("graph_layer.")}
    different["norm.bias"] = different["norm.bias"] + 1.0
    torch.save(different, root / "other.pth")
    assert main([*convert_args(root, "kamig-other"), "--base", str(root / "other.pth")]) == 0
    assert "differs in 1 tensors (norm.bias)" in capsys.readouterr().out


def test_layout_errors_are_listed(release: dict, capsys: pytest.CaptureFixture[str]) -> None:
    root = release["root"]
    state = dict(release["state"])
    del state["graph_layer.zero_convs.0.bias"]
    state["graph_layer.co_graph_layer.conv4.bias"] = torch.zeros(D)
    state["graph_layer.zero_convs_pos.1.weight"] = torch.zeros(D, D)
    torch.save(state, root / "broken.pth")
    args = convert_args(root, "broken")
    args[2] = str(root / "broken.pth")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "1 missing: graph_layer.zero_convs.0.bias" in err
    assert "1 unexpected: graph_layer.co_graph_layer.conv4.bias" in err
    assert "graph_layer.zero_convs_pos.1.weight (768, 768) (expected (768, 768, 1))" in err


def test_incompatibility_shape_must_agree_with_the_checkpoint(release: dict,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    root = release["root"]
    with open(root / "pos-wrong.pkl", "wb") as handle:
        pickle.dump(torch.zeros(C + 5, L, V), handle)
    assert main(convert_args(root, "wrong", incompatibility="pos-wrong.pkl")) == 2
    assert "pos-wrong.pkl" in capsys.readouterr().err


def test_graph_files_are_required_and_an_autonat_file_is_refused(release: dict,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    root = release["root"]
    assert main(["--from", "kamig", str(root / "graph_nnet_ema.pth"), str(root / "x")]) == 2
    assert "--cooccurrence, --similarity, --incompatibility" in capsys.readouterr().err
    args = convert_args(root, "y")
    args[2] = str(root / "nnet_ema.pth")
    assert main(args) == 2
    assert "no 'graph_layer.*' keys" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# The config of the official mode
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "value"), [("weight", 0.5), ("null_negative", "marginal"),
                                            ("negative_at", "masked"), ("gcn_layers", 2)])
def test_official_mode_fixes_what_the_published_code_fixes(key: str, value: object) -> None:
    fusion = {"adapter": "official", "null_negative": "zero", key: value}
    with pytest.raises(ConfigError, match=rf"fusion\.{key} is .*fusion\.adapter 'official' fixes it"):
        config_from_dict({"fusion": fusion})
    ablation = config_from_dict({"fusion": {"adapter": "official", "null_negative": "zero",
                                            "graphs": ["similarity"]}})
    assert ablation.fusion.graphs == ("similarity",)


def test_pipeline_mode_saves_its_config_as_before(tmp_path: Path) -> None:
    """Models of this pipeline's design keep their config.json bytes (no `adapter` key), and an
    entry without the key, as every model directory written before the official mode has, loads
    as this pipeline's design."""
    from pipeline.model.io import save_generator
    from pipeline.model.knowledge import KnowledgeAdapter
    from pipeline.shards import TokenMeta
    from tests.test_autonat import TINY, random_graphs

    graphs = random_graphs(TINY.codebook_size, TINY.num_classes, TINY.seq_len, 0)
    model = build_generator(TINY, FusionConfig(), graphs)
    save_generator(model, tmp_path / "m", variant="kamig", token_meta=TokenMeta(2, 2, 12, 3, "t"))
    entry = json.loads((tmp_path / "m" / "config.json").read_text())["adapter"]
    assert "adapter" not in entry and entry["weight"] == 1.0
    assert isinstance(load_generator(tmp_path / "m").adapter, KnowledgeAdapter)


def test_unreadable_release_is_a_pipeline_error(tmp_path: Path) -> None:
    from pipeline.model.kamig import ReleasedFiles, import_kamig

    with pytest.raises(PipelineError, match="not found"):
        import_kamig(ReleasedFiles(*(tmp_path / n for n in ("a.pth", "b", "c", "d"))))
