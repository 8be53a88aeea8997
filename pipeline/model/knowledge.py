"""The KA-MIG knowledge adapter: a graph-aware token encoder and its fusion into the backbone.

Three priors mined from the training tokens (``data/graphs/``, see the graphs stage) enter the
transformer before every block ``l``::

    x <- x + w * ( Z_l^co(H_co)[t_i] + Z_l^s(H_s)[t_i] - Z_l^neg(P[c, i]) )

* ``H_g`` (g = co-occurrence, similarity) is a ``fusion.gcn_layers``-layer GCN (3 in the paper) over
  graph g whose node features are the transformer's own token embeddings E (V, dim); its output
  is the mean of the layer outputs. Each graph has its own GCN weights.
  ``H_g[t_i]`` is gathered at the token of each *visible* position i; masked positions get zero, so
  the graphs never leak anything about the tokens the model must predict.
* ``P[c, i]`` is the mean of the projected embeddings ``W E_t`` over the tokens t that were never
  (fewer than ``min_count`` times) seen at position i in class c: "what does not belong here".
  The null (unconditional, CFG) class uses the class-marginal statistics: t is incompatible at i
  when its count summed over all classes is below ``min_count``. ``fusion.negative_at`` applies
  it at all positions (official code) or at masked ones only (paper text).
* Every ``Z`` is its own zero-initialised linear map, per graph and per layer (the official code
  shares one between co and s; we don't), so at step 0 the adapter adds exactly zero and a
  fine-tuned model starts from the base model's function. ``w`` is ``fusion.weight``; the
  ``control`` variant sets it to 0 and thus trains the same parameters without graph signal.

Implementation notes (why it is fast):

* Projections are linear, so ``Z_l(H)[t]`` is computed once per token on the (V, dim) node table
  and then gathered - V rows instead of B * L. The zero row for masked positions is appended at
  index ``mask_id``, so the gather itself implements "masked positions get zero".
* ``P`` is a mean over *most* of the vocabulary, computed as (sum over all tokens - sum over the
  sparse compatible set) / count, only for the classes present in the batch. No dense
  classes x positions x vocab tensor is ever built (1000 x 256 x 1024 on ImageNet).
* Per layer, both terms live in one table ``w * [token rows; -(class, position) rows]`` and one
  EmbeddingBag sums the two rows each position needs: one memory pass per layer, not five.
* In eval mode everything depends only on the weights, not on the input: the per-layer tables
  (for every class, when that fits ``cache_bytes``; else the token rows only) are computed once
  and reused across decoding steps, batches and the CFG pass. The cache is keyed on the identity and
  version counter of every tensor it reads (bumped by optimiser steps, ``load_state_dict`` and
  any in-place write) and dropped on ``train()``.
* The adjacencies are CSR matrices with their transposes kept alongside, so the GCN's backward
  is one more sparse matmul instead of a transpose-and-sort on every step.
* The graphs are registered buffers, so a saved model is self-contained.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import PipelineError
from pipeline.graphs.storage import load_edges

GRAPH_NAMES = ("cooccurrence", "similarity", "incompatibility")
POSITIVE_GRAPHS = ("cooccurrence", "similarity")
GRAPH_FILES = {
    "cooccurrence": "cooccurrence.parquet",
    "similarity": "similarity.parquet",
    "incompatibility": "position_token_counts.parquet",
}


# --------------------------------------------------------------------------------------------
# Settings and graph data
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AdapterSettings:
    """The ``fusion.*`` params (plus the incompatibility threshold), saved in ``config.json``."""

    graphs: tuple[str, ...] = GRAPH_NAMES
    negative_at: Literal["all", "masked"] = "all"
    gcn_layers: int = 3
    weight: float = 1.0
    min_count: int = 1

    def __post_init__(self) -> None:
        unknown = set(self.graphs) - set(GRAPH_NAMES)
        if unknown:
            raise ValueError(f"unknown graph(s) {sorted(unknown)}; choose from {list(GRAPH_NAMES)}")
        if self.negative_at not in ("all", "masked"):
            raise ValueError(f"negative_at must be 'all' or 'masked', got {self.negative_at!r}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "graphs": list(self.graphs)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> AdapterSettings:
        return cls(**{**raw, "graphs": tuple(raw["graphs"])})


@dataclass
class KnowledgeGraphs:
    """The graph data an adapter is built from (CPU tensors, exactly what becomes its buffers).

    ``edges[g]`` is the GCN-normalised adjacency of graph g in CSR form, ``(crow (V + 1,) int64,
    col (E,) int64, weight (E,) float32)``: row ``src`` aggregates from its ``dst`` columns.
    The compatible set is a CSR matrix over rows ``c * seq_len + i`` for classes c in
    [0, num_classes] (the last one is the null class): ``compatible_tokens[ptr[r]:ptr[r + 1]]``
    are the tokens observed at least ``min_count`` times at (c, i).
    """

    codebook_size: int
    num_classes: int
    seq_len: int
    edges: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    compatible_ptr: torch.Tensor | None = None
    compatible_tokens: torch.Tensor | None = None


def _read_columns(path: Path, columns: list[str]) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise PipelineError(f"graph file {path} not found: run the graphs stage (dvc repro graphs)")
    try:
        table = pq.read_table(path, columns=columns)
    except Exception as exc:  # pyarrow raises several types; the message is what matters
        raise PipelineError(f"cannot read graph file {path} (columns {columns}): {exc}") from exc
    return {name: table.column(name).to_numpy() for name in columns}


def _check_range(path: Path, name: str, values: np.ndarray, upper: int) -> None:
    if values.size and (values.min() < 0 or values.max() >= upper):
        raise PipelineError(
            f"graph file {path}: column '{name}' holds values outside [0, {upper}) "
            "(graphs built from different tokens? re-run dvc repro graphs)"
        )


def csr_from_coo(
    index: torch.Tensor, weight: torch.Tensor, size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(crow, col, weight) of the (size x size) matrix with entries ``weight`` at ``index`` (2, E).

    Duplicate entries are summed. CSR because its matmul, forward and backward, is about twice
    as fast as COO's (whose backward re-sorts the transpose on every step).
    """
    coo = torch.sparse_coo_tensor(index, weight, (size, size), check_invariants=True).coalesce()
    rows, col = coo.indices()
    crow = torch.zeros(size + 1, dtype=torch.int64)
    torch.cumsum(torch.bincount(rows, minlength=size), 0, out=crow[1:])
    # clone: `col` is a row of the (2, E) index tensor, a view that does not cover its storage,
    # and safetensors refuses to load such a buffer back (accelerate's resume from a checkpoint).
    return crow, col.clone(), coo.values().to(torch.float32).contiguous()


def _load_edges(path: Path, codebook_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # The graphs package owns the file format: for the similarity graph the self-loop entries of
    # the normalised operator are implicit in the file and must be added back, which load_edges does.
    if not path.is_file():
        raise PipelineError(f"graph file {path} not found: run the graphs stage (dvc repro graphs)")
    try:
        src, dst, weight = load_edges(path)
    except PipelineError:
        raise
    except Exception as exc:  # pyarrow raises several types; the message is what matters
        raise PipelineError(f"cannot read graph file {path}: {exc}") from exc
    _check_range(path, "src", src, codebook_size)
    _check_range(path, "dst", dst, codebook_size)
    if not np.isfinite(weight).all():
        raise PipelineError(f"graph file {path}: column 'weight' holds non-finite values")
    index = torch.from_numpy(np.stack([src, dst]).astype(np.int64))
    return csr_from_coo(index, torch.from_numpy(weight.astype(np.float32)), codebook_size)


def _load_compatible(
    path: Path, codebook_size: int, num_classes: int, seq_len: int, min_count: int
) -> tuple[torch.Tensor, torch.Tensor]:
    cols = _read_columns(path, ["label", "position", "token", "count"])
    for name, upper in (("label", num_classes), ("position", seq_len), ("token", codebook_size)):
        _check_range(path, name, cols[name], upper)
    label = cols["label"].astype(np.int64)
    position = cols["position"].astype(np.int64)
    token = cols["token"].astype(np.int64)
    count = cols["count"].astype(np.int64)

    # Per class: the observed triples with enough occurrences.
    keep = count >= min_count
    keys = [(label[keep] * seq_len + position[keep]) * codebook_size + token[keep]]
    # Null class (CFG): the class-marginal counts, one extra block of rows after the real classes.
    marginal = np.bincount(position * codebook_size + token, weights=count, minlength=seq_len * codebook_size)
    (flat,) = np.nonzero(marginal >= min_count)
    keys.append(num_classes * seq_len * codebook_size + flat)
    key = np.unique(np.concatenate(keys))  # sorted by (row, token); duplicates merged

    rows, tokens = np.divmod(key, codebook_size)
    ptr = np.zeros((num_classes + 1) * seq_len + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=(num_classes + 1) * seq_len), out=ptr[1:])
    # int16 halves the largest buffer (ImageNet: ~10^8 entries) whenever the vocabulary allows.
    token_dtype = np.int16 if codebook_size <= np.iinfo(np.int16).max else np.int32
    return torch.from_numpy(ptr), torch.from_numpy(tokens.astype(token_dtype))


def load_knowledge_graphs(
    graph_dir: str | Path,
    *,
    codebook_size: int,
    num_classes: int,
    seq_len: int,
    graphs: Iterable[str] = GRAPH_NAMES,
    min_count: int = 1,
) -> KnowledgeGraphs:
    """Read the graph files the adapter needs from ``graph_dir`` (``data/graphs``) and check them."""
    graph_dir = Path(graph_dir)
    result = KnowledgeGraphs(codebook_size, num_classes, seq_len)
    for name in graphs:
        path = graph_dir / GRAPH_FILES[name]
        if name in POSITIVE_GRAPHS:
            result.edges[name] = _load_edges(path, codebook_size)
        else:
            result.compatible_ptr, result.compatible_tokens = _load_compatible(
                path, codebook_size, num_classes, seq_len, min_count
            )
    return result


# --------------------------------------------------------------------------------------------
# The encoder
# --------------------------------------------------------------------------------------------


class _ConstantSparseMatmul(torch.autograd.Function):
    """``A @ X`` for a constant sparse A whose transpose is supplied.

    torch's own backward derives A^T (a sort) on every call - the largest part of the adapter's
    cost per training step at V = 512. With A^T stored once, the backward is one more matmul.
    """

    @staticmethod
    def forward(ctx: Any, adjacency: torch.Tensor, transpose: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.transpose = transpose
        return torch.sparse.mm(adjacency, x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, None, torch.Tensor]:
        return None, None, torch.sparse.mm(ctx.transpose, grad)


class GCN(nn.Module):
    """K graph-convolution layers over one fixed, already normalised adjacency A (no torch_geometric).

    ``H_k = act(A H_{k-1} W_k)`` with GELU between layers and a linear last layer; the output is
    the mean of ``H_1 .. H_K``. The ``W_k`` start as the identity, so before any training the
    encoder returns graph-smoothed token embeddings rather than noise.
    """

    def __init__(self, dim: int, layers: int):
        super().__init__()
        self.weights = nn.ParameterList(nn.Parameter(torch.eye(dim)) for _ in range(layers))

    def forward(
        self, adjacency: torch.Tensor, features: torch.Tensor, transpose: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``adjacency`` (V, V) sparse; ``transpose``, its transpose, makes the backward cheaper."""
        outputs = []
        h = features
        for k, weight in enumerate(self.weights):
            hw = h @ weight  # A (H W), the same as (A H) W
            if transpose is None:
                h = torch.sparse.mm(adjacency, hw)
            else:
                h = _ConstantSparseMatmul.apply(adjacency, transpose, hw)
            if k < len(self.weights) - 1:
                h = F.gelu(h)
            outputs.append(h)
        return torch.stack(outputs).mean(dim=0)


def _pad_class_slot(table: torch.Tensor) -> torch.Tensor:
    """(..., L, dim) -> (..., L + 1, dim) with zeros at slot 0, where the class token sits."""
    return F.pad(table, (0, 0, 1, 0))


class KnowledgeAdapter(nn.Module):
    """Graph-aware encoder plus per-layer fusion; plugged into ``MaskGIT(spec, adapter)``."""

    def __init__(
        self,
        dim: int,
        depth: int,
        graphs: KnowledgeGraphs,
        settings: AdapterSettings,
        cache_bytes: int = 1 << 30,
    ):
        super().__init__()
        self.settings = settings
        self.codebook_size = graphs.codebook_size
        self.mask_id = graphs.codebook_size
        self.num_classes = graphs.num_classes
        self.seq_len = graphs.seq_len
        self.depth = depth
        # Inference cache budget: the per-layer tables for every class are cached only when they fit.
        self.cache_bytes = cache_bytes

        self.register_buffer("fusion_weight", torch.tensor(float(settings.weight)))
        self.positive = [g for g in POSITIVE_GRAPHS if g in settings.graphs]
        self.negative = "incompatibility" in settings.graphs
        self.gcn = nn.ModuleDict()
        # projections[g][l] is Z_l^g as a (dim_in, dim_out) matrix: one per graph and per layer,
        # zero-initialised so the adapter starts as an exact no-op.
        self.projections = nn.ParameterDict()
        for name in self.positive:
            if name not in graphs.edges:
                raise ValueError(f"graph '{name}' is enabled but its edges were not loaded")
            crow, col, weight = graphs.edges[name]
            self.register_buffer(f"{name}_crow", crow.to(torch.int64))
            self.register_buffer(f"{name}_col", col.to(torch.int64))
            self.register_buffer(f"{name}_weight", weight.to(torch.float32))
            # The transpose, for the GCN's backward: derived, so not saved in checkpoints.
            rows = torch.repeat_interleave(torch.arange(self.codebook_size), crow[1:] - crow[:-1])
            for part, value in zip(("crow", "col", "weight"),
                                   csr_from_coo(torch.stack([col, rows]), weight, self.codebook_size)):
                self.register_buffer(f"{name}_transpose_{part}", value, persistent=False)
            self.gcn[name] = GCN(dim, settings.gcn_layers)
            self.projections[name] = nn.Parameter(torch.zeros(depth, dim, dim))
        if self.negative:
            if graphs.compatible_ptr is None or graphs.compatible_tokens is None:
                raise ValueError("the incompatibility graph is enabled but was not loaded")
            self.register_buffer("compatible_ptr", graphs.compatible_ptr.to(torch.int64))
            self.register_buffer("compatible_tokens", graphs.compatible_tokens)
            # W in P[c, i] = mean_t W E_t, starting as the identity (like the GCN weights).
            self.negative_embed = nn.Parameter(torch.eye(dim))
            self.projections["incompatibility"] = nn.Parameter(torch.zeros(depth, dim, dim))

        self.use_cache = True
        self._cache: dict[str, Any] | None = None
        self._cache_key: tuple | None = None

    # ---- graph buffers --------------------------------------------------------------------------

    def graph_buffer_numel(self) -> int:
        """Elements of the graph buffers saved with the model."""
        return sum(b.numel() for name, b in self.named_buffers()
                   if name != "fusion_weight" and "_transpose_" not in name)

    def _adjacency(self, name: str) -> torch.Tensor:
        crow, col, weight = (getattr(self, f"{name}_{part}") for part in ("crow", "col", "weight"))
        size = (self.codebook_size, self.codebook_size)
        with warnings.catch_warnings():  # "sparse CSR support is in beta": matmul is all we use
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(crow, col, weight, size, check_invariants=False)

    # ---- the encoder's tables ---------------------------------------------------------------

    def positive_tables(self, embeddings: torch.Tensor) -> torch.Tensor | None:
        """(depth, V + 1, dim): row t of layer l is sum_g Z_l^g(H_g)[t]; row ``mask_id`` is zero."""
        total = None
        for name in self.positive:
            adjacency, transpose = self._adjacency(name), self._adjacency(f"{name}_transpose")
            h = self.gcn[name](adjacency, embeddings, transpose)  # (V, dim)
            z = h @ self.projections[name]  # (V, dim) @ (depth, dim, dim) -> (depth, V, dim)
            total = z if total is None else total + z
        return None if total is None else F.pad(total, (0, 0, 0, 1))

    def incompatible_mean(self, embeddings: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """(U, L, dim): mean of E_t over the tokens t incompatible at (c, i), for c in ``classes``.

        Computed as (sum over all tokens - sum over the compatible set) / number incompatible,
        with an EmbeddingBag over the compatible tokens of just these U * L rows.
        """
        length = self.seq_len
        rows = (classes[:, None] * length + torch.arange(length, device=classes.device)).reshape(-1)
        start = self.compatible_ptr[rows]
        count = self.compatible_ptr[rows + 1] - start
        offsets = torch.cumsum(count, 0) - count
        # Ragged gather: entry j of row r is compatible_tokens[start[r] + j].
        within = torch.arange(int(count.sum()), device=rows.device) - torch.repeat_interleave(offsets, count)
        flat = within + torch.repeat_interleave(start, count)
        tokens = self.compatible_tokens[flat].to(torch.int64)
        compatible_sum = F.embedding_bag(tokens, embeddings, offsets, mode="sum")  # (U*L, dim)
        incompatible = (self.codebook_size - count).to(embeddings.dtype)[:, None]
        mean = (embeddings.sum(0) - compatible_sum) / incompatible.clamp_min(1.0)
        mean = torch.where(incompatible > 0, mean, torch.zeros_like(mean))  # no incompatible: no term
        return mean.view(len(classes), length, -1)

    def negative_features(self, embeddings: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """(U, L, dim): P[c, i] = mean of W E_t over the incompatible t, for c in ``classes``."""
        return self.incompatible_mean(embeddings, classes) @ self.negative_embed  # W applied to the mean

    def negative_layer(self, features: torch.Tensor, layer: int) -> torch.Tensor:
        """(U * (L + 1), dim): Z_l^neg(P[c, i]) flattened by class, a zero row at each class slot."""
        z = features @ self.projections["incompatibility"][layer]
        return _pad_class_slot(z).reshape(-1, z.shape[-1])

    def fusion_table(
        self, positive: torch.Tensor | None, negative: torch.Tensor | None, layer: int
    ) -> torch.Tensor:
        """Layer ``layer``'s rows ``w * [positive tables; -negative tables]`` (see ``_fusion_index``)."""
        parts = []
        if positive is not None:
            parts.append(positive[layer])
        if negative is not None:
            parts.append(-self.negative_layer(negative, layer))
        return self.fusion_weight * torch.cat(parts)

    def _fusion_index(self, tokens: torch.Tensor, groups: torch.Tensor | None) -> torch.Tensor:
        """(B * (L + 1), k) rows of the fusion table summed at each position (k = 1 or 2).

        Column 1 (co/s graphs): the position's token; masked positions and the class slot (which
        reads ``mask_id``) hit the zero row. Column 2 (negative): row ``(group, position)`` of the
        negative block, where ``group`` is the class (or its index among the batch's classes);
        the class slot, and with ``negative_at: masked`` every visible position, hit the zero
        row at slot 0 of the group. One EmbeddingBag over these indices then computes the whole
        per-layer signal in one pass instead of two gathers and three elementwise ops.
        """
        slots = F.pad(tokens, (1, 0), value=self.mask_id)  # (B, L + 1), class slot -> zero row
        columns = []
        offset = 0
        if self.positive:
            columns.append(slots)
            offset = self.codebook_size + 1
        if self.negative:
            assert groups is not None
            first = offset + groups[:, None] * (self.seq_len + 1)  # each group's zero row
            rows = first + torch.arange(self.seq_len + 1, device=tokens.device)
            if self.settings.negative_at == "masked":
                rows = torch.where(slots == self.mask_id, rows, first)  # class slot: row 0 anyway
            columns.append(rows)
        return torch.stack(columns, dim=-1).reshape(-1, len(columns))

    def _negative_fits_cache(self) -> bool:
        rows = self.codebook_size + 1 + (self.num_classes + 1) * (self.seq_len + 1)
        dim = self.projections["incompatibility"].shape[-1]
        return self.depth * rows * dim * 4 <= self.cache_bytes

    # ---- inference cache -----------------------------------------------------------------------

    def _weights_key(self, embeddings: torch.Tensor) -> tuple:
        # Every tensor the tables read: identity (storage pointer, dtype, device) and version
        # counter. Optimiser steps, load_state_dict, in-place writes and .to() all change one.
        tensors = [embeddings, *self.parameters(), *self.buffers()]
        return tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors)

    def _cached(self, embeddings: torch.Tensor) -> dict[str, torch.Tensor | None]:
        """Eval-mode tables: the whole per-layer fusion table for every class when it fits
        ``cache_bytes`` (Fashion-MNIST: 2 MB), otherwise just the co/s token tables."""
        key = self._weights_key(embeddings)
        if self._cache is None or self._cache_key != key:
            self._cache = None  # free the old tables before building new ones
            # Plain tensors even when called under inference_mode, so a later no_grad caller works.
            with torch.inference_mode(False), torch.no_grad():
                emb = embeddings.float()
                positive = self.positive_tables(emb)
                cache: dict[str, torch.Tensor | None] = {"positive": positive}
                if not self.negative or self._negative_fits_cache():
                    every_class = torch.arange(self.num_classes + 1, device=emb.device)
                    negative = self.negative_features(emb, every_class) if self.negative else None
                    cache["tables"] = torch.stack(
                        [self.fusion_table(positive, negative, layer) for layer in range(self.depth)]
                    )
            self._cache, self._cache_key = cache, key
        return self._cache

    def clear_cache(self) -> None:
        self._cache, self._cache_key = None, None

    def train(self, mode: bool = True) -> KnowledgeAdapter:
        self.clear_cache()  # weights are about to change; also frees the memory
        return super().train(mode)

    # ---- fusion --------------------------------------------------------------------------------

    def forward(
        self, tokens: torch.Tensor, labels: torch.Tensor, embeddings: torch.Tensor
    ) -> Callable[[int], torch.Tensor] | None:
        """Return ``inject(layer) -> (B, L + 1, dim)``, the signal added before block ``layer``."""
        if not self.positive and not self.negative:
            return None
        batch = tokens.shape[0]
        # The graph computations run in float32 even under bf16 autocast: torch.sparse has no
        # bf16 kernels everywhere, and these tables are tiny next to the transformer.
        with torch.autocast(tokens.device.type, enabled=False):
            cached = self._cached(embeddings) if (self.use_cache and not self.training) else None
            if cached is not None and "tables" in cached:
                tables = cached["tables"]
                index = self._fusion_index(tokens, labels)  # groups = classes: every class is there

                def table_at(layer: int) -> torch.Tensor:
                    return tables[layer]
            else:
                emb = embeddings.float()
                positive = cached["positive"] if cached is not None else self.positive_tables(emb)
                negative, groups = None, None
                if self.negative:  # only the classes in this batch
                    classes, groups = torch.unique(labels, return_inverse=True)
                    negative = self.negative_features(emb, classes)
                index = self._fusion_index(tokens, groups)

                def table_at(layer: int) -> torch.Tensor:  # built per layer: one layer's memory
                    return self.fusion_table(positive, negative, layer)

        def inject(layer: int) -> torch.Tensor:
            with torch.autocast(tokens.device.type, enabled=False):
                signal = F.embedding_bag(index, table_at(layer), mode="sum")
            return signal.view(batch, self.seq_len + 1, -1)

        return inject
