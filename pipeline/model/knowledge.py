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
  when its count summed over all classes is below ``min_count`` (``fusion.null_negative:
  marginal``; ``zero`` gives it no negative term, as the official code does). ``fusion.negative_at``
  applies it at all positions (official code) or at masked ones only (paper text).
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
* At inference everything depends only on the weights, not on the input: :meth:`precompute`
  (called by the sampler once the weights are final) builds the whole per-layer table for every
  class, and ``forward`` then only gathers from it, across decoding steps, batches and the CFG
  pass. ``train()`` drops the table. When it does not fit ``precompute_bytes`` (ImageNet: 1001
  classes x 257 positions x 25 layers) ``forward`` computes the batch's rows instead, which at
  that scale costs well under 1% of the transformer.
* The adjacencies are CSR matrices with their transposes kept alongside, so the GCN's backward
  is one more sparse matmul instead of a transpose-and-sort on every step.
* The graphs are registered buffers, so a saved model is self-contained.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import FusionConfig
from pipeline.graphs.storage import POSITIVE_GRAPHS, KnowledgeGraphData
from pipeline.model.adapter import Adapter, Inject
from pipeline.model.ragged import listed_row_sums

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Graph data
# --------------------------------------------------------------------------------------------


@dataclass
class KnowledgeGraphs:
    """The graph tensors an adapter is built from (CPU tensors, exactly what becomes its buffers).

    ``edges[g]`` is the GCN-normalised adjacency of graph g in CSR form, ``(crow (V + 1,) int64,
    col (E,) int64, weight (E,) float32)``: row ``src`` aggregates from its ``dst`` columns.
    ``compatible_ptr`` / ``compatible_tokens`` are the compatible sets of
    :class:`pipeline.graphs.storage.KnowledgeGraphData`.
    """

    codebook_size: int
    num_classes: int
    seq_len: int
    edges: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    compatible_ptr: torch.Tensor | None = None
    compatible_tokens: torch.Tensor | None = None

    @classmethod
    def from_data(cls, data: KnowledgeGraphData) -> KnowledgeGraphs:
        """From the checked arrays of :func:`pipeline.graphs.storage.load_knowledge_graphs`."""
        graphs = cls(data.codebook_size, data.num_classes, data.seq_len)
        for name, (src, dst, weight) in data.edges.items():
            index = torch.from_numpy(np.stack([src, dst]).astype(np.int64))
            graphs.edges[name] = csr_from_coo(index, torch.from_numpy(weight.astype(np.float32)),
                                              data.codebook_size)
        if data.compatible_ptr is not None:
            graphs.compatible_ptr = torch.from_numpy(data.compatible_ptr)
            graphs.compatible_tokens = torch.from_numpy(data.compatible_tokens)
        return graphs

    @classmethod
    def from_state(
        cls, codebook_size: int, num_classes: int, seq_len: int, state: dict[str, torch.Tensor], prefix: str
    ) -> KnowledgeGraphs:
        """The graphs saved as an adapter's buffers (``prefix`` = ``"adapter."`` in a model's state)."""
        graphs = cls(codebook_size, num_classes, seq_len)
        for name in POSITIVE_GRAPHS:
            if f"{prefix}{name}_crow" in state:
                parts = ("crow", "col", "weight")
                graphs.edges[name] = tuple(state[f"{prefix}{name}_{part}"] for part in parts)
        graphs.compatible_ptr = state.get(f"{prefix}compatible_ptr")
        graphs.compatible_tokens = state.get(f"{prefix}compatible_tokens")
        return graphs


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


class KnowledgeAdapter(Adapter):
    """This pipeline's graph-aware encoder plus per-layer fusion (``fusion.adapter: pipeline``)."""

    def __init__(
        self,
        dim: int,
        depth: int,
        graphs: KnowledgeGraphs,
        fusion: FusionConfig,
        precompute_bytes: int = 1 << 30,
    ):
        super().__init__()
        self.fusion = fusion
        self.codebook_size = graphs.codebook_size
        self.mask_id = graphs.codebook_size
        self.num_classes = graphs.num_classes
        self.seq_len = graphs.seq_len
        self.depth = depth
        # Memory budget of the inference tables built by precompute().
        self.precompute_bytes = precompute_bytes
        self.tables: torch.Tensor | None = None  # (depth, rows, dim) after precompute()

        self.positive = [g for g in POSITIVE_GRAPHS if g in fusion.graphs]
        self.negative = "incompatibility" in fusion.graphs
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
            self.gcn[name] = GCN(dim, fusion.gcn_layers)
            self.projections[name] = nn.Parameter(torch.zeros(depth, dim, dim))
        if self.negative:
            if graphs.compatible_ptr is None or graphs.compatible_tokens is None:
                raise ValueError("the incompatibility graph is enabled but was not loaded")
            self.register_buffer("compatible_ptr", graphs.compatible_ptr.to(torch.int64))
            self.register_buffer("compatible_tokens", graphs.compatible_tokens)
            # W in P[c, i] = mean_t W E_t, starting as the identity (like the GCN weights).
            self.negative_embed = nn.Parameter(torch.eye(dim))
            self.projections["incompatibility"] = nn.Parameter(torch.zeros(depth, dim, dim))


    # ---- graph buffers --------------------------------------------------------------------------

    def graph_buffer_numel(self) -> int:
        """Elements of the graph buffers saved with the model."""
        return sum(b.numel() for name, b in self.named_buffers()
                   if "_transpose_" not in name)

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
        compatible_sum, count = listed_row_sums(self.compatible_ptr, self.compatible_tokens, rows, embeddings)
        incompatible = (self.codebook_size - count).to(embeddings.dtype)[:, None]
        mean = (embeddings.sum(0) - compatible_sum) / incompatible.clamp_min(1.0)
        mean = torch.where(incompatible > 0, mean, torch.zeros_like(mean))  # no incompatible: no term
        return mean.view(len(classes), length, -1)

    def negative_features(self, embeddings: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """(U, L, dim): P[c, i] = mean of W E_t over the incompatible t, for c in ``classes``."""
        features = self.incompatible_mean(embeddings, classes) @ self.negative_embed  # W applied to the mean
        if self.fusion.null_negative == "zero":  # the official code: no negative term without a class
            features = features * (classes != self.num_classes).to(features.dtype)[:, None, None]
        return features

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
        # fusion.weight is stored once, in config.json (the model's ``adapter`` entry).
        return self.fusion.weight * torch.cat(parts)

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
            if self.fusion.negative_at == "masked":
                rows = torch.where(slots == self.mask_id, rows, first)  # class slot: row 0 anyway
            columns.append(rows)
        return torch.stack(columns, dim=-1).reshape(-1, len(columns))

    def _tables_bytes(self) -> int:
        rows = self.codebook_size + 1 + (self.num_classes + 1) * (self.seq_len + 1) * self.negative
        dim = next(iter(self.projections.values())).shape[-1]
        return self.depth * rows * dim * 4

    # ---- inference tables ----------------------------------------------------------------------

    @torch.no_grad()
    def precompute(self, embeddings: torch.Tensor) -> bool:
        """Build the per-layer fusion tables for every class from the current weights.

        Call it once the weights are final (the sampler does, after loading); ``train()`` drops
        the tables. Returns False, building nothing, when they exceed ``precompute_bytes``: then
        ``forward`` keeps computing the batch's rows. Plain tensors even under inference_mode, so
        a later no_grad caller can use them.
        """
        self.tables = None  # free the old tables before building new ones
        if (not self.positive and not self.negative) or self._tables_bytes() > self.precompute_bytes:
            return False
        with torch.inference_mode(False):
            emb = embeddings.float()
            positive = self.positive_tables(emb)
            every_class = torch.arange(self.num_classes + 1, device=emb.device)
            negative = self.negative_features(emb, every_class) if self.negative else None
            self.tables = torch.stack([self.fusion_table(positive, negative, layer)
                                       for layer in range(self.depth)])
        return True

    def release_precomputed(self) -> None:
        self.tables = None

    def config_dict(self) -> dict[str, Any]:
        # Without the `adapter` key, as written before the official mode existed: a model of this
        # design keeps its bytes, and an entry without the key loads as this design.
        config = self.fusion.to_dict()
        del config["adapter"]
        return config

    def train(self, mode: bool = True) -> KnowledgeAdapter:
        self.tables = None  # the weights are about to change; also frees the memory
        return super().train(mode)

    # ---- fusion --------------------------------------------------------------------------------

    def forward(
        self, tokens: torch.Tensor, labels: torch.Tensor, embeddings: torch.Tensor
    ) -> Inject | None:
        """Return ``inject(layer) -> (B, L + 1, dim)``, the signal added before block ``layer``."""
        if not self.positive and not self.negative:
            return None
        batch = tokens.shape[0]
        # The graph computations run in float32 even under bf16 autocast: torch.sparse has no
        # bf16 kernels everywhere, and these tables are tiny next to the transformer.
        with torch.autocast(tokens.device.type, enabled=False):
            if self.tables is not None and not self.training:  # precomputed: every class is there
                tables = self.tables
                index = self._fusion_index(tokens, labels)

                def table_at(layer: int) -> torch.Tensor:
                    return tables[layer]
            else:  # from the current weights, for the classes of this batch only
                emb = embeddings.float()
                positive = self.positive_tables(emb)
                negative, groups = None, None
                if self.negative:
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
