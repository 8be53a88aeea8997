"""Benchmark: the cost of the KA-MIG adapter, side by side with the MaskGIT baseline, in one run.

Prints
1. parameter counts: backbone, adapter, and the graph buffers;
2. training throughput (tokens/s) of base against KA-MIG - with everything trainable (the same
   work as the base) and with the frozen backbone used by ``finetune`` - as overhead ratios
   (goal: KA-MIG at most 1.25x the base step time);
3. the sampling forward pass (eval mode, a CFG-sized batch) of the base, KA-MIG with its
   precomputed inference tables and KA-MIG without them (goal: cached within 1.05x of base);
4. with ``--budget``: the projected wall time of train_base + finetune@control + finetune@kamig
   for the given steps, from the measured step times.

Data are synthetic (random tokens and graphs of realistic density): only speed is measured.
Timings alternate base and KA-MIG over several rounds and report medians, because a shared CPU
is noisy. ``--imagenet`` runs the paper-sized model (dim 768, depth 24, 256 tokens, V 1024, 1000
classes; bf16 autocast on CUDA) and reports tokens/s and peak memory; on a CPU it runs only a
couple of tiny-batch steps to prove the shapes work.

    python -m benchmarks.model                       # Fashion-MNIST defaults (dim 128, depth 4, batch 64)
    python -m benchmarks.model --budget --base-steps 1500 --kamig-steps 300
    python -m benchmarks.model --imagenet            # on a GPU machine
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pipeline.config import FusionConfig, ModelConfig
from pipeline.ema import EMA
from pipeline.model.generators import build_generator
from pipeline.model.knowledge import KnowledgeGraphs, csr_from_coo
from pipeline.model.transformer import GeneratorSpec, MaskGIT
from pipeline.training.batches import mask_batch


@dataclass
class Shape:
    codebook_size: int
    num_classes: int
    seq_len: int
    dim: int
    depth: int
    heads: int
    batch: int
    eval_batch: int
    dropout: float = 0.0


# The proposed Fashion-MNIST defaults; eval_batch 1000 = sample.batch_size 500, conditional + null.
FASHION = Shape(codebook_size=512, num_classes=10, seq_len=49, dim=128, depth=4, heads=4, batch=64,
                eval_batch=1000, dropout=0.0)
IMAGENET = Shape(codebook_size=1024, num_classes=1000, seq_len=256, dim=768, depth=24, heads=16, batch=64,
                 eval_batch=64, dropout=0.1)


# --------------------------------------------------------------------------------------------
# Synthetic graphs with the density of real ones
# --------------------------------------------------------------------------------------------


def _normalised_edges(src: torch.Tensor, dst: torch.Tensor, size: int) -> tuple[torch.Tensor, ...]:
    loops = torch.arange(size)
    src, dst = torch.cat([src, dst, loops]), torch.cat([dst, src, loops])  # symmetric, self-loops
    adjacency = torch.sparse_coo_tensor(torch.stack([src, dst]), torch.ones(len(src)), (size, size),
                                        check_invariants=True).coalesce()
    index, weight = adjacency.indices(), (adjacency.values() > 0).float()
    degree = torch.zeros(size).index_add_(0, index[0], weight)
    weight = weight / torch.sqrt(degree[index[0]] * degree[index[1]])
    return csr_from_coo(index, weight, size)


def synthetic_graphs(shape: Shape, compatible_fraction: float = 0.4, seed: int = 0) -> KnowledgeGraphs:
    """Co-occurrence: ~5% neighbours per token; similarity: k=2; compatible set: a fraction per (c, i)."""
    g = torch.Generator().manual_seed(seed)
    v, c, length = shape.codebook_size, shape.num_classes, shape.seq_len
    graphs = KnowledgeGraphs(v, c, length)
    k_co = max(1, int(0.05 * v))
    graphs.edges["cooccurrence"] = _normalised_edges(
        torch.arange(v).repeat_interleave(k_co), torch.randint(0, v, (v * k_co,), generator=g), v)
    graphs.edges["similarity"] = _normalised_edges(
        torch.arange(v).repeat_interleave(2), torch.randint(0, v, (v * 2,), generator=g), v)
    rows = (c + 1) * length
    per_row = min(int(compatible_fraction * v), v // 2)
    # Each row's compatible tokens: distinct tokens (every other one from a random start); cheap
    # enough for ImageNet's 256k rows, and their order does not matter to the model.
    start = torch.randint(0, v, (rows, 1), generator=g, dtype=torch.int32)
    tokens = (start + 2 * torch.arange(per_row, dtype=torch.int32)) % v
    graphs.compatible_ptr = torch.arange(rows + 1) * per_row
    graphs.compatible_tokens = tokens.reshape(-1).to(torch.int16 if v < 32768 else torch.int32)
    return graphs


def make_models(shape: Shape) -> tuple[MaskGIT, MaskGIT]:
    model_cfg = ModelConfig(dim=shape.dim, depth=shape.depth, heads=shape.heads, dropout=shape.dropout)
    spec = GeneratorSpec.from_config(model_cfg, shape.codebook_size, shape.num_classes, shape.seq_len)
    torch.manual_seed(0)
    base = MaskGIT(spec)
    kamig = build_generator(spec, FusionConfig(), synthetic_graphs(shape))
    kamig.load_state_dict(base.state_dict(), strict=False)
    with torch.no_grad():  # as after fine-tuning: non-zero projections (same cost either way)
        for p in kamig.adapter.projections.values():
            p.normal_(std=0.01)
    return base, kamig


# --------------------------------------------------------------------------------------------
# Timed pieces
# --------------------------------------------------------------------------------------------


def make_train_step(model: MaskGIT, shape: Shape, device: torch.device, trainable: set[str] | None,
                    amp: bool) -> Callable[[int], None]:
    """One optimiser step as in pipeline.training: mask, forward, masked CE, backward, clip, AdamW, EMA."""
    for name, p in model.named_parameters():
        p.requires_grad_(trainable is None or name in trainable)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([p for _, p in named], lr=1e-4)
    ema = EMA(named, 0.999)
    model.to(device).train()
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, shape.codebook_size, (shape.batch, shape.seq_len), generator=g)
    labels = torch.randint(0, shape.num_classes, (shape.batch,), generator=g)

    def step(i: int) -> None:
        batch = mask_batch(tokens, labels, torch.Generator().manual_seed(i), mask_schedule="cosine",
                           mask_beta=(12.0, 3.0), p_uncond=0.1, mask_id=model.mask_id,
                           null_class=model.null_class).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(batch.inputs, batch.labels)
        loss = F.cross_entropy(logits[batch.mask].float(), batch.targets[batch.mask], label_smoothing=0.1)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in named], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.update(named)

    return step


def make_eval_forward(model: MaskGIT, shape: Shape, device: torch.device, amp: bool,
                      use_cache: bool = True) -> Callable[[int], None]:
    model.to(device).eval()
    if use_cache:
        model.precompute()  # as the sampler does after loading
    else:
        model.release_precomputed()
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, shape.codebook_size, (shape.eval_batch, shape.seq_len), generator=g)
    tokens[torch.rand(tokens.shape, generator=g) < 0.5] = model.mask_id
    # CFG layout: first half conditional on a few classes (sampler batches), second half null.
    half = shape.eval_batch // 2
    labels = torch.cat([torch.arange(half) % min(10, shape.num_classes),
                        torch.full((shape.eval_batch - half,), model.null_class)])
    tokens, labels = tokens.to(device), labels.to(device)

    def forward(_: int) -> None:
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            model(tokens, labels)

    return forward


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_interleaved(fns: dict[str, Callable[[int], None]], device: torch.device, rounds: int,
                     reps: int, warmup: int = 2) -> tuple[dict[str, float], dict[str, float]]:
    """Median (wall, process-CPU) seconds per call of each fn, alternating between them.

    Alternating spreads a shared machine's noise over all contenders. The CPU time is what a
    single-threaded run would take on an idle core: on a contended machine it is the better
    estimate (with several threads it also counts their busy-waiting, so read it with care).
    """
    for fn in fns.values():
        for i in range(warmup):
            fn(i)
    _sync(device)
    wall: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(rounds):
        for name, fn in fns.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            for i in range(reps):
                fn(warmup + r * reps + i)
            _sync(device)
            wall[name].append((time.perf_counter() - start) / reps)
            cpu[name].append((time.process_time() - start_cpu) / reps)
    def median(samples: dict[str, list[float]]) -> dict[str, float]:
        return {name: statistics.median(values) for name, values in samples.items()}

    return median(wall), median(cpu)


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def report_params(base: MaskGIT, kamig: MaskGIT) -> None:
    adapter = kamig.adapter
    backbone = sum(p.numel() for p in base.parameters())
    adapter_params = sum(p.numel() for p in adapter.parameters())
    buffers = adapter.graph_buffer_numel()
    buffer_bytes = sum(b.numel() * b.element_size() for n, b in adapter.named_buffers()
                       if "_transpose_" not in n)
    print("parameters")
    print(f"  backbone        {backbone:>12,}")
    print(f"  adapter         {adapter_params:>12,}  ({adapter_params / backbone:.1%} of the backbone)")
    print(f"  graph buffers   {buffers:>12,}  elements, {buffer_bytes / 2**20:.2f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--imagenet", action="store_true", help="the paper-sized model")
    parser.add_argument("--dim", type=int)
    parser.add_argument("--depth", type=int)
    parser.add_argument("--heads", type=int)
    parser.add_argument("--batch", type=int, help="training batch")
    parser.add_argument("--eval-batch", type=int, help="sampling forward batch (cond + uncond)")
    parser.add_argument("--dropout", type=float, help="model.dropout")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--budget", action="store_true", help="project the three training stages' time")
    parser.add_argument("--base-steps", type=int, default=1500)
    parser.add_argument("--kamig-steps", type=int, default=300)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    shape = IMAGENET if args.imagenet else FASHION
    for name in ("dim", "depth", "heads", "batch", "eval_batch", "dropout"):
        if getattr(args, name) is not None:
            setattr(shape, name, getattr(args, name))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if args.imagenet and device.type == "cpu":  # prove the shapes work; do not wait for hours
        shape.batch, shape.eval_batch, args.rounds, args.reps = 2, 4, 1, 1
        print("CPU: a shape check only. At batch 2 the per-step adapter work (GCN, table projections,")
        print("optimiser on 47M adapter parameters) dominates, so the ratios below mean nothing for")
        print("real training; run this on a GPU with the default batch 64.")
    print(f"device {device} ({torch.get_num_threads()} CPU threads), bf16 autocast {amp}; "
          f"V={shape.codebook_size} classes={shape.num_classes} L={shape.seq_len} dim={shape.dim} "
          f"depth={shape.depth} heads={shape.heads} dropout={shape.dropout} batch={shape.batch} "
          f"eval_batch={shape.eval_batch}")

    base, kamig = make_models(shape)
    report_params(base, kamig)

    # ---- training -------------------------------------------------------------------------------
    frozen = {n for n, _ in kamig.named_parameters() if n.startswith(("adapter.", "head."))}
    _, kamig_frozen = make_models(shape)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    train, train_cpu = time_interleaved({
        "base": make_train_step(base, shape, device, None, amp),
        "kamig_all": make_train_step(kamig, shape, device, None, amp),
        "kamig_frozen": make_train_step(kamig_frozen, shape, device, frozen, amp),
    }, device, args.rounds, args.reps, warmup=1 if args.imagenet else 2)
    tokens = shape.batch * shape.seq_len
    print(f"training step (batch {shape.batch}, {tokens} tokens)")
    for name, seconds in train.items():
        print(f"  {name:<14}{seconds * 1000:>10.1f} ms/step {tokens / seconds:>12,.0f} tokens/s  "
              f"{seconds / train['base']:.3f}x base   (CPU time {train_cpu[name] * 1000:.1f} ms/step, "
              f"{train_cpu[name] / train_cpu['base']:.3f}x)")
    ratio = train["kamig_all"] / train["base"]
    print(f"  overhead KA-MIG/base (same trainable set): {ratio:.3f}x  (goal <= 1.25x: "
          f"{'ok' if ratio <= 1.25 else 'MISSED'})")
    if device.type == "cuda":
        print(f"  peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    del kamig_frozen

    # ---- sampling forward ---------------------------------------------------------------------
    _, kamig_uncached = make_models(shape)
    forward, forward_cpu = time_interleaved({
        "base": make_eval_forward(base, shape, device, amp),
        "kamig_cached": make_eval_forward(kamig, shape, device, amp, use_cache=True),
        "kamig_uncached": make_eval_forward(kamig_uncached, shape, device, amp, use_cache=False),
    }, device, args.rounds, args.reps)
    print(f"sampling forward (eval, batch {shape.eval_batch} = cond + uncond)")
    for name, seconds in forward.items():
        print(f"  {name:<14}{seconds * 1000:>10.1f} ms  {seconds / forward['base']:.3f}x base   "
              f"(CPU time {forward_cpu[name] * 1000:.1f} ms, {forward_cpu[name] / forward_cpu['base']:.3f}x)")
    ratio = forward["kamig_cached"] / forward["base"]
    print(f"  KA-MIG cached/base: {ratio:.3f}x  (goal <= 1.05x: {'ok' if ratio <= 1.05 else 'MISSED'}); "
          f"uncached/cached: {forward['kamig_uncached'] / forward['kamig_cached']:.3f}x")

    if args.budget:
        for label, times in (("wall", train), ("CPU", train_cpu)):
            base_s = args.base_steps * times["base"]
            fine_s = args.kamig_steps * times["kamig_frozen"]
            print(f"projected training time ({label}): train_base {args.base_steps} steps {base_s:.0f} s + "
                  f"2 x finetune {args.kamig_steps} steps {fine_s:.0f} s = {base_s + 2 * fine_s:.0f} s "
                  "(plus stage start-up, validation and checkpoints)")


if __name__ == "__main__":
    main()
