"""The ImageNet GPU check (issue 7, section 5): one short script, throughputs on one GPU.

1. tokenise ``--images`` synthetic 256 x 256 images with a randomly initialised VQGAN of the
   pretrained architecture (fp32 as in the tokenize stage; TF32 convolutions), and decode them back
   (the evaluate stages' cost);
2. ``--steps`` bf16 training steps of the ImageNet-sized model (dim 768, depth 24, 1024 codes,
   1000 classes) with the KA-MIG adapter on synthetic graphs, frozen backbone as in finetune, at
   ``--batch`` images per step (the per-GPU share of the preset's 2048 on 8 GPUs is 256);
3. ``--samples`` class-balanced samples at 8 steps with CFG (the preset's sampling settings),
   through the sample stage's own generate_samples, with the adapter's precomputed tables;
4. the paper's route: a random checkpoint in AutoNAT-L's published layout (full size) through the
   importer (``pipeline.model.convert``), then ``--autonat-steps`` bf16 fine-tune steps with the
   adapter (official recipe: AdamW 1e-4, betas 0.99, no clipping; adapter and mlm_layer trained)
   at ``--batch`` images, and ``--autonat-samples`` images with the AutoNAT-L-T8 strategy of
   ``configs/autonat_l_t8.yaml``.

Each part prints images/s (or steps/s) and the achieved TFLOP/s of the work that ran: its FLOPs are
counted (``torch.utils.flop_counter``) on the very models and sizes that were timed, so ``--smoke``
prints the small models' rates (benchmarks/imagenet_cost.py counts the full-size model, which is the
utilisation its cost projection assumes). Weights are random: speed does not depend on them.

    python benchmarks/gpu_check.py                 # on the GPU machine, a few minutes
    python benchmarks/gpu_check.py --smoke         # CPU, tiny sizes: checks the script runs
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import torch  # noqa: E402

from benchmarks.flops import counted_flops  # noqa: E402
from benchmarks.model import IMAGENET, make_models, make_train_step  # noqa: E402
from pipeline.config import SampleConfig  # noqa: E402
from pipeline.config import replace as replace_config  # noqa: E402
from pipeline.sampling import generate_samples  # noqa: E402
from pipeline.tokenizer.vqgan import VQGANTokenizer  # noqa: E402


def tflops(flops: float, seconds: float) -> str:
    return f"{flops / seconds / 1e12:.3g} TFLOP/s"


def timed(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def check_tokenizer(device: torch.device, images: int, batch: int, size: int) -> None:
    torch.manual_seed(0)
    tokenizer = VQGANTokenizer(image_size=size).to(device).eval()
    pixels = torch.rand(batch, 3, size, size, device=device)
    tokenizer.encode(pixels[:2])  # warm-up (cuDNN autotuning)
    encode_flops = counted_flops(lambda: tokenizer.encode(pixels))
    decode_flops = counted_flops(lambda: tokenizer.decode(tokenizer.encode(pixels))) - encode_flops
    batches = max(1, images // batch)
    tokens = []
    seconds = timed(lambda: tokens.extend(tokenizer.encode(pixels) for _ in range(batches)), device)
    done = batches * batch
    print(f"tokenize: {done} images {size}px in {seconds:.1f} s = {done / seconds:,.0f} images/s "
          f"({tflops(batches * encode_flops, seconds)} at {size} px)")
    seconds = timed(lambda: [tokenizer.decode(t) for t in tokens], device)
    print(f"decode:   {done} images in {seconds:.1f} s = {done / seconds:,.0f} images/s "
          f"({tflops(batches * decode_flops, seconds)} at {size} px)")
    if device.type == "cuda":
        print(f"  peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB at batch {batch}")


def check_training(device: torch.device, shape, steps: int) -> None:
    _, kamig = make_models(shape)
    trainable = {n for n, _ in kamig.named_parameters() if n.startswith(("adapter.", "head."))}
    amp = device.type == "cuda" and torch.cuda.is_bf16_supported()
    step = make_train_step(kamig, shape, device, trainable, amp)
    for i in range(2):
        step(i)  # warm-up
    step_flops = counted_flops(lambda: step(1))  # a repeat of a warm-up step: the state moves on
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = timed(lambda: [step(2 + i) for i in range(steps)], device)
    images = steps * shape.batch
    print(f"finetune (KA-MIG, frozen backbone, bf16 {amp}): {steps} steps x {shape.batch} in "
          f"{seconds:.1f} s = {steps / seconds:.2f} steps/s, {images / seconds:,.0f} images/s "
          f"({tflops(steps * step_flops, seconds)})")
    if device.type == "cuda":
        print(f"  peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


def check_sampling(device: torch.device, shape, samples: int, batch: int) -> None:
    _, kamig = make_models(shape)
    kamig.to(device).eval().requires_grad_(False)
    kamig.precompute()
    amp = device.type == "cuda" and torch.cuda.is_bf16_supported()

    def logits_fn(tokens: torch.Tensor, labels: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            return kamig(tokens, labels, positions)

    per_class = max(1, samples // shape.num_classes)
    cfg = replace_config(SampleConfig(), steps=8, per_class=per_class, batch_size=batch, cfg=2.0,
                         cfg_schedule="linear")
    batch_flops = counted_flops(lambda: generate_samples(  # also the warm-up
        logits_fn, num_classes=shape.num_classes, seq_len=shape.seq_len, mask_id=kamig.mask_id,
        null_class=kamig.null_class, sample_cfg=cfg, seed=0, device=device, batches=range(1)))
    result = generate_samples(logits_fn, num_classes=shape.num_classes, seq_len=shape.seq_len,
                              mask_id=kamig.mask_id, null_class=kamig.null_class, sample_cfg=cfg, seed=0,
                              device=device)
    n = len(result.labels)
    print(f"sample (KA-MIG, 8 steps, CFG linear to 2.0): {n} images in {result.seconds:.1f} s = "
          f"{result.images_per_s:,.0f} images/s ({tflops(batch_flops * n / batch, result.seconds)})")


def check_autonat(device: torch.device, steps: int, batch: int, samples: int, smoke: bool) -> None:
    import tempfile

    import torch.nn.functional as F
    import yaml

    from benchmarks.model import synthetic_graphs
    from pipeline.config import FusionConfig
    from pipeline.model.autonat import import_autonat
    from pipeline.model.generators import build_generator
    from pipeline.model.uvit import UViT, UViTSpec
    from pipeline.training.batches import mask_batch

    spec = UViTSpec(dim=64, depth=2, heads=2, num_classes=10) if smoke else UViTSpec()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "nnet_ema.pth"
        torch.save(UViT(spec).state_dict(), path)
        started = time.perf_counter()
        backbone = import_autonat(path, heads=spec.heads)
        print(f"autonat import: {sum(p.numel() for p in backbone.parameters()):,} parameters "
              f"({path.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - started:.1f} s")
    shape = dataclasses.replace(IMAGENET, num_classes=spec.num_classes, dim=spec.dim)
    model = build_generator(backbone.spec, FusionConfig(), synthetic_graphs(shape))
    model.load_state_dict(backbone.state_dict(), strict=False)
    del backbone
    named = [(n, p) for n, p in model.named_parameters() if n.startswith(("adapter.", model.head_prefix))]
    model.requires_grad_(False)
    for _, p in named:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW([p for _, p in named], lr=1e-4, betas=(0.99, 0.99), weight_decay=0.0)
    model.to(device).train()
    amp = device.type == "cuda" and torch.cuda.is_bf16_supported()
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, spec.codebook_size, (batch, spec.seq_len), generator=g)
    labels = torch.randint(0, spec.num_classes, (batch,), generator=g)

    def step(i: int) -> None:
        masked = mask_batch(tokens, labels, torch.Generator().manual_seed(i), mask_schedule="beta",
                            mask_beta=(12.0, 3.0), p_uncond=0.15, mask_id=model.mask_id,
                            null_class=model.null_class).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(masked.inputs, masked.labels)
        loss = F.cross_entropy(logits[masked.mask].float(), masked.targets[masked.mask], label_smoothing=0.1)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(0)  # warm-up
    seconds = timed(lambda: [step(1 + i) for i in range(steps)], device)
    print(f"autonat finetune (adapter + mlm_layer, bf16 {amp}): {steps} steps x {batch} in {seconds:.1f} s = "
          f"{steps / seconds:.2f} steps/s, {steps * batch / seconds:,.0f} images/s")
    if device.type == "cuda":
        print(f"  peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")

    model.eval()
    model.precompute()
    preset = yaml.safe_load((_HERE.parent / "configs" / "autonat_l_t8.yaml").read_text())["sample"]
    per_class = max(1, samples // spec.num_classes)
    cfg = replace_config(SampleConfig(), steps=preset["steps"], strategy=preset["strategy"],
                         per_class=per_class, batch_size=min(250, per_class * spec.num_classes))

    def logits_fn(tokens: torch.Tensor, labels: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            return model(tokens, labels, positions)

    result = generate_samples(logits_fn, num_classes=spec.num_classes, seq_len=spec.seq_len,
                              mask_id=model.mask_id, null_class=model.null_class, sample_cfg=cfg, seed=0,
                              device=device)
    print(f"autonat T8 sampling (KA-MIG, CFG from the strategy): {len(result.labels)} images in "
          f"{result.seconds:.1f} s = {result.images_per_s:,.0f} images/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--tokenize-batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--sample-batch", type=int, default=250)
    parser.add_argument("--autonat-steps", type=int, default=300)
    parser.add_argument("--autonat-samples", type=int, default=500)
    parser.add_argument("--smoke", action="store_true", help="tiny CPU run: the script works")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shape = dataclasses.replace(IMAGENET, batch=args.batch, dropout=0.0)
    size = 256
    if args.smoke:
        shape = dataclasses.replace(shape, dim=64, depth=2, heads=2, batch=4, num_classes=10)
        args.images, args.tokenize_batch, args.steps, args.samples, args.sample_batch = 4, 2, 2, 20, 10
        args.autonat_steps, args.autonat_samples = 2, 20
        size = 64
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}")
    else:
        print(f"device cpu ({torch.get_num_threads()} threads)")
    check_tokenizer(device, args.images, args.tokenize_batch, size)
    check_training(device, shape, args.steps)
    check_sampling(device, shape, args.samples, args.sample_batch)
    check_autonat(device, args.autonat_steps, shape.batch, args.autonat_samples, args.smoke)


if __name__ == "__main__":
    main()
