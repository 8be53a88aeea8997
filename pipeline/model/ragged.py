"""Sums of table rows over ragged (CSR) lists of ids: the compatible tokens of each (class, position).

Both adapters compute their negative term from a sum over *most* of the vocabulary (the tokens
incompatible at (c, i)) as the sum over all tokens minus the sum over the short compatible list, so
they share this gather. It imports nothing from the graph code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def listed_row_sums(
    ptr: torch.Tensor, members: torch.Tensor, rows: torch.Tensor, table: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sums (len(rows), dim), counts (len(rows),))``: for each row r in ``rows``, the sum of
    ``table[members[ptr[r]:ptr[r + 1]]]`` and the length of that list, in one EmbeddingBag."""
    start = ptr[rows]
    count = ptr[rows + 1] - start
    offsets = torch.cumsum(count, 0) - count
    # Ragged gather: entry j of row r is members[start[r] + j].
    within = torch.arange(int(count.sum()), device=rows.device) - torch.repeat_interleave(offsets, count)
    flat = within + torch.repeat_interleave(start, count)
    ids = members[flat].to(torch.int64)
    return F.embedding_bag(ids, table, offsets, mode="sum"), count
