"""Queue and run the experiment grid behind reports/fashion_mnist.md.

    python scripts/run_experiments.py [--seeds 0 1 2] [--weights 0.5] [--no-ablation] [--dry-run]

The committed baseline (HEAD: seed from params.yaml, all three graphs, fusion.weight 1.0) is the
first point; this queues, with `dvc exp run --queue`, every other combination of
  * seeds (re-trains the base model and both fine-tunes),
  * extra fusion weights (re-runs only the KA-MIG branch),
  * each graph alone (fusion.graphs ablation; re-runs both fine-tunes),
then runs the queue with `dvc queue start` and waits. Experiments already present (by name) are
skipped, so the script can be re-run after an interruption. Commit the baseline first:
`git add dvc.lock metrics && git commit -m baseline`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from pipeline.config import load_config

GRAPHS = ("cooccurrence", "similarity", "incompatibility")


def dvc(*args: str, capture: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["dvc", *args], capture_output=capture, text=True)


def existing_names() -> set[str]:
    result = dvc("exp", "list", "--name-only")
    queued = dvc("queue", "status")
    names = set(result.stdout.split()) if result.returncode == 0 else set()
    for line in queued.stdout.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 2:
            names.add(parts[1])
    return names


def grid(seeds: list[int], weights: list[float], ablation: bool, baseline_seed: int
         ) -> list[tuple[str, list[str]]]:
    runs: list[tuple[str, list[str]]] = []
    for seed in seeds:
        seed_args = [] if seed == baseline_seed else [f"seed={seed}"]
        if seed != baseline_seed:
            runs.append((f"seed{seed}", seed_args))
        for weight in weights:
            runs.append((f"seed{seed}-w{weight:g}", [*seed_args, f"fusion.weight={weight}"]))
        if ablation:
            for graph in GRAPHS:
                runs.append((f"seed{seed}-{graph}", [*seed_args, f"fusion.graphs=[{graph}]"]))
    return runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--weights", type=float, nargs="*", default=[0.5],
                        help="fusion weights besides the baseline's 1.0")
    parser.add_argument("--no-ablation", action="store_true", help="skip the one-graph-at-a-time runs")
    parser.add_argument("--dry-run", action="store_true", help="print the grid, queue nothing")
    args = parser.parse_args()

    runs = grid(args.seeds, args.weights, not args.no_ablation, load_config().seed)
    present = existing_names()
    todo = [(name, overrides) for name, overrides in runs if name not in present]
    for name, overrides in runs:
        print(f"{'skip ' if name in present else 'queue'} {name:<28} {' '.join(overrides)}")
    if args.dry_run or not todo:
        return 0
    for name, overrides in todo:
        command = ["exp", "run", "--queue", "--name", name]
        for override in overrides:
            command += ["-S", override]
        result = dvc(*command)
        if result.returncode != 0:
            print(result.stdout + result.stderr, file=sys.stderr)
            return result.returncode
    started = time.time()
    dvc("queue", "start", "--jobs", "1", capture=False)
    while True:
        status = dvc("queue", "status").stdout
        if not any(word in status for word in ("Running", "Queued")):
            break
        time.sleep(30)
    print(status)
    print(f"queue finished in {(time.time() - started) / 60:.1f} min; now: python scripts/make_report.py")
    return 1 if "Failed" in status else 0


if __name__ == "__main__":
    sys.exit(main())
