"""Does a tokenizer trained longer, or differently, lower the tokenizer floor (rFID)? One row per recipe.

    python scripts/tokenizer_study.py [--recipe "steps=1000" --recipe "steps=2000 batch_size=64" ...]
        [--score-workspace] [--images 10000] [--output reports/tokenizer_study.json]

Each recipe is a set of ``tokenizer.*`` overrides on params.yaml. For each, the VQ-VAE is trained
(timed), then scored exactly like ``evaluate_recon``: ``decode(encode(x))`` of ``--images`` held-out
train images, through this workspace's domain classifier, against ``data/reference``. It reports
the rFID with its bootstrap standard error, the val PSNR, and the training time, so the choice of a
tokenizer recipe is measured, not guessed. Needs ``dvc repro reference`` first (the classifier and
the reference). Nothing in the DVC pipeline changes; a chosen recipe goes into params.yaml or a
preset. Each row keeps the full tokenizer settings it was measured with; a recipe whose settings
and image count already have a row is skipped, so a changed params.yaml is measured afresh.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from accelerate import PartialState

from pipeline import layout
from pipeline.config import Config, load_config, replace
from pipeline.files import write_text
from pipeline.launch import single_process_device
from pipeline.metrics import load_reference, score
from pipeline.metrics.extraction import extractors, floor_features
from pipeline.tokenizer.train import evaluate_tokenizer, fit_tokenizer, val_batches

# params.yaml's recipe, the study's (configs/study.yaml), and the ~10 minutes of training it can afford.
DEFAULT_RECIPES = ("", "steps=600 eval_images=10000", "steps=1000 eval_images=10000")
WORKSPACE = "params.yaml (models/tokenizer)"


def recipe_config(cfg: Config, recipe: str, images: int) -> Config:
    """params.yaml with the recipe's ``key=value`` tokenizer overrides, scored on ``images`` images."""
    changes: dict[str, Any] = {}
    for item in recipe.split():
        key, _, value = item.partition("=")
        changes[key] = yaml.safe_load(value)
    return replace(cfg, tokenizer=replace(cfg.tokenizer, **changes),
                   eval=replace(cfg.eval, real_samples=images))


def measure(cfg: Config, recipe: str) -> dict[str, Any]:
    device = single_process_device()
    start = time.perf_counter()
    if recipe == WORKSPACE:  # the workspace's trained tokenizer: the recipe of params.yaml, not re-trained
        from pipeline.tokenizer.registry import load_tokenizer

        tokenizer, seconds = load_tokenizer(layout.TOKENIZER_DIR, device), None
    else:
        tokenizer = fit_tokenizer(cfg, device)
        seconds = round(time.perf_counter() - start, 1)
    quality = evaluate_tokenizer(tokenizer, val_batches(cfg, cfg.tokenizer.eval_images), device)
    classifier, _ = extractors(cfg, device)
    features = floor_features(cfg, classifier, None, PartialState(), tokenizer)
    assert features is not None
    metrics = score(features, load_reference(layout.REFERENCE_DIR, need_inception=False), cfg.eval.pr_k,
                    bootstrap=cfg.eval.bootstrap)
    return {"recipe": recipe or "params.yaml", "train_seconds": seconds, "rfid": metrics["fid"],
            "rfid_se": metrics["fid_se"], "n_images": metrics["n_samples"], "psnr": quality.psnr,
            "codebook_usage": quality.codebook_usage, "steps": cfg.tokenizer.steps,
            "tokenizer": cfg.to_dict()["tokenizer"]}


def measured(rows: list[dict[str, Any]], cfg: Config) -> bool:
    """Whether a row holds exactly these tokenizer settings at this image count."""
    settings = cfg.to_dict()["tokenizer"]
    return any(row.get("tokenizer") == settings and row["n_images"] == cfg.eval.real_samples for row in rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", action="append", help="tokenizer overrides, e.g. 'steps=3000 hidden=128'")
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--score-workspace", action="store_true",
                        help="score models/tokenizer as params.yaml's recipe instead of training it again")
    parser.add_argument("--output", default="reports/tokenizer_study.json")
    args = parser.parse_args()
    output = Path(args.output)
    rows = json.loads(output.read_text()) if output.is_file() else []
    base = load_config()
    recipes = list(args.recipe or DEFAULT_RECIPES)
    if args.score_workspace:
        recipes = [WORKSPACE if recipe == "" else recipe for recipe in recipes]
    for recipe in recipes:
        cfg = recipe_config(base, "" if recipe == WORKSPACE else recipe, args.images)
        if measured(rows, cfg):
            print(f"done  {recipe or 'params.yaml'} (steps={cfg.tokenizer.steps})")
            continue
        row = measure(cfg, recipe)
        rows.append(row)
        print(json.dumps(row), flush=True)
        output.parent.mkdir(parents=True, exist_ok=True)
        write_text(output, json.dumps(rows, indent=2) + "\n")  # after each recipe: resumable
    return 0


if __name__ == "__main__":
    sys.exit(main())
