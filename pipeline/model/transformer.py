"""The MaskGIT backbone: a bidirectional transformer over a token grid, conditioned on a class.

Read top to bottom:

1. :class:`GeneratorSpec` - every number that fixes the architecture (saved in ``config.json``).
2. :class:`Attention`, :class:`MLP`, :class:`Block` - a standard pre-norm transformer block.
3. :class:`Head` - the MaskGIT/BERT output head, tied to the token embeddings by default.
4. :class:`MaskGIT` - embeddings, blocks, head, and the one place where an optional knowledge
   adapter (:mod:`pipeline.model.adapter`) adds its signal: before every block.

Conventions the sampler and the evaluation rely on:

* ``tokens`` is (B, L) with values in [0, codebook_size]; the value ``mask_id == codebook_size``
  marks a masked position. ``labels`` is (B,) in [0, num_classes]; ``null_class == num_classes`` is
  the unconditional class used for classifier-free guidance.
* ``model(tokens, labels)`` returns logits (B, L, codebook_size) for *every* position;
  ``model(tokens, labels, positions)`` only at the grid positions ``positions`` (B, M), the same
  numbers (the sampler asks for its masked ones). The mask token itself is never predicted.
* The class token is prepended, so the transformer sees L + 1 positions.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import ModelConfig
from pipeline.model.adapter import Adapter, AdapterHost, Inject


@dataclass(frozen=True)
class GeneratorSpec:
    """The architecture as saved in ``config.json``: the data shape plus the ``model.*`` params.

    No defaults and no checks of its own: it is built from the validated ``model`` section
    (:meth:`from_config`) or read back from a saved model.
    """

    codebook_size: int
    num_classes: int
    seq_len: int
    dim: int
    depth: int
    heads: int
    mlp_ratio: float
    dropout: float
    tie_head: bool

    @classmethod
    def from_config(
        cls, model: ModelConfig, codebook_size: int, num_classes: int, seq_len: int
    ) -> GeneratorSpec:
        return cls(codebook_size=codebook_size, num_classes=num_classes, seq_len=seq_len, dim=model.dim,
                   depth=model.depth, heads=model.heads, mlp_ratio=model.mlp_ratio, dropout=model.dropout,
                   tie_head=model.tie_head)

    @property
    def injection_points(self) -> int:
        """Blocks that receive a knowledge-adapter signal: every block."""
        return self.depth

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Attention(nn.Module):
    """Multi-head self-attention over all positions (bidirectional: no causal mask)."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        # (B, T, 3*C) -> three tensors of shape (B, heads, T, C/heads)
        q, k, v = self.qkv(x).view(batch, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(batch, length, dim)
        return self.resid_dropout(self.proj(y))


class MLP(nn.Module):
    def __init__(self, dim: int, mlp_ratio: float, dropout: float):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.fc = nn.Linear(dim, hidden)
        self.proj = nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.fc(x)
        # Without autograd (never under no_grad or inference_mode), GELU in place on the fresh
        # hidden activations (the same kernel, the same bits) saves one (tokens, 4 x dim) buffer per
        # block: the CPU sampler, memory-bound between its matmuls, ran 1.09-1.28x faster. With
        # autograd an in-place GELU would only make it copy the input for backward.
        hidden = F.gelu(hidden) if hidden.requires_grad else torch.ops.aten.gelu_(hidden)
        return self.dropout(self.proj(hidden))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_ratio, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Head(nn.Module):
    """MaskGIT/BERT output head: dense -> GELU -> LayerNorm -> dot with the token embeddings + bias.

    Tying the output matrix to the input embeddings (the default) halves the vocabulary
    parameters and is what MaskGIT does; ``tie_head=False`` gives the head its own matrix.
    """

    def __init__(self, dim: int, codebook_size: int, tied: bool):
        super().__init__()
        self.dense = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.bias = nn.Parameter(torch.zeros(codebook_size))
        self.weight = None if tied else nn.Parameter(torch.empty(codebook_size, dim))

    def forward(self, x: torch.Tensor, token_embeddings: torch.Tensor) -> torch.Tensor:
        weight = token_embeddings if self.weight is None else self.weight
        return F.linear(self.norm(F.gelu(self.dense(x))), weight, self.bias)


class MaskGIT(AdapterHost, nn.Module):
    """Class-conditional masked token transformer; optionally carries a knowledge adapter.

    The adapter (:class:`pipeline.model.adapter.Adapter`) is called once per forward with the
    tokens, labels and the token-embedding table (its graph node features), and returns
    ``inject(layer)``, the additive signal before block ``layer``, (B, L + 1, dim). Without an
    adapter this is plain MaskGIT.
    """

    head_prefix = "head."

    def __init__(self, spec: GeneratorSpec, adapter: Adapter | None = None):
        super().__init__()
        self.spec = spec
        self.codebook_size = spec.codebook_size
        self.mask_id = spec.codebook_size  # one extra embedding row for the mask token
        self.num_classes = spec.num_classes
        self.null_class = spec.num_classes  # one extra class row for classifier-free guidance
        self.seq_len = spec.seq_len

        self.tok_emb = nn.Embedding(spec.codebook_size + 1, spec.dim)
        self.cls_emb = nn.Embedding(spec.num_classes + 1, spec.dim)
        self.pos_emb = nn.Parameter(torch.zeros(1, spec.seq_len + 1, spec.dim))  # +1: class token
        self.dropout = nn.Dropout(spec.dropout)
        self.blocks = nn.ModuleList(
            Block(spec.dim, spec.heads, spec.mlp_ratio, spec.dropout) for _ in range(spec.depth)
        )
        self.norm = nn.LayerNorm(spec.dim)
        self.head = Head(spec.dim, spec.codebook_size, tied=spec.tie_head)
        self._init_weights()
        self.adapter = adapter  # assigned after init so the adapter keeps its own initialisation

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
        nn.init.trunc_normal_(self.pos_emb, std=0.02)
        if self.head.weight is not None:
            nn.init.normal_(self.head.weight, std=0.02)
        # GPT-2: scale the projections into the residual stream by depth, so the stream's variance
        # does not grow with the number of blocks.
        for block in self.blocks:
            for proj in (block.attn.proj, block.mlp.proj):
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * self.spec.depth))

    @property
    def injection_points(self) -> int:
        return self.spec.injection_points

    @property
    def token_embeddings(self) -> torch.Tensor:
        """The codebook rows of the embedding table (without the mask row): (V, dim)."""
        return self.tok_emb.weight[: self.codebook_size]


    def forward(
        self, tokens: torch.Tensor, labels: torch.Tensor, positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, L) tokens with ``mask_id`` at masked positions, (B,) labels -> (B, L, V) logits, or
        (B, M, V) at the grid positions ``positions`` (B, M) only."""
        batch, length = tokens.shape
        if length != self.seq_len or labels.shape != (batch,):
            raise ValueError(
                f"expected tokens (B, {self.seq_len}) and labels (B,), got {tuple(tokens.shape)} "
                f"and {tuple(labels.shape)}"
            )
        x = torch.cat([self.cls_emb(labels)[:, None], self.tok_emb(tokens)], dim=1) + self.pos_emb
        x = self.dropout(x)

        inject: Inject | None = None
        if self.adapter is not None:
            inject = self.adapter(tokens, labels, self.token_embeddings)
        for layer, block in enumerate(self.blocks):
            if inject is not None:
                x = x + inject(layer).to(x.dtype)
            x = block(x)

        x = self.norm(self.grid_rows(x, positions))  # the class token has no logits
        return self.head(x, self.token_embeddings)


def count_parameters(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())
