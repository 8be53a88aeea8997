"""Measure FID's sampling noise at 1k / 5k / 10k samples, with the workspace's models held fixed.

    python scripts/sampling_noise.py [--variants kamig permuted] [--seeds 1 2] [--per-class 1000]
        [--sizes 1000 5000 10000] [--label b0-f9] [--output reports/sampling_noise.json]

Each variant samples ``--per-class`` images per class with each sampling seed (params.yaml's other
``sample.*`` settings), and their domain-classifier features are scored against ``data/reference``
exactly like ``evaluate@<variant>``. Each draw is split into disjoint class-balanced subsets of
every ``--size`` (study.noise): the sd of their FIDs is the sampling noise at that size, beside
the mean bootstrap SE, and the same subsets of the first two variants give the noise of their
paired difference. The features of each draw are kept in ``data/sampling_noise/`` with the
model's fingerprint, so an interrupted run resumes and a re-trained model is sampled afresh.

Run it in a workspace that holds a study experiment's models (``dvc exp apply <name>``, or right
after scripts/run_experiments.py) and name it with ``--label``. Nothing in the DVC pipeline changes.
The report (scripts/make_report.py) shows the result.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
from accelerate import PartialState

from pipeline import layout
from pipeline.config import load_config, replace
from pipeline.files import atomic_path, write_text
from pipeline.metrics import FeatureSet, load_reference
from pipeline.metrics.evaluation import decoded_batches
from pipeline.metrics.extraction import extract_shared, extractors
from pipeline.sampling.generate import sample_variant
from pipeline.shards import read_meta
from pipeline.tokenizer.registry import load_tokenizer
from study.noise import Draw, noise_table

CACHE = layout.DATA_DIR / "sampling_noise"


def model_fingerprint(variant: str) -> str:
    """sha256 over every file of ``models/<variant>``: which model a cached draw came from."""
    digest = hashlib.sha256()
    for path in sorted(layout.model_dir(variant).rglob("*")):
        if path.is_file():
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def cached_draw(variant: str, seed: int, per_class: int, fingerprint: str,
                make: Callable[[], FeatureSet]) -> tuple[Draw, float, bool]:
    """One variant's features at one sampling seed, its seconds, and whether they came from the cache.

    A cached draw is used only while ``fingerprint`` (the model's) is the one that made it; otherwise
    ``make()`` samples and scores it again.
    """
    cached = CACHE / f"{variant}-seed{seed}-per{per_class}.npz"
    if cached.is_file():
        stored = np.load(cached)
        if str(stored["fingerprint"]) == fingerprint:
            return Draw(variant, seed, stored["features"], stored["labels"]), float(stored["seconds"]), True
    started = time.perf_counter()
    features = make()
    seconds = time.perf_counter() - started
    CACHE.mkdir(parents=True, exist_ok=True)
    with atomic_path(cached) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, features=features.domain, labels=features.labels, fingerprint=fingerprint,
                 seconds=seconds)
    return Draw(variant, seed, features.domain, features.labels), seconds, False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", nargs="+", default=["kamig", "permuted"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2], help="sampling seeds")
    parser.add_argument("--per-class", type=int, default=1000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 10000])
    parser.add_argument("--label", default=None, help="the experiment whose models these are, e.g. b0-f9")
    parser.add_argument("--output", default="reports/sampling_noise.json")
    args = parser.parse_args()
    unknown = sorted(set(args.variants) - set(layout.GENERATOR_VARIANTS))
    if unknown:
        print(f"error: unknown variants {unknown}; choose from {list(layout.GENERATOR_VARIANTS)}",
              file=sys.stderr)
        return 2
    missing = [v for v in args.variants if not (layout.model_dir(v) / "model.safetensors").is_file()]
    if missing or not layout.REFERENCE_DIR.is_dir():
        print(f"error: models {missing} or {layout.REFERENCE_DIR} missing: run `dvc repro` or "
              "`dvc exp apply <experiment>` first", file=sys.stderr)
        return 2
    cfg = load_config()
    state = PartialState()
    meta = read_meta(layout.TOKENS_DIR)
    tokenizer = load_tokenizer(layout.TOKENIZER_DIR, state.device)
    classifier, _ = extractors(replace(cfg, eval=replace(cfg.eval, inception=False)), state.device)
    fingerprints = {variant: model_fingerprint(variant) for variant in args.variants}

    def sample_and_score(variant: str, seed: int) -> FeatureSet:
        """Sample like sample@<variant> with this seed, and extract features like evaluate@<variant>."""
        sampling = replace(cfg, sample=replace(cfg.sample, per_class=args.per_class, seed=seed))
        samples = sample_variant(sampling, variant, meta, state)
        features = extract_shared(
            lambda items: decoded_batches(tokenizer, samples.tokens[items.start : items.stop],
                                          samples.labels[items.start : items.stop], cfg.eval.batch_size,
                                          state.device),
            len(samples.labels), cfg.eval.batch_size, classifier, None, state, desc=f"features {variant}",
        )
        assert features is not None  # one process: the main one
        return features

    draws, seconds = [], {}
    for variant in args.variants:
        for seed in args.seeds:
            result, took, cached = cached_draw(variant, seed, args.per_class, fingerprints[variant],
                                               partial(sample_and_score, variant, seed))
            draws.append(result)
            seconds[f"{variant}-seed{seed}"] = round(took, 1)
            print(f"{variant} seed {seed}: {len(result.labels):,} samples, {took / 60:.1f} min"
                  + (" (from the cache)" if cached else ""), flush=True)
    reference = load_reference(layout.REFERENCE_DIR, need_inception=False).domain_stats
    contrast = tuple(args.variants[:2]) if len(args.variants) > 1 else None
    table = noise_table(draws, reference, args.sizes, cfg.eval.bootstrap, contrast)
    result = {"label": args.label, "per_class": args.per_class, "sampling_seeds": args.seeds,
              "samples_per_draw": len(draws[0].labels),
              "models": fingerprints,
              # The settings every draw used; its seed is each draw's, in sampling_seeds.
              "sample": {k: v for k, v in cfg.to_dict()["sample"].items() if k != "seed"}
              | {"per_class": args.per_class},
              "seconds_per_draw": seconds, **table}
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    write_text(output, json.dumps(result, indent=2) + "\n")
    for row in table["rows"] + table["contrast"]:
        name = row.get("variant") or row["contrast"]
        sd = "–" if row["sd"] is None else f"{row['sd']:.2f}"
        print(f"{name:<20} n={row['n']:>6,}  subsets={row['subsets']:>3}  FID {row['mean']:7.2f}  sd {sd}"
              + (f"  bootstrap SE {row['bootstrap_se']:.2f}" if row.get("bootstrap_se") else ""))
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
