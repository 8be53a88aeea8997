"""Benchmark: the sample stage's sampling at older commits and this checkout, side by side, in one run.

The sample stage's own function (``sample_variant``) of each older commit, checked out in a
temporary git worktree, runs against this checkout's, alternating over ``--rounds`` rounds, each
run in a fresh process on the same trained models (``models/`` of this checkout: run ``dvc repro``
first). Every contender samples ``--per-class`` images per class of the base model and of KA-MIG
with the params of its own tree (the stage's batch of 500, 8 steps, CFG 1). This checkout runs
as configured (result-preserving), then with each opt-in that changes the samples:
``sample.token_draw: inverse_cdf`` ("now icdf") and, where the CPU has native bf16,
``sample.mixed_precision: bf16`` ("now bf16").

Prints, per contender, medians over the rounds:
- images/s of token generation (the number in ``metrics/sample_<variant>.json``);
- the stage's work in seconds: loading the model, its precomputed tables and the sampling;
- the ratios against the first (oldest) commit, and KA-MIG over base;
- whether each contender's tokens are the first commit's, byte for byte (the opt-ins: other samples).

    python -m benchmarks.sampling_versions                    # the three CPU sampling changes' parents
    python -m benchmarks.sampling_versions --before HEAD~3 --rounds 5

The older commit must read this checkout's models and token meta. Commits from ``bdb6b9b^`` on do:
the generators' weights were already safetensors, and two shims in the probe cover the rest (a
token meta from before ``0ad6633`` ignores the class names; a tree from before ``e0fe421`` skips
its check of the tokenizer, which it would look for as ``model.pt``). Neither touches the
sampling. The first default, ``bdb6b9b^``, is the sampler before any of the CPU work.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from pipeline.sampling.generate import cpu_has_native_bf16

ROOT = Path(__file__).resolve().parent.parent
# The parents of the CPU sampling changes, oldest first: the forward in row chunks (bdb6b9b), CFG
# and Gumbel noise in place (85c93d3), the decoder's row chunks (2dcdc00).
BASELINES = ("bdb6b9b^", "85c93d3^", "2dcdc00^")
# The oldest commit whose sampler reads this checkout's models and token meta (with the probe's shim).
OLDEST_READABLE = "bdb6b9b^"

# Runs inside a contender's tree (sys.path[0]): its pipeline, its params.yaml, our models/.
PROBE = r"""
import hashlib, json, sys, time
sys.path.insert(0, sys.argv[1])
import torch
from pipeline import layout
from pipeline.config import load_config, replace
from pipeline.sampling.generate import sample_variant
from pipeline import shards
from pipeline.shards import read_meta
from pipeline.tokenizer import base as tokenizer_base

# Shims that let an older tree read today's files; neither touches the sampling.
# 1. Token metas gained class_names at 0ad6633: an older TokenMeta ignores them.
if "class_names" not in shards.TokenMeta.__dataclass_fields__:
    _init = shards.TokenMeta.__init__
    shards.TokenMeta.__init__ = lambda self, *args, class_names=(), **kwargs: _init(self, *args, **kwargs)
# 2. The tokenizer moved from model.pt to safetensors at e0fe421: an older tree's guard (the tokens
#    came from this tokenizer) would hash a file that no longer exists, so it is taken as passed.
if tokenizer_base.WEIGHTS_FILE == "model.pt":
    tokenizer_base.tokenizer_fingerprint = lambda _: read_meta(layout.TOKENS_DIR).tokenizer_fingerprint

tree, variant, per_class, opt_in = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
cfg = load_config(tree + "/params.yaml")
cfg = replace(cfg, sample=replace(cfg.sample, per_class=per_class, **opt_in))

class State:  # one process, as accelerate's PartialState describes it
    device, num_processes, process_index, is_main_process = torch.device("cpu"), 1, 0, True

started = time.perf_counter()
samples = sample_variant(cfg, variant, read_meta(layout.TOKENS_DIR), State())
work_s = time.perf_counter() - started
print(json.dumps({"images_per_s": samples.images_per_s, "work_s": work_s,
                  "tokens": hashlib.sha256(samples.tokens.tobytes()).hexdigest()}))
"""


def run_probe(tree: Path, variant: str, per_class: int, opt_in: dict[str, str]) -> dict[str, float | str]:
    argv = [sys.executable, "-c", PROBE, str(tree), variant, str(per_class), json.dumps(opt_in)]
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"the probe failed in {tree} ({variant}); a commit older than {OLDEST_READABLE} "
                         f"cannot read this checkout's models or token meta:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", nargs="+", default=list(BASELINES),
                        help=f"older commits, oldest first (default {' '.join(BASELINES)})")
    parser.add_argument("--per-class", type=int, default=100, help="images per class and run")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not (ROOT / "models" / "kamig").is_dir():
        raise SystemExit("no models/kamig: run `dvc repro` first")
    with tempfile.TemporaryDirectory() as tmp:
        # name -> (tree, its sample.* opt-ins)
        contenders: dict[str, tuple[Path, dict[str, str]]] = {}
        try:
            for commit in args.before:
                worktree = Path(tmp) / f"before{len(contenders)}"
                subprocess.run(["git", "worktree", "add", "--detach", str(worktree), commit], cwd=ROOT,
                               check=True, capture_output=True)
                contenders[commit] = (worktree, {})
            contenders["now"] = (ROOT, {})
            contenders["now icdf"] = (ROOT, {"token_draw": "inverse_cdf"})
            if cpu_has_native_bf16():
                contenders["now bf16"] = (ROOT, {"mixed_precision": "bf16"})
            else:
                print("no bf16 contender: this CPU has no native bf16, where the opt-in samples at "
                      "about half float32's rate", file=sys.stderr)
            runs: dict[tuple[str, str], list[dict[str, float | str]]] = {}
            for round_index in range(args.rounds):
                for variant in ("base", "kamig"):
                    for name, (tree, opt_in) in contenders.items():
                        runs.setdefault((name, variant), []).append(
                            run_probe(tree, variant, args.per_class, opt_in))
                print(f"round {round_index + 1}/{args.rounds} done", file=sys.stderr)
        finally:
            for tree, _ in contenders.values():
                if tree != ROOT:
                    subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)
    report(runs, list(contenders), args)


def report(runs: dict[tuple[str, str], list[dict[str, float | str]]], names: list[str],
           args: argparse.Namespace) -> None:
    def median(name: str, variant: str, key: str) -> float:
        return statistics.median(float(run[key]) for run in runs[(name, variant)])

    first = names[0]
    print(f"sample stage's sampling, {args.per_class * 10} images per run, medians of {args.rounds} rounds")
    print(f"  {'':<10}{'variant':<8}{'images/s':>10}{f'x {first}':>14}{'work s':>9}  tokens")
    for name in names:
        for variant in ("base", "kamig"):
            rate = median(name, variant, "images_per_s")
            speedup = rate / median(first, variant, "images_per_s")
            digests = {run["tokens"] for run in runs[(name, variant)] + runs[(first, variant)]}
            same = "the same bytes" if len(digests) == 1 else "OTHER tokens"
            print(f"  {name:<10}{variant:<8}{rate:10.1f}{speedup:13.2f}x"
                  f"{median(name, variant, 'work_s'):9.1f}  {same}")
    for name in names:
        print(f"  {name}: kamig / base, the stage's work "
              f"{median(name, 'kamig', 'work_s') / median(name, 'base', 'work_s'):.3f}x, token generation "
              f"{median(name, 'base', 'images_per_s') / median(name, 'kamig', 'images_per_s'):.3f}x")


if __name__ == "__main__":
    main()
