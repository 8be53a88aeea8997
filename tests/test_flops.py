"""The benchmarks' FLOP counts include the CPU's fused attention kernel, which torch's counter
does not know: a rate must divide the FLOPs of the work that ran by its time."""

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.flops import counted_flops


def _explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    scores = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5
    return scores.softmax(-1) @ v


def _torch_count(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def test_cpu_attention_counts_as_its_two_matmuls():
    q, k, v = (torch.randn(3, 4, 50, 32) for _ in range(3))
    fused = counted_flops(lambda: F.scaled_dot_product_attention(q, k, v))
    # The reference: the same attention written as two matmuls, which torch's counter knows.
    assert fused == _torch_count(lambda: _explicit_attention(q, k, v)) == 2 * 2 * 3 * 4 * 50 * 50 * 32


def test_cpu_attention_backward_is_counted_too():
    q, k, v = (torch.randn(2, 2, 20, 16, requires_grad=True) for _ in range(3))
    fused = counted_flops(lambda: F.scaled_dot_product_attention(q, k, v).sum().backward())
    explicit = _torch_count(lambda: _explicit_attention(q, k, v).sum().backward())
    # The fused backward recomputes the scores from q and k: one matmul more than autograd's.
    assert fused == explicit + 2 * 2 * 2 * 20 * 20 * 16
