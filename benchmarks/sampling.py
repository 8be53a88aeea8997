"""Benchmark: MaskGIT sampling and evaluation costs, side by side, in one run.

Prints
1. images/s of ``sample.steps``-step MaskGIT decoding (8 by default) against one-token-per-step
   decoding (``seq_len`` steps) of the same model and batch: the parallel-decoding speedup;
2. KA-MIG against base sampling time (8 steps, CFG, the inference cache on), as a ratio;
3. the sample stage's batch (500) decoded with the whole batch in one forward against the
   sampler's CPU row chunks (``model_logits``), base and KA-MIG, side by side, in float32, with the
   opt-in ``sample.token_draw: inverse_cdf`` and with the opt-in ``sample.mixed_precision: bf16``;
4. the sampling forward's rate (its FLOPs counted by :mod:`benchmarks.flops`, over its time)
   as a fraction of a 1024 x 1024 matmul's rate in the same process and dtype, alternating:
   float32, and the opt-in bf16 (whose FLOPs are the float32 forward's);
5. the time of one FID evaluation of ``--images`` images, split into features (tokenizer decode
   + classifier forward) and statistics (mean/covariance + Fréchet distance), plus precision /
   recall; and the statistics part at Inception's 2048 dims. ``--inception`` also times
   InceptionV3 features (slow on a CPU: a few images/s).

The bf16 contenders (3 and 4) run where bf16 is native (a GPU, or a CPU with AVX512-BF16 or AMX);
a CPU that emulates it samples at about half float32's rate, and the script says it skipped them.

Models: ``models/base`` and ``models/kamig`` (and ``models/tokenizer``, ``models/classifier``)
when they exist; otherwise randomly initialised ones of the default sizes (speed does not depend
on the weights). ``--tokens 196`` times random-init models of the default width at 14 x 14 tokens
(the long-sequence preset, configs/study_196.yaml). Timings alternate the contenders over several
rounds and report medians, since a shared CPU is noisy.

    python -m benchmarks.sampling
    python -m benchmarks.sampling --images 200 --rounds 3
    python -m benchmarks.sampling --tokens 196 --images 200
    python -m benchmarks.sampling --imagenet        # paper-sized model, on a GPU machine
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from benchmarks.flops import counted_flops
from benchmarks.model import FASHION, IMAGENET, make_models, time_interleaved
from pipeline.config import SampleConfig, TokenDraw
from pipeline.config import replace as replace_config
from pipeline.images import quantize
from pipeline.metrics.classifier import ClassifierSpec, DomainClassifier, classify, load_classifier
from pipeline.metrics.fid import GaussianStats, feature_stats, fid_from_stats
from pipeline.metrics.precision_recall import precision_recall
from pipeline.sampling import (
    DecodePlan,
    LogitsFn,
    batch_generator,
    class_balanced_labels,
    decode_plan,
    maskgit_decode,
)
from pipeline.sampling.generate import cpu_has_native_bf16, model_logits

MODELS = Path("models")


def load_models(
    shape, device: torch.device, force_random: bool
) -> tuple[torch.nn.Module, torch.nn.Module, str]:
    if not force_random and (MODELS / "base").is_dir() and (MODELS / "kamig").is_dir():
        from pipeline.model.generators import load_generator

        return load_generator(MODELS / "base", device), load_generator(MODELS / "kamig", device), "trained"
    base, kamig = make_models(shape)
    return base.to(device).eval(), kamig.to(device).eval(), "random-init"


def one_token_per_step(seq_len: int, cfg: float) -> DecodePlan:
    """Reveal one token per step (the autoregressive-like baseline of parallel decoding)."""
    return DecodePlan(
        masked_after=tuple(range(seq_len - 1, -1, -1)),
        temperature=(1.0,) * seq_len,
        choice_temperature=tuple(4.5 * (1 - (t + 1) / seq_len) for t in range(seq_len)),
        cfg=(cfg,) * seq_len,
    )


def decoder(
    model: torch.nn.Module, labels: torch.Tensor, plan: DecodePlan, amp: bool,
    logits_fn: LogitsFn | None = None, token_draw: TokenDraw = "gumbel_max",
) -> Callable[[int], None]:
    """One timed decode of ``labels`` with ``model`` (through ``logits_fn`` when given)."""
    def run(i: int) -> None:
        with torch.autocast(labels.device.type, dtype=torch.bfloat16, enabled=amp):
            maskgit_decode(logits_fn or model, labels, seq_len=model.seq_len, mask_id=model.mask_id,
                           null_class=model.null_class, plan=plan, generator=batch_generator(0, i),
                           token_draw=token_draw)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--imagenet", action="store_true", help="the paper-sized model (random init)")
    parser.add_argument("--random", action="store_true", help="random-init models even if trained ones exist")
    parser.add_argument("--batch", type=int, default=100, help="images decoded per timed call")
    parser.add_argument("--steps", type=int, default=SampleConfig().steps)
    parser.add_argument("--cfg", type=float, default=1.0)
    parser.add_argument("--images", type=int, default=1000, help="images per FID evaluation")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--inception", action="store_true", help="also time InceptionV3 features")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--tokens", type=int, help="sequence length of random-init models (e.g. 196)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp = device.type == "cuda" and torch.cuda.is_bf16_supported()
    bf16 = device.type == "cuda" or cpu_has_native_bf16()
    if not bf16:
        print("no bf16 contenders: this CPU has no native bf16 (AVX512-BF16 or AMX)")
    shape = dataclasses.replace(IMAGENET if args.imagenet else FASHION)
    if args.tokens:
        shape = dataclasses.replace(shape, seq_len=args.tokens)
    base, kamig, origin = load_models(shape, device, args.random or args.imagenet or bool(args.tokens))
    seq_len = base.seq_len
    print(f"device {device} ({torch.get_num_threads()} CPU threads), bf16 {amp}; {origin} models, "
          f"L={seq_len} V={base.codebook_size} classes={base.num_classes}; "
          f"batch {args.batch}, cfg {args.cfg}")
    labels = (torch.arange(args.batch) % base.num_classes).to(device)
    parallel = decode_plan(replace_config(SampleConfig(), steps=args.steps, cfg=args.cfg), seq_len)
    sequential = one_token_per_step(seq_len, args.cfg)

    # ---- 1. parallel decoding speedup ---------------------------------------------------------
    wall, _ = time_interleaved({
        f"{args.steps}-step": decoder(base, labels, parallel, amp),
        f"{seq_len}-step": decoder(base, labels, sequential, amp),
    }, device, rounds=args.rounds, reps=1, warmup=1)
    fast, slow = wall[f"{args.steps}-step"], wall[f"{seq_len}-step"]
    print("\n1. parallel decoding (base model)")
    print(f"  MaskGIT {args.steps:>3} steps    {args.batch / fast:10.1f} images/s")
    print(f"  one token per step ({seq_len:>3}) {args.batch / slow:8.1f} images/s")
    print(f"  speedup                {slow / fast:8.2f}x")

    # ---- 2. KA-MIG against base ---------------------------------------------------------------
    wall, _ = time_interleaved({
        "base": decoder(base, labels, parallel, amp),
        "kamig": decoder(kamig, labels, parallel, amp),
    }, device, rounds=args.rounds, reps=1, warmup=1)
    print(f"\n2. sampling time, {args.steps} steps (KA-MIG with its inference cache)")
    print(f"  base   {wall['base']:8.3f} s/batch  {args.batch / wall['base']:8.1f} images/s")
    print(f"  kamig  {wall['kamig']:8.3f} s/batch  {args.batch / wall['kamig']:8.1f} images/s")
    print(f"  kamig / base  {wall['kamig'] / wall['base']:.3f}x")

    # ---- 3. the sampler's row chunks on a CPU, at the stage's batch ---------------------------
    stage_batch = SampleConfig().batch_size
    stage_labels = (torch.arange(stage_batch) % base.num_classes).to(device)
    contenders = {}
    for name, model in (("base", base), ("kamig", kamig)):
        contenders[f"{name} whole batch"] = decoder(model, stage_labels, parallel, amp)
        chunked = model_logits(model, device)
        contenders[f"{name} row chunks"] = decoder(model, stage_labels, parallel, amp, chunked)
        contenders[f"{name} inverse_cdf"] = decoder(model, stage_labels, parallel, amp, chunked,
                                                    "inverse_cdf")
        if bf16:
            contenders[f"{name} bf16"] = decoder(model, stage_labels, parallel, amp,
                                                 model_logits(model, device, "bf16"))
    wall, _ = time_interleaved(contenders, device, rounds=args.rounds, reps=1, warmup=1)
    print(f"\n3. the sample stage's batch of {stage_batch} (x2 with CFG): one forward of the whole batch "
          "against the sampler's row chunks (model_logits), then the opt-in sample.token_draw: inverse_cdf"
          + (" and bf16" * bf16) + " (other samples)")
    for name in ("base", "kamig"):
        whole, chunks = wall[f"{name} whole batch"], wall[f"{name} row chunks"]
        inverse = wall[f"{name} inverse_cdf"]
        line = (f"  {name:<6} {stage_batch / whole:8.1f} -> {stage_batch / chunks:8.1f} images/s  "
                f"({whole / chunks:.2f}x); inverse_cdf {stage_batch / inverse:8.1f} images/s "
                f"({whole / inverse:.2f}x)")
        if bf16:
            half = wall[f"{name} bf16"]
            line += f"; bf16 {stage_batch / half:8.1f} images/s ({whole / half:.2f}x)"
        print(line)
    print(f"  kamig / base with row chunks  {wall['kamig row chunks'] / wall['base row chunks']:.3f}x")

    # ---- 4. the forward against the matmul rate -----------------------------------------------
    matmul_fraction(args, base, stage_labels, device, bf16)

    # ---- 5. one FID evaluation ----------------------------------------------------------------
    time_evaluation(args, base, labels, parallel, device, amp)


def matmul_fraction(args, model: torch.nn.Module, labels: torch.Tensor, device: torch.device,
                    bf16: bool = True) -> None:
    """The sampler's forward (row chunks, a CFG batch, half the positions masked, logits at those)
    in counted GFLOP/s, against a 1024 x 1024 matmul's in the same dtype, alternating in this
    process: float32, and with ``bf16`` the opt-in bf16 autocast (``sample.mixed_precision: bf16``)
    against a bf16 matmul."""
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, model.codebook_size, (2 * len(labels), model.seq_len), generator=generator)
    tokens[:, ::2] = model.mask_id
    positions = torch.arange(0, model.seq_len, 2).expand(len(tokens), -1)  # the masked ones: logits there
    both = torch.cat([labels, torch.full_like(labels, model.null_class)]).cpu()
    tokens, both, positions = tokens.to(device), both.to(device), positions.to(device)
    model.requires_grad_(False)  # the FLOP counter's module hooks expect no autograd state at inference
    forwards = {"fp32": model_logits(model, device, "no")}
    if bf16:
        forwards["bf16"] = model_logits(model, device, "bf16")
    with torch.no_grad():
        forward_flops = counted_flops(lambda: forwards["fp32"](tokens, both, positions))
    matmul_flops = 2 * 1024**3
    reps = max(1, round(forward_flops / matmul_flops))  # about as much work per timed call
    matrix = torch.randn(1024, 1024, device=device)
    matrices = {"fp32": matrix, "bf16": matrix.bfloat16()}

    def forward(logits_fn: LogitsFn) -> Callable[[int], None]:
        def run(i: int) -> None:
            with torch.no_grad():
                logits_fn(tokens, both, positions)
        return run

    def matmul(a: torch.Tensor) -> Callable[[int], None]:
        return lambda i: [a @ a for _ in range(reps)]

    # name -> (timed call, its FLOPs); bf16 does the float32 forward's work in another dtype
    work = {}
    for dtype in forwards:
        work[f"forward {dtype}"] = (forward(forwards[dtype]), forward_flops)
        work[f"matmul {dtype}"] = (matmul(matrices[dtype]), reps * matmul_flops)
    wall, _ = time_interleaved({name: fn for name, (fn, _) in work.items()}, device,
                               rounds=args.rounds, reps=1, warmup=1)
    rate = {name: flops / wall[name] for name, (_, flops) in work.items()}
    print(f"\n4. the sampling forward ({len(tokens)} sequences of {model.seq_len}, row chunks) against a "
          "1024² matmul of the same dtype, same process")
    for name, (_, flops) in work.items():
        print(f"  {name:<12} {flops / 1e9:7.1f} GFLOP in {wall[name]:.3f} s "
              f"= {rate[name] / 1e9:7.1f} GFLOP/s")
    line = f"  forward / matmul rate: float32 {rate['forward fp32'] / rate['matmul fp32']:.0%}"
    if bf16:
        line += (f", bf16 {rate['forward bf16'] / rate['matmul bf16']:.0%} "
                 f"(bf16 forward / float32 matmul {rate['forward bf16'] / rate['matmul fp32']:.0%})")
    print(line)


def time_evaluation(args, model, labels, plan, device, amp) -> None:
    from pipeline.tokenizer.registry import load_tokenizer

    n = args.images
    tokens = maskgit_decode(model, class_balanced_labels(model.num_classes, -(-n // model.num_classes))[:n]
                            .to(device), seq_len=model.seq_len, mask_id=model.mask_id,
                            null_class=model.null_class, plan=plan, generator=batch_generator(0, 0))
    tokenizer = classifier = None
    if not args.imagenet and (MODELS / "tokenizer").is_dir():
        tokenizer = load_tokenizer(MODELS / "tokenizer", device)
        if tokenizer.seq_len != model.seq_len:  # --tokens 196 against the trained 7 x 7 tokenizer
            tokenizer = None
    if not args.imagenet and (MODELS / "classifier").is_dir():
        classifier = load_classifier(MODELS / "classifier", device)
    size, channels = (256, 3) if args.imagenet else (28, 1)
    if classifier is None:
        classifier = DomainClassifier(ClassifierSpec(channels, size, model.num_classes, feature_dim=128,
                                                     width=32)).to(device).eval()
    rng = np.random.default_rng(0)

    def images() -> list[torch.Tensor]:
        batches = []
        for first in range(0, n, 250):
            chunk = tokens[first : first + 250]
            if tokenizer is not None:
                with torch.inference_mode():
                    batches.append(quantize(tokenizer.decode(chunk)))
            else:  # no tokenizer of this grid: random pixels of the right shape (same classifier cost)
                batches.append(torch.from_numpy(rng.integers(0, 256, (len(chunk), channels, size, size),
                                                             dtype=np.uint8)).to(device))
        return batches

    start = time.perf_counter()
    decoded = images()
    decode_s = time.perf_counter() - start
    start = time.perf_counter()
    features, _ = classify(classifier, decoded, device)
    classify_s = time.perf_counter() - start
    reference = feature_stats(features + rng.normal(size=features.shape) * 0.01)
    start = time.perf_counter()
    fid_from_stats(feature_stats(features), reference)
    stats_s = time.perf_counter() - start
    start = time.perf_counter()
    precision_recall(features, features[::-1].copy(), k=3, device=device)
    pr_s = time.perf_counter() - start
    big = rng.normal(size=(max(n, 2100), 2048)).astype(np.float32)  # more rows than dims
    big_ref = GaussianStats(mu=np.zeros(2048), sigma=np.eye(2048), count=50000)
    start = time.perf_counter()
    fid_from_stats(feature_stats(big), big_ref)
    stats_2048_s = time.perf_counter() - start

    print(f"\n5. one FID evaluation of {n} images ({'trained' if tokenizer else 'random'} tokenizer/pixels, "
          f"{features.shape[1]}-d classifier features)")
    print(f"  features: tokenizer decode  {decode_s:8.3f} s")
    print(f"  features: classifier        {classify_s:8.3f} s")
    print(f"  statistics + Frechet        {stats_s:8.3f} s")
    print(f"  precision/recall (k=3)      {pr_s:8.3f} s")
    print(f"  statistics + Frechet, 2048-d ({len(big)} rows)  {stats_2048_s:8.3f} s")
    if args.inception:
        from pipeline.metrics.inception import InceptionExtractor

        extractor = InceptionExtractor(device)
        sample = decoded[0][:16]
        extractor(sample[:2])  # warm-up
        start = time.perf_counter()
        extractor(sample)
        per_image = (time.perf_counter() - start) / len(sample)
        print(f"  Inception features          {per_image * 1000:8.1f} ms/image "
              f"({1 / per_image:.1f} images/s; {per_image * n:.0f} s for {n})")


if __name__ == "__main__":
    main()
