"""The AutoNAT-L generator: a U-ViT over VQ tokens, ported so its published weights load unchanged.

AutoNAT-L (LeapLabTHU/ImprovedNAT, ``libs/nat_model.py`` class ``UViT``; the file KA-MIG fine-tunes,
byte-identical in GuotaoLiang/KA-MIG) is the backbone of the released KA-MIG model. This module is
written from the project's spec of it ("spec §N" below refers to ``pretrained-generators.md``, the
study of those repositories) and checked against an independent reference forward in
``tests/test_autonat.py``.

Read top to bottom:

1. :class:`UViTSpec` - every number that fixes the architecture (saved in ``config.json`` with
   ``"arch": "uvit"``). ``depth`` counts in-blocks plus out-blocks as the published config does
   (AutoNAT-L: 24 = 12 in + 12 out); the mid block comes on top, so there are ``depth + 1`` blocks.
2. :class:`TokenEmbedding` - word table + learned position table + LayerNorm (eps 1e-6). Used twice:
   for the image tokens (V + 1 rows, mask included) and for the class token (C + 1 rows, null class
   included, a 1-row position table).
3. :class:`Attention`, :class:`Mlp`, :class:`Block` - a pre-norm block; out-blocks first fuse the
   long skip with ``skip_linear(concat([x, skip]))``.
4. :class:`MlmHead` - dense -> GELU -> LayerNorm -> tied token table (all V + 1 rows) + bias.
5. :class:`UViT` - the U-ViT wiring (in-blocks push their outputs, out-blocks pop them: LIFO) and the
   one place where an optional knowledge adapter adds its signal: before each of the ``depth + 1``
   blocks, in KA-MIG's order (spec §2.3).

Module and parameter names are the published ones, so ``state_dict()`` keys equal the keys of
``nnet_ema.pth`` (spec §1.5) and importing it is a strict ``load_state_dict`` without renaming
(``pipeline.model.convert``). An adapter, when present, adds ``adapter.*`` keys.

Published quirks kept on purpose (spec §1.7): two embedding LayerNorms with eps 1e-6 while every
other LayerNorm uses 1e-5; exact (erf) GELU; fused qkv without bias, channel layout [q|k|v] x
[head] x [head_dim]; 8 heads of 96 at width 768; the head reads the token table *detached*, so the
embedding gets no gradient through the output layer; the mask column of the logits is dropped.

Same conventions as :class:`pipeline.model.transformer.MaskGIT`: ``tokens`` (B, L) int64 with
``mask_id == codebook_size`` at masked positions, ``labels`` (B,) with ``null_class ==
num_classes`` for the unconditional (CFG) pass; ``model(tokens, labels)`` returns logits
(B, L, codebook_size) for every grid position, ``model(tokens, labels, positions)`` only at the grid
positions ``positions`` (B, M). (The published forward takes the class as (B, 1); this wrapper adds
that axis itself.)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.model.adapter import Adapter, AdapterHost, Inject

ARCH = "uvit"
# spec §1.4 step 1-2 (nat_model.py l.34): the two embedding LayerNorms. Every other LayerNorm
# (block norms, final norm, MLM head) is torch's default 1e-5 (spec §1.4 step 4, §1.7 item 3).
EMBEDDING_LN_EPS = 1e-6
LN_EPS = 1e-5


@dataclass(frozen=True)
class UViTSpec:
    """The AutoNAT U-ViT architecture; the defaults are AutoNAT-L (spec §1.2) at ImageNet 256."""

    codebook_size: int = 1024
    num_classes: int = 1000
    seq_len: int = 256
    dim: int = 768
    depth: int = 24  # in-blocks + out-blocks (depth // 2 each); plus one mid block
    heads: int = 8
    mlp_ratio: float = 4.0
    # Dropout after the image-token embedding only, in training (spec §1.4 step 1, §1.7 item 9);
    # the class embedding, attention and MLP have none.
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")
        if self.depth < 0 or self.depth % 2:
            raise ValueError(f"depth ({self.depth}) must be even: as many in-blocks as out-blocks")

    @property
    def half_depth(self) -> int:
        """Number of in-blocks (= number of out-blocks)."""
        return self.depth // 2

    @property
    def injection_points(self) -> int:
        """Blocks that receive an adapter signal: in-blocks + mid block + out-blocks (AutoNAT-L: 25)."""
        return self.depth + 1

    def to_dict(self) -> dict[str, Any]:
        return {"arch": ARCH, **asdict(self)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> UViTSpec:
        values = dict(raw)
        arch = values.pop("arch", ARCH)
        if arch != ARCH:
            raise ValueError(f"architecture {arch!r} is not {ARCH!r}")
        return cls(**values)


class TokenEmbedding(nn.Module):
    """``LN_1e-6(word[ids] + position[0 .. n-1])`` (spec §1.4 steps 1-2; nat_model.py ``BertEmbeddings``).

    The attribute names (``word_embeddings``, ``position_embeddings``, ``LayerNorm``) are the
    published state-dict names.
    """

    def __init__(self, vocab_size: int, dim: int, positions: int, dropout: float):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, dim)
        self.position_embeddings = nn.Embedding(positions, dim)
        self.LayerNorm = nn.LayerNorm(dim, eps=EMBEDDING_LN_EPS)
        self.dropout = nn.Dropout(dropout)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        length = ids.shape[1]
        x = self.word_embeddings(ids) + self.position_embeddings.weight[:length]
        return self.dropout(self.LayerNorm(x))


class Attention(nn.Module):
    """Bidirectional multi-head attention; fused qkv without bias, proj with bias (spec §1.4 step 4).

    The 3 * dim qkv outputs are laid out [q | k | v], each head-major: (3, heads, head_dim).
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        # Default scale head_dim ** -0.5, no mask, no dropout (spec §1.4 step 4).
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(batch, length, dim))


class Mlp(nn.Module):
    """fc1 -> exact GELU -> fc2, both with bias (timm 0.3.2 ``Mlp``, spec §1.4 step 4)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm block; with ``skip`` it first replaces x by ``skip_linear(concat([x, skip]))``.

    The skip fusion has no residual around it and comes before ``norm1`` (spec §1.4 step 4,
    nat_model.py l.129-134). Only out-blocks have ``skip_linear`` (spec §1.5).
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float, skip: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.skip_linear = nn.Linear(2 * dim, dim) if skip else None

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if self.skip_linear is not None:
            if skip is None:
                raise ValueError("an out-block needs its skip tensor")
            x = self.skip_linear(torch.cat([x, skip], dim=-1))  # order: [current x, skip]
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class MlmHead(nn.Module):
    """``LN_1e-5(GELU(fc(x))) @ table.T + bias`` with the whole (V + 1)-row token table (spec §1.4 step 7).

    ``bias`` has the published shape (1, 1, V + 1).
    """

    def __init__(self, dim: int, vocab_size: int):
        super().__init__()
        self.fc = nn.Linear(dim, dim)
        self.ln = nn.LayerNorm(dim, eps=LN_EPS)
        self.bias = nn.Parameter(torch.zeros(1, 1, vocab_size))

    def forward(self, x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        return F.linear(self.ln(F.gelu(self.fc(x))), table) + self.bias


class UViT(AdapterHost, nn.Module):
    """AutoNAT's class-conditional U-ViT over a token grid; optionally carries a knowledge adapter.

    The adapter (:class:`pipeline.model.adapter.Adapter`, built for ``injection_points`` points)
    is called once per forward with the tokens, labels and the codebook rows of the token table,
    and its ``inject(i)`` (B, L + 1, dim) is added to x before each block, in KA-MIG's order
    (spec §2.3; KA ``libs/nat_model_graph.py`` l.230-244, which pops per-block lists from the end):

    * before ``in_blocks[j]``: ``inject(depth - j)``  (AutoNAT-L: 24 - j)
    * before ``mid_block``:    ``inject(depth // 2)`` (12)
    * before ``out_blocks[j]``: ``inject(depth // 2 - 1 - j)`` (11 - j), added to x *before* the
      skip fusion; the skips pushed by the in-blocks are their plain outputs.
    """

    head_prefix = "mlm_layer."  # KA-MIG fine-tunes these with the adapter (KA utils.py l.124-145)

    def __init__(self, spec: UViTSpec, adapter: Adapter | None = None):
        super().__init__()
        self.spec = spec
        self.codebook_size = spec.codebook_size
        self.mask_id = spec.codebook_size  # token-table row V is the mask (spec §1.2)
        self.num_classes = spec.num_classes
        self.null_class = spec.num_classes  # class-table row C is the null class (spec §1.3)
        self.seq_len = spec.seq_len
        self.injection_points = spec.injection_points

        # Declaration order = the published state-dict order (spec §1.5).
        self.token_emb = TokenEmbedding(spec.codebook_size + 1, spec.dim, spec.seq_len, spec.dropout)
        self.context_embed = TokenEmbedding(spec.num_classes + 1, spec.dim, 1, dropout=0.0)
        self.in_blocks = nn.ModuleList(
            Block(spec.dim, spec.heads, spec.mlp_ratio) for _ in range(spec.half_depth)
        )
        self.mid_block = Block(spec.dim, spec.heads, spec.mlp_ratio)
        self.out_blocks = nn.ModuleList(
            Block(spec.dim, spec.heads, spec.mlp_ratio, skip=True) for _ in range(spec.half_depth)
        )
        self.norm = nn.LayerNorm(spec.dim, eps=LN_EPS)
        self.mlm_layer = MlmHead(spec.dim, spec.codebook_size + 1)
        self._init_weights()
        self.adapter = adapter  # assigned after init so the adapter keeps its own initialisation

    def _init_weights(self) -> None:
        # The published initialisation (nat_model.py l.37-38, l.61, l.186-195): normal(0.02)
        # embeddings, truncated-normal(0.02) Linear weights with zero biases, LayerNorm (1, 0).
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.zeros_(self.mlm_layer.bias)

    @property
    def token_embeddings(self) -> torch.Tensor:
        """The codebook rows of the token table (without the mask row): (V, dim).

        Not detached: KA-MIG's adapter reads them this way (KA nat_model_graph.py l.226).
        """
        return self.token_emb.word_embeddings.weight[: self.codebook_size]

    def injection_index(self, kind: str, j: int = 0) -> int:
        """The adapter slot added before block ``j`` of ``kind`` ("in", "mid" or "out"), spec §2.3."""
        half = self.spec.half_depth
        if kind == "in":
            return self.spec.depth - j
        if kind == "mid":
            return half
        if kind == "out":
            return half - 1 - j
        raise ValueError(f"unknown block kind {kind!r}")

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
        # Class token prepended at index 0 (spec §1.4 step 3).
        x = torch.cat([self.context_embed(labels[:, None]), self.token_emb(tokens)], dim=1)

        inject: Inject | None = None
        if self.adapter is not None:
            inject = self.adapter(tokens, labels, self.token_embeddings)

        def add(x: torch.Tensor, index: int) -> torch.Tensor:
            return x if inject is None else x + inject(index).to(x.dtype)

        skips = []
        for j, block in enumerate(self.in_blocks):
            x = block(add(x, self.injection_index("in", j)))
            skips.append(x)
        x = self.mid_block(add(x, self.injection_index("mid")))
        for j, block in enumerate(self.out_blocks):
            # LIFO: out_blocks[j] fuses the output of in_blocks[half - 1 - j] (spec §1.4 step 5).
            x = block(add(x, self.injection_index("out", j)), skips.pop())

        # The class slot's logits are dropped (as published), so it skips the norm and the head.
        x = self.norm(self.grid_rows(x, positions))
        # Tied head over all V + 1 rows, read detached as published (nat_model.py l.225).
        logits = self.mlm_layer(x, self.token_emb.word_embeddings.weight.detach())
        return logits[..., : self.codebook_size]  # drop the mask column
