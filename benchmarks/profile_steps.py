"""Benchmark: where the time of one decoding step and one fine-tune step goes, at 49 and 196 tokens.

For each sequence length (7 x 7 and 14 x 14 tokens, the default width), ``torch.profiler`` records
1. one step of the sample stage's decoding: the CFG forward of its batch (500 images, conditional
   + null) through the sampler's CPU row chunks (``model_logits``), then the log-softmax, the
   Gumbel draws, the confidence and the top-k re-masking of ``maskgit_decode``;
2. one fine-tune step of ``finetune@kamig`` (this pipeline's adapter, frozen backbone: adapter +
   head trainable): masking, forward, masked cross-entropy, backward, AdamW, EMA;

and prints each step's self CPU time by kind of work: matmuls, attention, normalisation,
activations, softmax, sampling (random draws, argmax, top-k, gather/scatter), the graph encoder's
sparse and index work, the optimiser, element-wise and copies. The shares are of the same process
and the same step, so they are comparable with each other on a noisy machine; absolute times are
only indicative. Random-init models (speed does not depend on the weights).

    python -m benchmarks.profile_steps
    python -m benchmarks.profile_steps --threads 2 --tokens 49 196 --batch 500
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
from collections import defaultdict
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.model import FASHION, Shape, make_models, make_train_step
from pipeline.config import SampleConfig
from pipeline.sampling import DecodePlan, batch_generator, decode_plan, maskgit_decode
from pipeline.sampling.generate import cpu_chunk_rows, model_logits

# Kinds of work, first match wins (aten operator names, lower case).
KINDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("attention", ("scaled_dot_product", "_flash_attention", "attention")),
    ("matmul", ("addmm", "aten::mm", "bmm", "matmul", "linear", "aten::baddbmm")),
    ("graph (sparse, index)", ("sparse", "index", "embedding", "segment", "_csr", "coo")),
    ("normalisation", ("layer_norm", "native_layer_norm")),
    ("activation", ("gelu", "relu", "silu")),
    ("softmax", ("softmax", "logsumexp")),
    ("sampling (rand, argmax, top-k)", ("rand", "uniform", "argmax", "topk", "gather", "scatter",
                                        "where", "clamp", "aten::log")),
    ("optimiser", ("adam", "_foreach", "lerp", "addcdiv", "addcmul")),
    ("loss", ("cross_entropy", "nll_loss")),
    ("copies, cat, layout", ("copy_", "cat", "contiguous", "clone", "to", "empty", "zero",
                             "fill_", "transpose", "view", "reshape", "permute", "split", "expand")),
    ("element-wise", ("add", "mul", "sub", "div", "neg", "exp", "sqrt", "pow", "lt", "eq", "ne")),
)


def kind_of(name: str) -> str:
    lowered = name.lower()
    for kind, needles in KINDS:
        if any(needle in lowered for needle in needles):
            return kind
    return "other"


def profiled_shares(work: Callable[[], None]) -> tuple[float, dict[str, float]]:
    """(total self CPU ms, {kind: share}) of one call of ``work``, after one warm-up call."""
    work()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        work()
    by_kind: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        if event.key.startswith("aten::") or event.key.startswith("torch_geometric"):
            by_kind[kind_of(event.key)] += event.self_cpu_time_total
    total = sum(by_kind.values())
    return total / 1000, {kind: us / total for kind, us in sorted(by_kind.items(), key=lambda kv: -kv[1])}


def one_decoding_step(model: torch.nn.Module, batch: int) -> Callable[[], None]:
    """The middle step of the stage's 8-step plan, on the stage's batch, in the decoder's and the
    forward's CPU row chunks, as the sample stage runs it (``pipeline.sampling.generate.generate_tokens``)."""
    full = decode_plan(SampleConfig(), model.seq_len)
    middle = full.steps // 2
    # A plan ends with nothing masked, so the one-step plan skips the re-masking top-k; the step
    # below adds the middle step's top-k over as many positions.
    plan = DecodePlan(masked_after=(0,), temperature=(full.temperature[middle],),
                      choice_temperature=(full.choice_temperature[middle],), cfg=(full.cfg[middle],))
    logits_fn = model_logits(model, torch.device("cpu"))
    labels = torch.arange(batch) % 10
    keep = full.masked_after[middle]

    def step() -> None:
        maskgit_decode(logits_fn, labels, seq_len=model.seq_len, mask_id=model.mask_id,
                       null_class=model.null_class, plan=plan, generator=batch_generator(0, 0),
                       chunk_rows=cpu_chunk_rows(model.seq_len, passes=2))
        confidence = torch.rand(batch, model.seq_len)
        confidence.topk(keep, dim=-1, largest=False)

    return step


def one_finetune_step(model: torch.nn.Module, shape: Shape) -> Callable[[], None]:
    """finetune@kamig's step: the adapter and the head trainable, the backbone frozen."""
    trainable = {n for n, _ in model.named_parameters() if n.startswith(("adapter.", model.head_prefix))}
    train_step = make_train_step(model, shape, torch.device("cpu"), trainable, amp=False)
    steps = itertools.count()
    return lambda: train_step(next(steps))


def print_shares(title: str, total_ms: float, shares: dict[str, float]) -> None:
    print(f"\n{title}: {total_ms:,.0f} ms of self CPU time")
    for kind, share in shares.items():
        if share >= 0.005:
            print(f"  {kind:<32} {share:6.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[49, 196])
    parser.add_argument("--batch", type=int, default=SampleConfig().batch_size,
                        help="images per decoding batch")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for tokens in args.tokens:
        shape: Shape = dataclasses.replace(FASHION, seq_len=tokens)
        base, kamig = make_models(shape)
        for name, model in (("base", base), ("KA-MIG", kamig)):
            model.eval().precompute()  # as the sampler does after loading
            total, shares = profiled_shares(one_decoding_step(model, args.batch))
            print_shares(f"{tokens} tokens, {name}: one decoding step of {args.batch} images (CFG)",
                         total, shares)
        total, shares = profiled_shares(one_finetune_step(kamig, shape))
        print_shares(f"{tokens} tokens, KA-MIG: one fine-tune step (batch {shape.batch}, frozen backbone)",
                     total, shares)


if __name__ == "__main__":
    main()
