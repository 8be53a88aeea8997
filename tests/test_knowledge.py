"""KA-MIG adapter: zero-init equivalence, masking, gradients, GCN maths, negative term, precompute."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.config import FusionConfig, replace
from pipeline.errors import PipelineError
from pipeline.graphs.storage import load_knowledge_graphs
from pipeline.model.generators import build_generator, load_generator
from pipeline.model.io import save_generator
from pipeline.model.knowledge import GCN, KnowledgeGraphs
from pipeline.model.transformer import GeneratorSpec, MaskGIT
from pipeline.shards import TokenMeta
from tests.helpers import generator_spec, write_graph_files

V, C, H, W = 24, 3, 3, 3
L = H * W


# --------------------------------------------------------------------------------------------
# Toy data (shared with test_train.py); graph files come from the graphs stage itself
# --------------------------------------------------------------------------------------------


def toy_data(n: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Tokens with class structure: class c uses mostly tokens from its own third of the codebook."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, C, n)
    tokens = (labels[:, None] * (V // C) + rng.integers(0, V // C, (n, L))) % V
    noise = rng.random((n, L)) < 0.1
    tokens[noise] = rng.integers(0, V, noise.sum())
    return tokens.astype(np.int64), labels.astype(np.int64)


@pytest.fixture(scope="module")
def graph_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tokens, labels = toy_data()
    return write_graph_files(tmp_path_factory.mktemp("graphs"), tokens, labels, V, (H, W))


def spec(**overrides) -> GeneratorSpec:
    return generator_spec(V, C, L, **{"dim": 16, "depth": 2, "heads": 2, "dropout": 0.0, **overrides})


def graph_tensors(graph_dir: Path, graphs: tuple[str, ...], min_count: int = 1) -> KnowledgeGraphs:
    data = load_knowledge_graphs(graph_dir, codebook_size=V, num_classes=C, seq_len=L, graphs=graphs,
                                 min_count=min_count)
    return KnowledgeGraphs.from_data(data)


def make_models(graph_dir: Path, settings: FusionConfig | None = None, min_count: int = 1,
                seed: int = 0) -> tuple[MaskGIT, MaskGIT]:
    """A random base model and a KA-MIG model holding the same backbone weights."""
    settings = settings or FusionConfig(min_count=min_count)
    torch.manual_seed(seed)
    base = MaskGIT(spec())
    kamig = build_generator(spec(), settings, graph_tensors(graph_dir, settings.graphs, settings.min_count))
    missing, unexpected = kamig.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected and all(name.startswith("adapter.") for name in missing)
    return base, kamig


def randomise_adapter(model: MaskGIT, seed: int = 1) -> None:
    """Give the zero-initialised projections real values, as after some training."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.adapter.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.3)


def batch(seed: int = 0, n: int = 6, p_mask: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, V, (n, L), generator=generator)
    tokens[torch.rand(n, L, generator=generator) < p_mask] = V  # mask_id
    labels = torch.randint(0, C + 1, (n,), generator=generator)  # includes the null class
    return tokens, labels


# --------------------------------------------------------------------------------------------
# Equivalence with the base model
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("training", [False, True])
def test_zero_initialised_adapter_gives_exactly_the_base_logits(graph_dir: Path, training: bool) -> None:
    base, kamig = make_models(graph_dir)
    base.train(training)
    kamig.train(training)
    tokens, labels = batch()
    assert torch.equal(base(tokens, labels), kamig(tokens, labels))


def test_fusion_weight_zero_gives_exactly_the_base_logits(graph_dir: Path) -> None:
    base, kamig = make_models(graph_dir, FusionConfig(weight=0.0))
    randomise_adapter(kamig)
    tokens, labels = batch()
    for mode in (True, False):
        base.train(mode)
        kamig.train(mode)
        assert torch.equal(base(tokens, labels), kamig(tokens, labels))
    # ... while the same adapter with weight 1 does change them: the test above can fail.
    with torch.no_grad():
        kamig.adapter.fusion = replace(kamig.adapter.fusion, weight=1.0)
    assert not torch.allclose(base(tokens, labels), kamig(tokens, labels))


# --------------------------------------------------------------------------------------------
# What the adapter injects
# --------------------------------------------------------------------------------------------


def test_masked_positions_receive_no_cooccurrence_or_similarity_signal(graph_dir: Path) -> None:
    settings = FusionConfig(graphs=("cooccurrence", "similarity"))
    _, kamig = make_models(graph_dir, settings)
    randomise_adapter(kamig)
    tokens, labels = batch(p_mask=0.5)
    masked = tokens == kamig.mask_id
    assert masked.any() and (~masked).any()
    inject = kamig.adapter(tokens, labels, kamig.token_embeddings)
    for layer in range(kamig.spec.depth):
        signal = inject(layer)
        assert signal.shape == (len(tokens), L + 1, kamig.spec.dim)
        assert torch.all(signal[:, 0] == 0)  # the class token
        assert torch.all(signal[:, 1:][masked] == 0)
        assert torch.all(signal[:, 1:][~masked].abs().sum(-1) > 0)
    # The output at a masked position still depends on the visible tokens' signal (via attention).
    other = tokens.clone()
    other[~masked] = (other[~masked] + 1) % V
    assert not torch.equal(inject(0), kamig.adapter(other, labels, kamig.token_embeddings)(0))


@pytest.mark.parametrize("negative_at", ["all", "masked"])
def test_negative_term_is_the_mean_of_projected_incompatible_embeddings(
    graph_dir: Path, negative_at: str
) -> None:
    min_count = 2
    settings = FusionConfig(graphs=("incompatibility",), negative_at=negative_at, min_count=min_count)
    _, kamig = make_models(graph_dir, settings)
    randomise_adapter(kamig)
    adapter = kamig.adapter

    # Dense reference from the raw counts file: class rows, then the class-marginal null row.
    emb = kamig.token_embeddings.detach()
    expected_p = dense_incompatible_mean(graph_dir, min_count) @ (emb @ adapter.negative_embed.detach())

    tokens, labels = batch(p_mask=0.5)
    inject = adapter(tokens, labels, kamig.token_embeddings)
    masked = (tokens == kamig.mask_id).float()[..., None]
    for layer in range(kamig.spec.depth):
        expected = -(expected_p[labels] @ adapter.projections["incompatibility"][layer].detach())
        if negative_at == "masked":
            expected = expected * masked
        got = inject(layer)
        assert torch.all(got[:, 0] == 0)
        torch.testing.assert_close(got[:, 1:], expected, rtol=1e-4, atol=1e-5)


def dense_incompatible_mean(graph_dir: Path, min_count: int) -> torch.Tensor:
    """(C + 1, L, V) rows averaging over the incompatible tokens, from the raw counts file; the
    null class (last) uses the class-marginal counts."""
    table = pq.read_table(graph_dir / "position_token_counts.parquet").to_pydict()
    counts = np.zeros((C + 1, L, V), dtype=np.int64)
    np.add.at(counts, (table["label"], table["position"], table["token"]), table["count"])
    counts[C] = counts[:C].sum(0)
    incompatible = torch.from_numpy(counts < min_count).float()
    return incompatible / incompatible.sum(-1, keepdim=True).clamp_min(1.0)


def test_injected_signal_equals_a_dense_reference(graph_dir: Path) -> None:
    """The whole signal before each block, recomputed densely from the weights and the graph
    buffers: ``w (sum_g mean_k GCN_k(E)[t] Z_l^g at visible t  -  P[c, i] Z_l^neg)``, with E the
    first V rows of the token table."""
    _, kamig = make_models(graph_dir, FusionConfig(weight=0.7))
    randomise_adapter(kamig)
    adapter = kamig.adapter
    emb = kamig.tok_emb.weight.detach()[:V]  # the table itself, not the model's accessor

    def dense_gcn(name: str) -> torch.Tensor:
        crow, col, weight = (getattr(adapter, f"{name}_{part}") for part in ("crow", "col", "weight"))
        adjacency = torch.zeros(V, V)
        adjacency[torch.repeat_interleave(torch.arange(V), crow[1:] - crow[:-1]), col] = weight
        h, outputs = emb, []
        layers = adapter.gcn[name].weights
        for k, weight_k in enumerate(layers):
            h = adjacency @ (h @ weight_k.detach())
            h = torch.nn.functional.gelu(h) if k < len(layers) - 1 else h
            outputs.append(h)
        return torch.stack(outputs).mean(0)

    features = {name: dense_gcn(name) for name in ("cooccurrence", "similarity")}
    negative = dense_incompatible_mean(graph_dir, 1) @ (emb @ adapter.negative_embed.detach())
    tokens, labels = batch(p_mask=0.4)
    visible = (tokens != V).float()[..., None]
    inject = adapter(tokens, labels, kamig.token_embeddings)
    for layer in range(kamig.spec.depth):
        projections = {name: param[layer].detach() for name, param in adapter.projections.items()}
        positive = sum(features[g][tokens.clamp(max=V - 1)] @ projections[g] for g in features) * visible
        expected = 0.7 * (positive - negative[labels] @ projections["incompatibility"])
        got = inject(layer)
        assert torch.all(got[:, 0] == 0)
        torch.testing.assert_close(got[:, 1:], expected, rtol=1e-4, atol=1e-5)


def test_null_class_uses_class_marginal_incompatibility(graph_dir: Path) -> None:
    graphs = graph_tensors(graph_dir, ("incompatibility",))
    ptr, toks = graphs.compatible_ptr, graphs.compatible_tokens.long()
    for position in range(L):
        union = set()
        for label in range(C):
            row = label * L + position
            union |= set(toks[ptr[row]:ptr[row + 1]].tolist())
        row = C * L + position
        assert set(toks[ptr[row]:ptr[row + 1]].tolist()) == union


def test_null_negative_zero_removes_the_null_class_term_only(graph_dir: Path) -> None:
    _, marginal = make_models(graph_dir, FusionConfig(graphs=("incompatibility",)))
    _, zero = make_models(graph_dir, FusionConfig(graphs=("incompatibility",), null_negative="zero"))
    randomise_adapter(marginal)
    zero.load_state_dict(marginal.state_dict())
    tokens, labels = batch(n=8)
    labels[:4] = C  # half of the batch asks for the unconditional prediction
    labels[4:] = torch.arange(4) % C
    with torch.no_grad():
        signals = [m.adapter(tokens, labels, m.token_embeddings)(0) for m in (marginal, zero)]
    assert torch.all(signals[1][:4] == 0) and torch.count_nonzero(signals[0][:4]) > 0
    assert torch.equal(signals[0][4:], signals[1][4:])


def test_gradients_reach_every_adapter_parameter(graph_dir: Path) -> None:
    _, kamig = make_models(graph_dir)
    kamig.train()
    tokens, labels = batch()
    # Step 0: the projections are zero, so only they get gradients (the rest sits behind them)...
    kamig(tokens, labels).logsumexp(-1).mean().backward()
    for name, param in kamig.adapter.named_parameters():
        if name.startswith("projections."):
            assert param.grad is not None and param.grad.abs().sum() > 0, name
    # ... and once they are non-zero, gradients reach the GCN and negative weights too.
    kamig.zero_grad()
    randomise_adapter(kamig)
    kamig(tokens, labels).logsumexp(-1).mean().backward()
    for name, param in kamig.adapter.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


# --------------------------------------------------------------------------------------------
# The GCN
# --------------------------------------------------------------------------------------------


def test_gcn_sparse_matches_dense_reference(graph_dir: Path) -> None:
    graphs = graph_tensors(graph_dir, ("cooccurrence",))
    crow, col, weight = graphs.edges["cooccurrence"]
    rows = torch.repeat_interleave(torch.arange(V), crow[1:] - crow[:-1])
    dense = torch.zeros(V, V)
    dense[rows, col] = weight

    # The file holds D^-1/2 (A + I) D^-1/2 of the binary adjacency the helper built.
    table = pq.read_table(graph_dir / "cooccurrence.parquet")
    binary = torch.zeros(V, V, dtype=torch.float64)
    src, dst = (torch.tensor(table[name].to_numpy(), dtype=torch.long) for name in ("src", "dst"))
    binary[src, dst] = 1
    degree = binary.sum(1)
    normalised = binary / torch.sqrt(degree[:, None] * degree[None, :])
    torch.testing.assert_close(dense.double(), normalised, rtol=1e-6, atol=1e-7)

    torch.manual_seed(0)
    gcn = GCN(8, layers=3)
    with torch.no_grad():
        for weight_k in gcn.weights:
            weight_k.add_(torch.randn_like(weight_k) * 0.2)
    features = torch.randn(V, 8)
    sparse = torch.sparse_csr_tensor(crow, col, weight, (V, V), check_invariants=True)
    h, outputs = features, []
    for k, weight_k in enumerate(gcn.weights):
        h = dense @ h @ weight_k
        h = torch.nn.functional.gelu(h) if k < 2 else h
        outputs.append(h)
    torch.testing.assert_close(gcn(sparse, features), torch.stack(outputs).mean(0), rtol=1e-5, atol=1e-6)
    # The adapter's path (a stored transpose for the backward) gives torch's gradients.
    transpose = dense.T.to_sparse_csr()
    x = features.clone().requires_grad_(True)
    gcn(sparse, x).square().sum().backward()
    expected = x.grad.clone()
    x.grad = None
    gcn(sparse, x, transpose).square().sum().backward()
    torch.testing.assert_close(x.grad, expected, rtol=1e-5, atol=1e-6)
    # Row src aggregates from its dst: a one-hot feature at node j reaches exactly A[:, j] != 0.
    gcn_identity = GCN(V, layers=1)
    out = gcn_identity(sparse, torch.eye(V))
    torch.testing.assert_close(out, dense)


# --------------------------------------------------------------------------------------------
# Precomputed inference tables
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("negative_at", ["all", "masked"])
def test_precomputed_inference_equals_computing_from_the_weights(graph_dir: Path, negative_at: str) -> None:
    _, kamig = make_models(graph_dir, FusionConfig(negative_at=negative_at))
    randomise_adapter(kamig)
    kamig.eval()
    tokens, labels = batch()
    with torch.no_grad():
        computed = kamig(tokens, labels)
        assert kamig.adapter.tables is None  # nothing is cached behind the caller's back
        kamig.precompute()
        assert kamig.adapter.tables is not None
        precomputed = kamig(tokens, labels)
        again = kamig(tokens, labels)
    assert torch.equal(precomputed, again)
    torch.testing.assert_close(precomputed, computed, rtol=1e-5, atol=1e-6)


def test_train_drops_the_precomputed_tables(graph_dir: Path) -> None:
    _, kamig = make_models(graph_dir)
    randomise_adapter(kamig)
    kamig.eval()
    kamig.precompute()
    kamig.train()
    assert kamig.adapter.tables is None
    tokens, labels = batch()
    randomise_adapter(kamig, seed=2)  # a training step: the forward must see the new weights
    kamig.eval()
    with torch.no_grad():
        fresh = kamig(tokens, labels)
        kamig.precompute()
        torch.testing.assert_close(kamig(tokens, labels), fresh, rtol=1e-5, atol=1e-6)
        kamig.release_precomputed()
        assert kamig.adapter.tables is None


def test_precompute_over_budget_keeps_computing_per_batch(graph_dir: Path) -> None:
    _, kamig = make_models(graph_dir)
    randomise_adapter(kamig)
    kamig.eval()
    tokens, labels = batch()
    with torch.no_grad():
        kamig.precompute()
        full = kamig(tokens, labels)
        kamig.adapter.precompute_bytes = 0
        assert kamig.adapter.precompute(kamig.token_embeddings) is False
        assert kamig.adapter.tables is None
        partial = kamig(tokens, labels)
    torch.testing.assert_close(full, partial, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Saving and loading
# --------------------------------------------------------------------------------------------


def test_saved_kamig_model_is_self_contained(graph_dir: Path, tmp_path: Path) -> None:
    _, kamig = make_models(graph_dir, FusionConfig(weight=0.7, negative_at="masked"))
    randomise_adapter(kamig)
    meta = TokenMeta(H, W, V, C, "abc123")
    save_generator(kamig, tmp_path / "kamig", variant="kamig", token_meta=meta)
    loaded = load_generator(tmp_path / "kamig", expected_meta=meta)
    assert not loaded.training
    assert loaded.adapter.fusion == kamig.adapter.fusion
    assert loaded.adapter.fusion.weight == pytest.approx(0.7)
    assert not any("fusion" in name for name in loaded.state_dict())  # the weight is stored once
    assert loaded.adapter.graph_buffer_numel() == kamig.adapter.graph_buffer_numel() > 0
    assert (loaded.mask_id, loaded.null_class, loaded.codebook_size, loaded.num_classes, loaded.seq_len) == (
        V, C, V, C, L)
    kamig.eval()
    tokens, labels = batch()
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens, labels), kamig(tokens, labels), rtol=0, atol=0)

    other = TokenMeta(H, W, V, C, "def456")
    with pytest.raises(PipelineError, match="tokenizer_fingerprint"):
        load_generator(tmp_path / "kamig", expected_meta=other)


def test_graph_files_with_out_of_range_tokens_are_rejected(graph_dir: Path) -> None:
    with pytest.raises(PipelineError, match=r"cooccurrence\.parquet"):
        load_knowledge_graphs(graph_dir, codebook_size=V - 4, num_classes=C, seq_len=L,
                              graphs=("cooccurrence",), min_count=1)
    with pytest.raises(PipelineError, match=r"position_token_counts\.parquet.*'label'"):
        load_knowledge_graphs(graph_dir, codebook_size=V, num_classes=C - 1, seq_len=L,
                              graphs=("incompatibility",), min_count=1)
    with pytest.raises(PipelineError, match="not found"):
        load_knowledge_graphs(graph_dir / "missing", codebook_size=V, num_classes=C, seq_len=L,
                              graphs=("cooccurrence", "similarity", "incompatibility"), min_count=1)


def test_permuted_graphs_keep_every_statistic_and_break_the_token_correspondence(graph_dir: Path) -> None:
    from pipeline.graphs.storage import permuted

    data = load_knowledge_graphs(graph_dir, codebook_size=V, num_classes=C, seq_len=L,
                                 graphs=("cooccurrence", "similarity", "incompatibility"), min_count=1)
    perm = np.random.default_rng(0).permutation(V)
    shuffled = permuted(data, perm)
    for name, (src, dst, weight) in data.edges.items():
        dense = np.zeros((V, V), np.float32)
        dense[src, dst] = weight
        s_src, s_dst, s_weight = shuffled.edges[name]
        relabelled = np.zeros((V, V), np.float32)
        relabelled[s_src, s_dst] = s_weight
        assert np.array_equal(relabelled, dense[np.ix_(perm, perm)])  # A'[i, j] = A[pi(i), pi(j)]
        assert sorted(np.bincount(src, minlength=V)) == sorted(np.bincount(s_src, minlength=V))
        assert not np.array_equal(relabelled, dense)
    ptr = data.compatible_ptr
    assert np.array_equal(shuffled.compatible_ptr, ptr)  # the same count per (class, position)
    for row in range(len(ptr) - 1):
        original = set(data.compatible_tokens[ptr[row]:ptr[row + 1]].tolist())
        assert {int(perm[t]) for t in shuffled.compatible_tokens[ptr[row]:ptr[row + 1]]} == original
    # The inverse permutation gives the mined graphs back.
    restored = permuted(shuffled, np.argsort(perm))
    for name in data.edges:
        assert all(np.array_equal(a, b) for a, b in zip(restored.edges[name], data.edges[name]))
