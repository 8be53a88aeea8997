"""Write reports/fashion_mnist.md from the study's experiment records.

    python scripts/make_report.py [--results reports/study] [--output reports/fashion_mnist.md]
        [--sampling-noise reports/sampling_noise.json]

Reads every record that `python scripts/run_experiments.py` wrote (one JSON per experiment, all
variants and floors scored) and renders the paired comparison with study.report, with the
sampling noise measured by scripts/sampling_noise.py when reports/sampling_noise.json exists. The records
are committed, so the report can be rebuilt from a clean clone without re-running anything.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline.files import write_text
from study.grid import load_records
from study.report import render_report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", default="reports/study")
    parser.add_argument("--output", default="reports/fashion_mnist.md")
    parser.add_argument("--sampling-noise", default="reports/sampling_noise.json",
                        help="scripts/sampling_noise.py's result, shown when the file exists")
    args = parser.parse_args()
    records = load_records(args.results)
    if not records:
        print(f"error: no experiment records in {args.results}: run scripts/run_experiments.py",
              file=sys.stderr)
        return 1
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    noise_path = Path(args.sampling_noise)
    noise = json.loads(noise_path.read_text()) if noise_path.is_file() else None
    write_text(args.output, render_report(records, sampling_noise=noise))
    print(f"wrote {args.output} from {len(records)} experiments")
    return 0


if __name__ == "__main__":
    sys.exit(main())
