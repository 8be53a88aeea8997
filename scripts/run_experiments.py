"""Run the experiment grid behind reports/fashion_mnist.md, one `dvc exp run` after another.

    python scripts/run_experiments.py [--seeds 0 1 2] [--weights 0.5] [--no-ablation] [--dry-run]

The committed baseline (HEAD: all three graphs, fusion.weight 1.0, the seed of params.yaml) is the
first point; this runs every other combination of
  * seeds (re-trains the base model and both fine-tunes),
  * extra fusion weights (re-runs only the KA-MIG branch),
  * each graph alone (fusion.graphs ablation; re-runs both fine-tunes),
as workspace experiments, ordered by seed, so each seed's base model is trained once and reused by
the experiments that follow it. (A `dvc exp run --queue` grid works too, but every queued
experiment starts from HEAD's outputs, and `train_base`, whose checkpoints are a persistent output,
cannot be restored from DVC's run-cache: each queued run with a new seed would re-train it.)
Every run sets all grid params explicitly, experiments already present (by name) are skipped, so
the script can be re-run after an interruption, and at the end the workspace is restored to HEAD.
Commit the baseline first: `git add dvc.lock metrics && git commit -m baseline`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from pipeline.config import load_config

GRAPHS = ("cooccurrence", "similarity", "incompatibility")


# This interpreter's environment first on PATH, so DVC and the stages' `python` are the project's
# even when the virtual environment is not activated.
ENV = {**os.environ, "PATH": os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])}


def dvc(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dvc", *args], capture_output=True, text=True, env=ENV)


def existing_names() -> set[str]:
    result = dvc("exp", "list", "--all-commits", "--name-only")
    return set(result.stdout.split()) if result.returncode == 0 else set()


def overrides(seed: int, weight: float = 1.0, graphs: tuple[str, ...] = GRAPHS) -> list[str]:
    """All grid params, explicitly: a workspace experiment starts from the previous one's params."""
    # One grid seed drives the base model, the fine-tunes and the sampling together.
    return [f"seed={seed}", f"kamig.seed={seed}", f"sample.seed={seed}", f"fusion.weight={weight}",
            f"fusion.graphs=[{','.join(graphs)}]"]


def grid(seeds: list[int], weights: list[float], ablation: bool, baseline_seed: int
         ) -> list[tuple[str, list[str]]]:
    runs: list[tuple[str, list[str]]] = []
    for seed in seeds:
        if seed != baseline_seed:
            runs.append((f"seed{seed}", overrides(seed)))
        for weight in weights:
            runs.append((f"seed{seed}-w{weight:g}", overrides(seed, weight=weight)))
        if ablation:
            for graph in GRAPHS:
                runs.append((f"seed{seed}-{graph}", overrides(seed, graphs=(graph,))))
    return runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--weights", type=float, nargs="*", default=[0.5],
                        help="fusion weights besides the baseline's 1.0")
    parser.add_argument("--no-ablation", action="store_true", help="skip the one-graph-at-a-time runs")
    parser.add_argument("--dry-run", action="store_true", help="print the grid, run nothing")
    args = parser.parse_args()

    runs = grid(args.seeds, args.weights, not args.no_ablation, load_config().seed)
    present = existing_names()
    todo = [(name, settings) for name, settings in runs if name not in present]
    for name, settings in runs:
        print(f"{'done' if name in present else 'todo'}  {name:<24} {' '.join(settings)}")
    if args.dry_run or not todo:
        return 0
    started, failed = time.time(), []
    for index, (name, settings) in enumerate(todo, 1):
        print(f"[{index}/{len(todo)}] dvc exp run --name {name} {' '.join(settings)}", flush=True)
        command = ["exp", "run", "--name", name]
        for setting in settings:
            command += ["-S", setting]
        result = dvc(*command)
        ran = [line for line in result.stdout.splitlines() if line.startswith("Running stage")]
        print("    " + ("; ".join(ran) or "nothing re-ran"), flush=True)
        if result.returncode != 0:
            failed.append(name)
            print(result.stdout[-2000:] + result.stderr[-2000:], file=sys.stderr)
    # Back to the baseline: the experiments live on as refs (`dvc exp show`).
    subprocess.run(["git", "checkout", "--", "params.yaml", "dvc.lock", "metrics"], check=False)
    dvc("checkout", "--quiet")
    print(f"{len(todo) - len(failed)} experiments in {(time.time() - started) / 60:.1f} min"
          + (f"; failed: {', '.join(failed)}" if failed else "") + "; now: python scripts/make_report.py")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
