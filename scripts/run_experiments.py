"""Run the study behind reports/fashion_mnist.md, one `dvc exp run` after another; resumable.

    python scripts/run_experiments.py [--finetune-seeds 0 1 ... 9] [--second-base 0 1 2 3 4]
        [--ablation 0 1 2] [--negative 0 1 2] [--adapters pipeline official]
        [--preset configs/study.yaml] [--per-class N] [--results reports/study] [--budget-min M]
        [--dry-run]

The grid and its order are study.grid's: fine-tune seeds on base 0 first (the main
comparison, once per adapter in --adapters), then fusion.negative_at: masked, the one-graph
ablation, and a second base seed. The study's series (docs/study.md) are calls of this
script with their own --results directory; `make study-adapters` and `make study-long` give them.
Each experiment is a named `dvc exp run` with every setting of the study's scale (configs/study.yaml,
or --preset) and every grid param set; `--per-class` overrides the scale's sample count (a quick
look; its records are not comparable). Its record (settings, metrics of all variants and floors,
wall time and each stage's share of it) goes to <results>/<name>.json. Names with a record are
skipped, so after an interruption the same command resumes; commit the records as they arrive.
`--budget-min` stops starting new experiments after that many minutes. At the end the workspace
is restored to HEAD.

Before the first experiment on each base seed, the runner checks out the outputs of the newest
finished experiment (a DVC experiment ref in this repository) on the same base and scale: only its
dvc.lock and metrics, never its code or params. DVC re-runs whatever differs from that lock, and
the base model, which the run-cache cannot restore (persistent checkpoints), is not trained again.

Then: python scripts/make_report.py.

Run it on a clean checkout of a commit whose dvc.lock is current (`dvc repro` first): the code of
the workspace is what every experiment runs.

A record joins a series only when its tokenizer and base model are the very tensors of the series'
other records on that base seed (their fingerprints): a base model trained on another CPU is
another model. The runner stops at the first record that would break that, and keeps it aside as
<results>/rejected/<name>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from pipeline.config import ConfigError
from pipeline.files import write_text
from study.grid import (
    ADAPTERS,
    STUDY_PRESET,
    collect_record,
    dvc_set_arguments,
    fingerprint_conflicts,
    load_records,
    stage_durations,
    study_grid,
    study_scale,
    warm_start_names,
)

# This interpreter's environment first on PATH, so DVC and the stages' `python` are the project's
# even when the virtual environment is not activated.
ENV = {**os.environ, "PATH": os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])}


def dvc(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dvc", *args], capture_output=True, text=True, env=ENV)


def timed_exp_run(*args: str) -> tuple[int, str, list[tuple[float, str]]]:
    """``dvc exp run *args``: (return code, its output, (seconds since start, stage) as each stage
    started). The output is read as it comes, so each stage's start is timed."""
    started, starts, lines = time.time(), [], []
    with subprocess.Popen([sys.executable, "-m", "dvc", "exp", "run", *args], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, env=ENV) as proc:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("Running stage"):
                starts.append((time.time() - started, line.split("'")[1]))
    return proc.returncode, "".join(lines), starts


def head_commit() -> str:
    result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    return result.stdout.strip()


def warm_start(names: list[str]) -> str | None:
    """Check out the outputs of the newest experiment ref among ``names``; the name, or None.

    Only its ``dvc.lock`` and the git-tracked metrics are taken from the ref, never code or
    params: DVC then re-runs every stage whose dependencies differ from that lock's, and serves
    the rest (tokenizer, graphs, base model) from the cache.
    """
    listing = subprocess.run(["git", "for-each-ref", "--sort=-committerdate", "--format=%(refname)",
                              "refs/exps"], capture_output=True, text=True).stdout.split()
    ref = next((ref for ref in listing if ref.rsplit("/", 1)[-1] in names), None)
    if ref is None:
        return None
    name = ref.rsplit("/", 1)[-1]
    # The work tree only: the index keeps HEAD's files, which the closing restore returns to.
    restore = ["git", "restore", f"--source={ref}", "--worktree", "--", "dvc.lock", "metrics"]
    if subprocess.run(restore).returncode != 0:
        return None
    if dvc("checkout", "--quiet").returncode != 0:  # some output left the cache: its stage re-runs
        print("    (some outputs of that experiment are no longer in the cache)")
    return name


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--finetune-seeds", type=int, nargs="*", default=list(range(10)))
    parser.add_argument("--second-base", type=int, nargs="*", default=list(range(5)),
                        help="fine-tune seeds on base seed 1")
    parser.add_argument("--ablation", type=int, nargs="*", default=list(range(3)),
                        help="fine-tune seeds of the one-graph ablation")
    parser.add_argument("--negative", type=int, nargs="*", default=list(range(3)),
                        help="fine-tune seeds with fusion.negative_at: masked")
    parser.add_argument("--adapters", nargs="+", default=["pipeline"], choices=ADAPTERS,
                        help="fusion.adapter values of the main comparison, each on every seed")
    parser.add_argument("--preset", default=str(STUDY_PRESET), help="the study's scale, a params overlay")
    parser.add_argument("--per-class", type=int, default=None, help="override the scale's sample.per_class")
    parser.add_argument("--results", default="reports/study")
    parser.add_argument("--budget-min", type=float, default=None, help="start no experiment after this")
    parser.add_argument("--dry-run", action="store_true", help="print the grid, run nothing")
    args = parser.parse_args()

    results = Path(args.results)
    try:  # a typo in the preset, or a key the grid varies, fails before any experiment
        scale = study_scale(args.preset)
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.per_class is not None:
        scale["sample.per_class"] = args.per_class
    runs = study_grid(args.finetune_seeds, args.second_base, args.ablation, args.negative, args.adapters)
    todo = [run for run in runs if not (results / f"{run.name}.json").is_file()]
    print(f"scale ({args.preset}): {' '.join(dvc_set_arguments(scale)[1::2])}")
    for run in runs:
        state = "todo" if run in todo else "done"
        print(f"{state}  {run.name:<28} {' '.join(dvc_set_arguments(run.overrides({}))[1::2])}")
    if args.dry_run or not todo:
        return 0
    commit, started, failed, finished = head_commit(), time.time(), [], 0
    base_in_workspace = None  # HEAD's outputs are the default DAG's, not the study's
    for index, run in enumerate(todo, 1):
        if args.budget_min is not None and time.time() - started > 60 * args.budget_min:
            print(f"budget of {args.budget_min:g} min spent: {len(todo) - index + 1} experiments left")
            break
        if run.base_seed != base_in_workspace:
            # A new base model: start from a finished experiment on it rather than train it again.
            source = warm_start(warm_start_names(load_records(results), run, scale))
            if source:
                print(f"    starting from the outputs of {source} (same base model and scale)")
            base_in_workspace = run.base_seed
        settings = dvc_set_arguments(run.overrides(scale))
        print(f"[{index}/{len(todo)}] dvc exp run --name {run.name} {' '.join(settings)}", flush=True)
        # A name left by an interrupted run would make DVC refuse to run it again.
        dvc("exp", "remove", run.name)
        run_started = time.time()
        returncode, output, starts = timed_exp_run("--name", run.name, *settings)
        seconds = time.time() - run_started
        stages = [stage for _, stage in starts]
        print(f"    {seconds / 60:.1f} min; ran {', '.join(stages) or 'nothing'}", flush=True)
        if returncode != 0:
            failed.append(run.name)
            print(output[-4000:], file=sys.stderr)
            continue
        record = collect_record(run, scale, seconds, stages, commit,
                                stage_seconds=stage_durations(starts, seconds))
        text = json.dumps(record, indent=2, sort_keys=True) + "\n"
        conflicts = fingerprint_conflicts(record, load_records(results))
        if conflicts:
            write_text(results / "rejected" / f"{run.name}.json", text)
            print(f"error: {run.name} ran on another tokenizer or base model ({record['fingerprints']}) than "
                  f"{', '.join(conflicts)} in {results}: they cannot be paired. Run the series where its "
                  f"records were made, or start a new --results directory. Kept aside in "
                  f"{results / 'rejected'}.", file=sys.stderr)
            failed.append(run.name)
            break
        write_text(results / f"{run.name}.json", text)
        finished += 1
    # Back to HEAD: the experiments live on as refs (`dvc exp show`) and as the records.
    subprocess.run(["git", "checkout", "--", "params.yaml", "dvc.lock", "metrics"], check=False)
    dvc("checkout", "--quiet")
    print(f"{finished} experiments in {(time.time() - started) / 60:.1f} min"
          + (f"; failed: {', '.join(failed)}" if failed else "") + "; now: python scripts/make_report.py")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
