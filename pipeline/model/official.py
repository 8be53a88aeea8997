"""The published KA-MIG graph layer, exactly (``fusion.adapter: official``).

Written from the project's spec of the official code ("spec §2.x" is ``pretrained-generators.md``,
which reads GuotaoLiang/KA-MIG ``libs/graph_layer.py`` and ``libs/nat_model_graph.py``). Module
and parameter names are the published ones under ``graph_layer.`` (spec §2.2, torch_geometric 2.x
``GCNConv`` naming), so the released ``graph_nnet_ema.pth`` loads by renaming that prefix to
``adapter.``. Before injection point ``i`` (spec §2.3)::

    x <- x + w * (re_i + co_i - pos_i)          (w = fusion.weight: 1, or 0 for the control)

* ``G_g`` (g = co-occurrence, similarity) is a 3-layer GCN over graph g whose node features are the
  first V rows E of the token table: ``h_k = relu(conv_k(h_{k-1}))`` with torch_geometric's
  ``GCNConv`` arithmetic (:func:`gcn_operator`), and ``G_g`` is the mean of ``h_1 .. h_3``. Each
  graph has its own GCN (``co_graph_layer``, ``re_graph_layer``).
* ``co_i = zero_convs[i](G_co[t])`` and ``re_i = zero_convs[i](G_re[t])``, one 1x1 convolution with
  bias per point, **shared** by the two graphs, at the token t of each position; both terms are
  zero at masked positions and at the class slot.
* ``pos_i = zero_convs_pos[i](M[c] @ pos_neg_codebook_graph_layer.conv1(E))``: the class c's
  (positions x codes) incompatibility matrix times the projected token table (bias included, so the
  bias is scaled by each row's sum), then its own 1x1 convolution per point, at every image position
  (zero at the class slot). The null class has a zero matrix: its term is ``zero_convs_pos[i]``'s
  bias alone.
* Both ``zero_convs`` lists start at zero (``zero_module``), so a fresh adapter adds exactly nothing.

Everything is linear after the GCNs, so per point the positive term is one (V + 1, dim) table
gathered at the tokens (the mask row is zero), and the negative term a (classes, L + 1, dim) table
gathered at the labels: :meth:`OfficialAdapter.precompute` builds them once for sampling.

The incompatibility matrix is held as :class:`RowConstantMatrix`: each (class, position) row is a
constant ``scale`` on every code outside a short list of exceptions (the compatible codes, where it
is 0). Its product with a (V, dim) table is ``scale * (sum of all rows - sum of the listed rows)``,
equal to the dense product up to float rounding, without the dense (C + 1) x L x V tensor (ImageNet:
1001 x 256 x 1024 floats = 1 GiB).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import FusionConfig
from pipeline.model.adapter import Adapter, Inject
from pipeline.model.ragged import listed_row_sums

# The published attribute names of the two GCN branches (spec §2.2), per graph of fusion.graphs.
GCN_BRANCHES = {"cooccurrence": "co_graph_layer", "similarity": "re_graph_layer"}


# --------------------------------------------------------------------------------------------
# Graph data
# --------------------------------------------------------------------------------------------


@dataclass
class RowConstantMatrix:
    """A (rows, V) matrix whose row r is ``scale[r]`` on every code except ``exceptions(r)`` (0 there).

    ``ptr`` (rows + 1,) and ``tokens`` are the exceptions in CSR form. Rows are ``c * L + i`` for
    classes c in [0, C] (the null class last) and positions i.
    """

    scale: torch.Tensor  # (rows,) float32
    ptr: torch.Tensor  # (rows + 1,) int64
    tokens: torch.Tensor  # (nnz,) int16 or int32

    @classmethod
    def from_dense(cls, dense: torch.Tensor) -> RowConstantMatrix:
        """From a dense (rows, V) matrix whose non-zero entries in each row are all equal.

        Raises ``ValueError`` otherwise (the released file is row-normalised 0/1, spec §2.2).
        """
        dense = dense.to(torch.float32)
        scale = dense.max(dim=1).values
        zero = dense == 0
        if not torch.all(zero | (dense == scale[:, None])):
            raise ValueError("each row's non-zero entries must be equal (a row-normalised 0/1 matrix)")
        counts = zero.sum(dim=1)
        ptr = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])
        tokens = zero.nonzero()[:, 1]  # row-major: sorted by (row, token)
        token_dtype = torch.int16 if dense.shape[1] <= torch.iinfo(torch.int16).max else torch.int32
        return cls(torch.where(counts < dense.shape[1], scale, 0.0), ptr, tokens.to(token_dtype))

    def to_dense(self, codes: int) -> torch.Tensor:
        dense = self.scale[:, None].repeat(1, codes)
        rows = torch.repeat_interleave(torch.arange(len(self.scale)), self.ptr[1:] - self.ptr[:-1])
        dense[rows, self.tokens.long()] = 0.0
        return dense

    def times(self, table: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """(len(rows), dim): rows ``rows`` of this matrix times ``table`` (V, dim)."""
        listed_sum, _ = listed_row_sums(self.ptr, self.tokens, rows, table)
        return self.scale[rows, None] * (table.sum(0) - listed_sum)


@dataclass
class OfficialGraphs:
    """The official adapter's graph inputs, as its buffers will hold them (CPU tensors).

    ``edges[g] = (edge_index (2, E) int64, weight (E,) float32)`` as the official files store them,
    before ``GCNConv``'s normalisation: messages flow from ``edge_index[0]`` to ``edge_index[1]``.
    ``incompatibility`` has (C + 1) * L rows, the null class's zero.
    """

    codebook_size: int
    num_classes: int
    seq_len: int
    edges: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    incompatibility: RowConstantMatrix | None = None

    @classmethod
    def from_compatible_sets(
        cls, codebook_size: int, num_classes: int, seq_len: int,
        edges: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
        compatible_ptr: np.ndarray | None, compatible_tokens: np.ndarray | None,
    ) -> OfficialGraphs:
        """From mined graphs: ``(src, dst, weight)`` edges and the compatible sets per (class,
        position) (:func:`pipeline.graphs.storage.compatible_sets`). The incompatibility matrix
        is row-normalised over the incompatible codes; the null class's rows are zero."""
        graphs = cls(codebook_size, num_classes, seq_len)
        for name, (src, dst, weight) in edges.items():
            index = torch.from_numpy(np.stack([src, dst]).astype(np.int64))
            graphs.edges[name] = (index, torch.from_numpy(np.asarray(weight, dtype=np.float32)))
        if compatible_ptr is not None and compatible_tokens is not None:
            ptr = torch.from_numpy(compatible_ptr.astype(np.int64))
            incompatible = (codebook_size - (ptr[1:] - ptr[:-1])).to(torch.float64)
            scale = torch.where(incompatible > 0, 1.0 / incompatible.clamp_min(1.0), 0.0)
            scale[num_classes * seq_len:] = 0.0  # the null class: a zero matrix (spec §2.3)
            graphs.incompatibility = RowConstantMatrix(scale.to(torch.float32), ptr,
                                                       torch.from_numpy(compatible_tokens))
        return graphs

    @classmethod
    def from_state(cls, codebook_size: int, num_classes: int, seq_len: int,
                   state: dict[str, torch.Tensor], prefix: str) -> OfficialGraphs:
        """The graphs saved as an adapter's buffers (``prefix`` = ``"adapter."``)."""
        graphs = cls(codebook_size, num_classes, seq_len)
        for name in GCN_BRANCHES:
            if f"{prefix}{name}_edge_index" in state:
                index, weight = (state[f"{prefix}{name}_edge_{part}"] for part in ("index", "weight"))
                graphs.edges[name] = (index, weight)
        if f"{prefix}incompatibility_scale" in state:
            graphs.incompatibility = RowConstantMatrix(*(state[f"{prefix}incompatibility_{part}"]
                                                         for part in ("scale", "ptr", "tokens")))
        return graphs


def gcn_operator(
    edge_index: torch.Tensor, weight: torch.Tensor, num_nodes: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """torch_geometric's ``GCNConv`` propagation as a (V, V) matrix A, ``conv(x) = A @ (x W^T) + b``,
    in CSR form ``(crow, col, values)``.

    Spec §2.3, step by step (``add_remaining_self_loops``, ``gcn_norm``, source -> target flow):

    1. every node without an (n, n) edge gets one of weight 1; existing self-loop weights are kept
       (one loop per node: a repeated loop keeps its last weight, as torch_geometric's index assignment);
    2. ``deg[n]`` is the weighted in-degree: the sum of the weights of the edges into n;
    3. ``norm_e = deg[src]^-1/2 * w_e * deg[dst]^-1/2`` (a zero degree contributes 0);
    4. node ``dst`` sums ``norm_e`` times the features of ``src``: ``A[dst, src] += norm_e``.
    """
    src, dst = edge_index[0].long(), edge_index[1].long()
    weight = weight.to(torch.float32)
    # Step 1 as torch_geometric does it: the self-loops leave the list, and every node gets one back,
    # weighing what its own loop weighed (the last one, if a file repeats it) or 1.
    loop = src == dst
    loop_weight = torch.ones(num_nodes)
    loop_weight[src[loop]] = weight[loop]
    nodes = torch.arange(num_nodes)
    src, dst = torch.cat([src[~loop], nodes]), torch.cat([dst[~loop], nodes])
    weight = torch.cat([weight[~loop], loop_weight])
    degree = torch.zeros(num_nodes).index_add_(0, dst, weight)
    inv_sqrt = degree.pow(-0.5).masked_fill(degree == 0, 0.0)
    norm = inv_sqrt[src] * weight * inv_sqrt[dst]
    matrix = torch.sparse_coo_tensor(torch.stack([dst, src]), norm, (num_nodes, num_nodes),
                                     check_invariants=True).coalesce()
    rows, col = matrix.indices()
    crow = torch.zeros(num_nodes + 1, dtype=torch.int64)
    torch.cumsum(torch.bincount(rows, minlength=num_nodes), 0, out=crow[1:])
    return crow, col.clone(), matrix.values()


# --------------------------------------------------------------------------------------------
# The layer
# --------------------------------------------------------------------------------------------


class GCNConv(nn.Module):
    """One ``GCNConv``: ``A @ lin(x) + bias``, ``lin`` without bias (torch_geometric 2.x names)."""

    def __init__(self, dim: int, generator: torch.Generator | None):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(dim))
        self.lin = nn.Linear(dim, dim, bias=False)
        nn.init.xavier_uniform_(self.lin.weight, generator=generator)  # torch_geometric's glorot

    def forward(self, adjacency: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.sparse.mm(adjacency, self.lin(x)) + self.bias


class GraphBranch(nn.Module):
    """``conv1 .. convK`` with ReLU after each; the output is the mean of the K layer outputs."""

    def __init__(self, dim: int, layers: int, generator: torch.Generator | None):
        super().__init__()
        for k in range(1, layers + 1):
            self.add_module(f"conv{k}", GCNConv(dim, generator))

    def forward(self, adjacency: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        outputs = []
        for conv in self.children():
            x = F.relu(conv(adjacency, x))
            outputs.append(x)
        return torch.stack(outputs).mean(dim=0)


class CodebookProjection(nn.Module):
    """``pos_neg_codebook_graph_layer``: its ``conv1`` is a 1x1 convolution with bias over the table."""

    def __init__(self, dim: int, generator: torch.Generator | None):
        super().__init__()
        self.conv1 = _conv1x1(dim)
        bound = 1.0 / dim**0.5  # torch's Conv1d default (kaiming-uniform a=sqrt(5), and its bias)
        nn.init.uniform_(self.conv1.weight, -bound, bound, generator=generator)
        nn.init.uniform_(self.conv1.bias, -bound, bound, generator=generator)

    def forward(self, table: torch.Tensor) -> torch.Tensor:
        return pointwise(self.conv1, table)


def _conv1x1(dim: int) -> nn.Conv1d:
    """A 1x1 Conv1d, the published module (weight (dim, dim, 1)): a per-token linear map."""
    return nn.Conv1d(dim, dim, kernel_size=1)


def _zero_convs(dim: int, points: int) -> nn.ModuleList:
    convs = nn.ModuleList(_conv1x1(dim) for _ in range(points))
    for conv in convs:
        nn.init.zeros_(conv.weight)
        nn.init.zeros_(conv.bias)
    return convs


def pointwise(conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution over channels applied to (..., dim) rows: ``x W^T + b``."""
    return F.linear(x, conv.weight[..., 0], conv.bias)


class OfficialAdapter(Adapter):
    """The published ``graph_layer`` of ``UViTGraphAdapter``, for any backbone (spec §2.2-2.3)."""

    def __init__(
        self,
        dim: int,
        points: int,
        graphs: OfficialGraphs,
        fusion: FusionConfig,
        generator: torch.Generator | None = None,
        precompute_bytes: int = 1 << 30,
    ):
        super().__init__()
        self.fusion = fusion
        self.codebook_size = graphs.codebook_size
        self.mask_id = graphs.codebook_size
        self.num_classes = graphs.num_classes
        self.seq_len = graphs.seq_len
        self.points = points
        self.precompute_bytes = precompute_bytes  # memory budget of the negative inference tables
        self.positive_tables: torch.Tensor | None = None  # (points, V + 1, dim) after precompute()
        self.negative_tables: torch.Tensor | None = None  # (points, C + 1, L + 1, dim), if it fits

        self.positive = [g for g in GCN_BRANCHES if g in fusion.graphs]
        self.negative = "incompatibility" in fusion.graphs
        # Declaration order = the published key order (spec §2.2): co, re, pos_neg, zero_convs, _pos.
        for name in self.positive:
            if name not in graphs.edges:
                raise ValueError(f"graph '{name}' is enabled but its edges were not loaded")
            edge_index, weight = graphs.edges[name]
            self.register_buffer(f"{name}_edge_index", edge_index.to(torch.int64))
            self.register_buffer(f"{name}_edge_weight", weight.to(torch.float32))
            # GCNConv's normalised operator: derived from the edges, so not saved. Dense parts, not
            # a sparse tensor: the EMA copy (deepcopy) cannot copy a sparse CSR buffer.
            operator = gcn_operator(edge_index, weight, self.codebook_size)
            for part, value in zip(("crow", "col", "values"), operator, strict=True):
                self.register_buffer(f"{name}_operator_{part}", value, persistent=False)
            setattr(self, GCN_BRANCHES[name], GraphBranch(dim, fusion.gcn_layers, generator))
        if self.negative:
            if graphs.incompatibility is None:
                raise ValueError("the incompatibility graph is enabled but was not loaded")
            expected = (graphs.num_classes + 1) * graphs.seq_len
            if len(graphs.incompatibility.scale) != expected:
                raise ValueError(f"the incompatibility matrix has {len(graphs.incompatibility.scale)} "
                                 f"rows, expected (classes + 1) x positions = {expected}")
            for part in ("scale", "ptr", "tokens"):
                self.register_buffer(f"incompatibility_{part}", getattr(graphs.incompatibility, part))
            self.pos_neg_codebook_graph_layer = CodebookProjection(dim, generator)
        if self.positive:
            self.zero_convs = _zero_convs(dim, points)
        if self.negative:
            self.zero_convs_pos = _zero_convs(dim, points)

    def config_dict(self) -> dict[str, Any]:
        return self.fusion.to_dict()

    @property
    def incompatibility(self) -> RowConstantMatrix:
        parts = ("scale", "ptr", "tokens")
        return RowConstantMatrix(*(getattr(self, f"incompatibility_{part}") for part in parts))

    # ---- the graph features -------------------------------------------------------------------

    def operator(self, name: str) -> torch.Tensor:
        """Graph ``name``'s ``GCNConv`` operator as a sparse CSR matrix."""
        crow, col, values = (getattr(self, f"{name}_operator_{part}") for part in ("crow", "col", "values"))
        size = (self.codebook_size, self.codebook_size)
        with warnings.catch_warnings():  # "sparse CSR support is in beta": matmul is all we use
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(crow, col, values, size, check_invariants=False)

    def graph_features(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(V, dim): the sum over the enabled graphs of the GCN branch outputs ``G_g``."""
        features = [getattr(self, GCN_BRANCHES[name])(self.operator(name), embeddings)
                    for name in self.positive]
        return torch.stack(features).sum(dim=0)

    def positive_table(self, features: torch.Tensor, point: int) -> torch.Tensor:
        """(V + 1, dim): ``co_i + re_i`` at each token, the mask row zero.

        ``zero_convs[i]`` is applied to each graph's features separately, so its bias counts once
        per enabled graph; by linearity that is one map of the summed features.
        """
        conv = self.zero_convs[point]
        table = features @ conv.weight[..., 0].T + len(self.positive) * conv.bias
        return F.pad(table, (0, 0, 0, 1))  # masked positions and the class slot read zero

    def class_features(self, embeddings: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """(U, L, dim): ``M[c] @ conv1(E)`` for the classes c in ``classes``."""
        projected = self.pos_neg_codebook_graph_layer(embeddings)
        positions = torch.arange(self.seq_len, device=classes.device)
        rows = (classes[:, None] * self.seq_len + positions).reshape(-1)
        return self.incompatibility.times(projected, rows).view(len(classes), self.seq_len, -1)

    def negative_table(self, class_features: torch.Tensor, point: int) -> torch.Tensor:
        """(U, L + 1, dim): ``pos_i`` at every image position, zero at the class slot."""
        return F.pad(pointwise(self.zero_convs_pos[point], class_features), (0, 0, 1, 0))

    # ---- inference tables ---------------------------------------------------------------------

    @torch.no_grad()
    def precompute(self, embeddings: torch.Tensor) -> bool:
        """Build the per-point tables from the final weights; ``train()`` drops them.

        The negative tables cover every class only when they fit ``precompute_bytes`` (ImageNet:
        25 x 1001 x 257 x 768 floats do not); otherwise ``forward`` computes the batch's classes.
        """
        self.release_precomputed()
        with torch.inference_mode(False):
            emb = embeddings.float()
            if self.positive:
                features = self.graph_features(emb)
                tables = [self.positive_table(features, i) for i in range(self.points)]
                self.positive_tables = torch.stack(tables)
            dim = emb.shape[1]
            size = self.points * (self.num_classes + 1) * (self.seq_len + 1) * dim * 4
            if self.negative and size <= self.precompute_bytes:
                every = self.class_features(emb, torch.arange(self.num_classes + 1, device=emb.device))
                tables = [self.negative_table(every, i) for i in range(self.points)]
                self.negative_tables = torch.stack(tables)
        return self.positive_tables is not None or self.negative_tables is not None

    def release_precomputed(self) -> None:
        self.positive_tables = self.negative_tables = None

    def train(self, mode: bool = True) -> OfficialAdapter:
        self.release_precomputed()  # the weights are about to change
        return super().train(mode)

    # ---- fusion -------------------------------------------------------------------------------

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor, embeddings: torch.Tensor) -> Inject | None:
        if not self.positive and not self.negative:
            return None
        slots = F.pad(tokens, (1, 0), value=self.mask_id)  # (B, L + 1): the class slot reads zero
        weight = self.fusion.weight
        # float32 even under bf16 autocast: torch.sparse lacks bf16 kernels on some devices.
        with torch.autocast(tokens.device.type, enabled=False):
            emb = embeddings.float()
            features = None
            if self.positive and (self.positive_tables is None or self.training):
                features = self.graph_features(emb)
            groups, class_features = labels, None
            if self.negative and (self.negative_tables is None or self.training):
                classes, groups = torch.unique(labels, return_inverse=True)
                class_features = self.class_features(emb, classes)

        def inject(point: int) -> torch.Tensor:
            with torch.autocast(tokens.device.type, enabled=False):
                signal = torch.zeros((), device=tokens.device)
                if self.positive:
                    table = self.positive_table(features, point) if features is not None \
                        else self.positive_tables[point]
                    signal = F.embedding(slots, table)
                if self.negative:
                    table = self.negative_table(class_features, point) if class_features is not None \
                        else self.negative_tables[point]
                    signal = signal - table[groups]
                return weight * signal

        return inject
