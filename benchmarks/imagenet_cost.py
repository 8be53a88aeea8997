"""Projected cost of every stage at ImageNet 256 (configs/imagenet256.yaml), from measurements.

Measured here, in one run:

1. FLOPs per image of every network the stages run, counted by ``torch.utils.flop_counter`` on the
   real modules: the MaskGIT VQGAN encoder and decoder (on the meta device: no compute), the
   ImageNet-sized generator (dim 768, depth 24, 257 positions) forward, full training step and
   frozen-backbone fine-tuning step, the KA-MIG adapter's dense extra (on the CPU, with synthetic
   graphs of realistic density; its sparse products are counted analytically), the domain
   classifier at 256 px, and InceptionV3 (the TorchScript, one real forward when installed);
2. CPU time per image of the ImageFolder path: decoding a 500 x 375 JPEG (ImageNet's most common
   size) plus ADM centre-crop to 256, and prepare's full-decode validity check.

Then it multiplies by the preset's work (images, steps, batch) and divides by an assumed
sustained throughput per GPU (peak x utilisation, printed) to give GPU-hours and wall hours on 8
GPUs. These are **projections**: the utilisations are assumptions, not measurements.

    python benchmarks/imagenet_cost.py                 # about a minute on 2 cores
    python benchmarks/imagenet_cost.py --decode-images 20
"""

from __future__ import annotations

import sys
from pathlib import Path

# Import from the repository root, never from benchmarks/ (benchmarks/tokenize.py would shadow the
# standard library module of that name).
_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import argparse  # noqa: E402
import io  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import yaml  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks.flops import counted_flops  # noqa: E402
from pipeline.config import Config, FusionConfig, config_from_dict, merge_overlay, replace  # noqa: E402
from pipeline.data import check_image_file, load_folder_image  # noqa: E402
from pipeline.metrics.classifier import ClassifierSpec, DomainClassifier  # noqa: E402
from pipeline.model.generators import build_generator  # noqa: E402
from pipeline.model.transformer import GeneratorSpec, MaskGIT  # noqa: E402
from pipeline.tokenizer.vqgan import VQGANTokenizer  # noqa: E402

REPO = _HERE.parent
TRAIN_IMAGES, VAL_IMAGES = 1_281_167, 50_000
G = 1e9


@dataclass(frozen=True)
class Gpu:
    name: str
    bf16: float  # dense peak FLOP/s
    tf32: float


GPUS = (Gpu("A100", 312e12, 156e12), Gpu("H100", 989e12, 495e12))
# Assumed sustained fraction of peak (model FLOPs utilisation): the projection's assumptions.
MFU_TRAIN = 0.40  # bf16 transformer training, batch 2048 split over 8 GPUs
MFU_INFER = 0.30  # bf16 transformer sampling (many small kernels per step)
MFU_CONV = 0.30  # fp32 (TF32 tensor cores) VQGAN / Inception / classifier convolutions


def preset_config() -> Config:
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    overlay = yaml.safe_load((REPO / "configs/imagenet256.yaml").read_text())
    return config_from_dict(merge_overlay(base, overlay), source="params.yaml + configs/imagenet256.yaml")


# --------------------------------------------------------------------------------------------
# FLOPs per image
# --------------------------------------------------------------------------------------------


def vqgan_flops() -> tuple[float, float]:
    with torch.device("meta"):
        tokenizer = VQGANTokenizer()
        images = torch.zeros(1, 3, 256, 256)
        latents = torch.zeros(1, 256, 16, 16)
    return counted_flops(lambda: tokenizer.encoder(images)), counted_flops(lambda: tokenizer.decoder(latents))


def generator_flops(cfg: Config) -> dict[str, float]:
    """Per image: forward, full training step, frozen-backbone step (adapter and head trainable)."""
    m = cfg.model
    spec = GeneratorSpec.from_config(replace(m, dropout=0.0), codebook_size=1024, num_classes=1000,
                                     seq_len=256)
    with torch.device("meta"):
        model = MaskGIT(spec)
        tokens = torch.zeros(1, 256, dtype=torch.long)
        labels = torch.zeros(1, dtype=torch.long)
        targets = torch.zeros(1, 256, dtype=torch.long)

    def step(frozen: bool) -> None:
        # Frozen backbone: only the head gets weight gradients, but the adapter's injections enter
        # before every block, so activation gradients still flow through the whole backbone.
        # A trainable input (pos_emb) reproduces exactly that backward path.
        for name, p in model.named_parameters():
            p.requires_grad_(not frozen or name.startswith(("head.", "pos_emb")))
        logits = model(tokens, labels)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        loss.backward()

    model.requires_grad_(False)  # inference (FlopCounterMode's module tracker dislikes no_grad here)
    forward = counted_flops(lambda: model(tokens, labels))
    return {
        "params": float(sum(p.numel() for p in model.parameters())),
        "forward": forward,
        "train": counted_flops(lambda: step(False)),
        "frozen": counted_flops(lambda: step(True)),
    }


def adapter_flops(cfg: Config) -> dict[str, float]:
    """The adapter's dense extra FLOPs over the base model: per forward pass, per class in the
    batch (the negative term and the fusion tables are built for the batch's classes) and per image.

    Measured on the CPU with synthetic graphs of realistic density (sparse tensors cannot live on
    the meta device), in training mode and in inference mode after precompute(). The sparse graph
    products are not seen by the flop counter and are added analytically.
    """
    from benchmarks.model import IMAGENET, synthetic_graphs

    shape = IMAGENET
    spec = GeneratorSpec.from_config(replace(cfg.model, dropout=0.0), shape.codebook_size, shape.num_classes,
                                     shape.seq_len)
    graphs = synthetic_graphs(shape)
    kamig = build_generator(spec, FusionConfig(), graphs).requires_grad_(False)
    base = MaskGIT(spec).requires_grad_(False)

    def extra(batch: int, classes: int) -> float:
        tokens = torch.randint(0, shape.codebook_size, (batch, shape.seq_len))
        labels = torch.arange(batch) % classes
        kamig.eval().precompute()  # as the sampler does: the tables are built outside the count
        return counted_flops(lambda: kamig(tokens, labels)) - counted_flops(lambda: base(tokens, labels))

    result = {}
    for mode, training in (("train", True), ("infer", False)):
        kamig.train(training)
        base.train(training)
        one, batch, classes = extra(1, 1), extra(2, 1), extra(2, 2)
        result[f"{mode}_per_image"] = batch - one
        result[f"{mode}_per_class"] = classes - batch
        result[f"{mode}_per_forward"] = one - result[f"{mode}_per_image"] - result[f"{mode}_per_class"]
    nnz = sum(int(graphs.edges[g][1].numel()) for g in ("cooccurrence", "similarity"))
    result["sparse_per_forward"] = 2.0 * nnz * cfg.model.dim * cfg.fusion.gcn_layers
    return result


def expected_classes(batch: int, classes: int = 1000) -> float:
    """Expected distinct classes in a uniformly drawn training batch."""
    return classes * (1.0 - (1.0 - 1.0 / classes) ** batch)


def classifier_flops(cfg: Config) -> tuple[float, float]:
    c = cfg.eval.classifier
    spec = ClassifierSpec(channels=3, image_size=256, num_classes=1000, feature_dim=c.feature_dim,
                          width=c.width)
    with torch.device("meta"):
        model = DomainClassifier(spec)
        images = torch.zeros(1, 3, 256, 256)
        labels = torch.zeros(1, dtype=torch.long)
    model.requires_grad_(False)
    forward = counted_flops(lambda: model.features_and_logits(images))
    model.requires_grad_(True)

    def step() -> None:
        F.cross_entropy(model(images), labels).backward()

    return forward, counted_flops(step)


def inception_flops() -> float | None:
    from pipeline.metrics.inception import InceptionExtractor, inception_available

    if not inception_available():
        return None
    extractor = InceptionExtractor("cpu")
    images = torch.zeros(1, 3, 256, 256, dtype=torch.uint8)
    return counted_flops(lambda: extractor(images))


# --------------------------------------------------------------------------------------------
# CPU cost of the ImageFolder path
# --------------------------------------------------------------------------------------------


def jpeg_seconds(repeats: int) -> tuple[float, float]:
    """(decode + ADM crop, prepare's validity check) seconds per 500 x 375 JPEG, one core."""
    rng = np.random.default_rng(0)
    # A photo-like image: smooth gradients plus noise, so the JPEG has a realistic size.
    y, x = np.mgrid[0:375, 0:500]
    base = np.stack([(x * 0.5) % 256, (y * 0.6) % 256, ((x + y) * 0.3) % 256], axis=-1)
    pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "image.jpg"
        path.write_bytes(buffer.getvalue())
        load_folder_image(path, 256)
        start = time.process_time()
        for _ in range(repeats):
            load_folder_image(path, 256)
        decode = (time.process_time() - start) / repeats
        start = time.process_time()
        for _ in range(repeats):
            check_image_file(str(path))
        check = (time.process_time() - start) / repeats
    print(f"  JPEG 500x375 q90 ({len(buffer.getvalue()) / 1024:.0f} KiB): decode + ADM crop "
          f"{decode * 1e3:.1f} ms, validity check {check * 1e3:.1f} ms (CPU time, one core)")
    return decode, check


# --------------------------------------------------------------------------------------------
# The projection
# --------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--decode-images", type=int, default=30, help="JPEG decodes timed")
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--decode-cores", type=int, default=64,
                        help="CPU cores decoding JPEGs on the 8-GPU node (data.workers x processes)")
    args = parser.parse_args()
    torch.manual_seed(0)
    cfg = preset_config()
    print("FLOPs per image (torch.utils.flop_counter; 1 multiply-add = 2 FLOPs)")
    encode, decode = vqgan_flops()
    print(f"  VQGAN encoder {encode / G:.1f} GFLOP, decoder {decode / G:.1f} GFLOP")
    gen = generator_flops(cfg)
    print(f"  generator ({gen['params'] / 1e6:.0f} M params, dim {cfg.model.dim}, depth {cfg.model.depth}, "
          f"257 positions): forward {gen['forward'] / G:.1f}, training step {gen['train'] / G:.1f}, "
          f"frozen-backbone step {gen['frozen'] / G:.1f} GFLOP")
    adapter = adapter_flops(cfg)
    for mode in ("train", "infer"):
        label = "training" if mode == "train" else "inference (tables precomputed when they fit)"
        print(f"  KA-MIG adapter extra, {label}: "
              f"{adapter[mode + '_per_forward'] / G:.2f} GFLOP per pass + "
              f"{adapter[mode + '_per_class'] / G:.2f} per class in the batch + "
              f"{adapter[mode + '_per_image'] / G:.3f} per image")
    print(f"  KA-MIG sparse graph products (analytic): {adapter['sparse_per_forward'] / G:.2f} GFLOP "
          "per pass")
    cls_forward, cls_train = classifier_flops(cfg)
    print(f"  domain classifier at 256 px (width {cfg.eval.classifier.width}): forward "
          f"{cls_forward / G:.2f}, training step {cls_train / G:.2f} GFLOP")
    inception = inception_flops()
    if inception is None:
        inception = 11.4e9
        print("  InceptionV3: not installed; using 11.4 GFLOP (5.7 G multiply-adds)")
    else:
        print(f"  InceptionV3 pool3 at 299 px: {inception / G:.1f} GFLOP")
    decode_s, check_s = jpeg_seconds(args.decode_images)

    t, k, s, e = cfg.train, cfg.kamig, cfg.sample, cfg.eval
    n_samples = 1000 * s.per_class
    cfg_passes = sum(1 if c == 0 else 2 for c in _guidance(cfg))
    classifier_images = e.classifier.steps * e.classifier.batch_size
    # The adapter's forward work per fine-tuning step (x3 for its backward: its weights train).
    adapter_step = (adapter["train_per_forward"] + adapter["sparse_per_forward"]
                    + expected_classes(t.batch_size) * adapter["train_per_class"]
                    + t.batch_size * adapter["train_per_image"])
    # Sampling batches are class-major: batch_size / per_class classes (+ the null class for CFG).
    batches = -(-n_samples // s.batch_size)
    classes_per_batch = -(-s.batch_size // s.per_class) + 1
    sample_adapter = batches * cfg_passes * (adapter["infer_per_forward"]
                                             + classes_per_batch * adapter["infer_per_class"]
                                             + 2 * s.batch_size * adapter["infer_per_image"])
    print(f"  per fine-tuning step: backbone {t.batch_size * gen['frozen'] / 1e12:.1f} TFLOP, adapter "
          f"{3 * adapter_step / 1e12:.1f} TFLOP (~{expected_classes(t.batch_size):.0f} classes per batch)")

    @dataclass(frozen=True)
    class Stage:
        flops: float
        precision: str | None  # bf16 | tf32 | None (CPU only)
        mfu: float
        decodes: int  # JPEG decodes (prepare: validity checks)
        shared: bool  # split over the GPUs (pipeline.launch) or one process
        work: str

    stages = {
        "prepare": Stage(0.0, None, 0, TRAIN_IMAGES + VAL_IMAGES, False, "decode-check every file"),
        "tokenizer": Stage(cfg.tokenizer.eval_images * (encode + decode), "tf32", MFU_CONV,
                           cfg.tokenizer.eval_images, False, "import + recon eval"),
        "tokenize": Stage((2 * TRAIN_IMAGES + VAL_IMAGES) * encode, "tf32", MFU_CONV,
                          2 * TRAIN_IMAGES + VAL_IMAGES, True, "train x2 (flips) + val"),
        "train_base": Stage(t.steps * t.batch_size * gen["train"], "bf16", MFU_TRAIN, 0, True,
                            f"{t.steps} steps x {t.batch_size}"),
        "finetune (each of 2)": Stage(k.steps * (t.batch_size * gen["frozen"] + 3 * adapter_step), "bf16",
                                      MFU_TRAIN, 0, True, f"{k.steps} steps x {t.batch_size}, frozen"),
        "classifier": Stage(classifier_images * cls_train + VAL_IMAGES * cls_forward, "tf32", MFU_CONV,
                            classifier_images + VAL_IMAGES, False,
                            f"{e.classifier.steps} steps x {e.classifier.batch_size}"),
        "reference": Stage(VAL_IMAGES * (inception + cls_forward), "tf32", MFU_CONV, VAL_IMAGES, True,
                           "50k val"),
        "sample (each of 3)": Stage(n_samples * cfg_passes * gen["forward"] + sample_adapter, "bf16",
                                    MFU_INFER, 0, True, f"50k x {cfg_passes} passes"),
        "evaluate (each of 3)": Stage(n_samples * (decode + inception + cls_forward), "tf32", MFU_CONV, 0,
                                      True, "VQGAN decode + Inception"),
        "evaluate_real": Stage(n_samples * (inception + cls_forward), "tf32", MFU_CONV, n_samples, True,
                               "50k train images"),
    }
    print(f"\nPROJECTION for configs/imagenet256.yaml, {args.gpus} GPUs on one node. Assumed utilisation "
          f"(not measured): transformer training {MFU_TRAIN:.0%}, sampling {MFU_INFER:.0%}, "
          f"convolutions {MFU_CONV:.0%} of the dense bf16 / TF32 peak. JPEG decoding at the measured "
          f"rate on {args.decode_cores} cores for shared stages, data.workers ({cfg.data.workers}) for "
          "single-process ones, overlapping the GPU work. graphs (CPU): benchmarks/graphs.py.")
    print(f"{'stage':<22}{'procs':>6}{'PFLOP':>10}"
          + "".join(f"{g.name + ' GPU-h':>12}{g.name + ' wall-h':>12}" for g in GPUS)
          + f"{'decode-h':>10}  work")
    for name, stage in stages.items():
        processes = args.gpus if stage.shared else 1
        cores = args.decode_cores if stage.shared else max(1, cfg.data.workers)
        per_decode = check_s if name == "prepare" else decode_s
        decode_hours = stage.decodes * per_decode / cores / 3600
        row = f"{name:<22}{processes:>6}{stage.flops / 1e15:>10.1f}"
        for gpu in GPUS:
            if stage.precision is None:
                row += f"{'-':>12}{decode_hours:>12.2f}"
                continue
            rate = (gpu.bf16 if stage.precision == "bf16" else gpu.tf32) * stage.mfu
            gpu_hours = stage.flops / rate / 3600
            row += f"{gpu_hours:>12.2f}{max(gpu_hours / processes, decode_hours):>12.2f}"
        print(f"{row}{decode_hours:>10.2f}  {stage.work}")


def _guidance(cfg: Config) -> list[float]:
    from pipeline.sampling import decode_plan

    return list(decode_plan(cfg.sample, 256).cfg)


if __name__ == "__main__":
    main()
