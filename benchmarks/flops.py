"""FLOPs of the work that actually ran, counted by ``torch.utils.flop_counter``, for every benchmark.

torch's counter has formulas for the CUDA attention kernels but none for the CPU's fused one
(``aten._scaled_dot_product_flash_attention_for_cpu``): a CPU forward's attention counted as zero
FLOPs, which made the sampling forward's rate look 6% lower than it was at 49 tokens and 19% lower
at 196 (the default width). This module registers the CPU kernel (forward and backward) with
torch's own attention formulas, so a rate divides the FLOPs of the kernels that ran by their time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

_aten = torch.ops.aten


def _cpu_attention(query: Any, key: Any, value: Any, *_: Any, out_shape: Any = None, **__: Any) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_attention_backward(grad_out: Any, query: Any, key: Any, value: Any, *_: Any, out_shape: Any = None,
                            **__: Any) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


CPU_ATTENTION_FORMULAS = {
    _aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention,
    _aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward,
}


def counted_flops(fn: Callable[[], object]) -> int:
    """The FLOPs of one call of ``fn`` (matmuls, convolutions, attention on any device), run once to
    count. 1 multiply-add = 2 FLOPs."""
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FORMULAS) as counter:
        fn()
    return counter.get_total_flops()
