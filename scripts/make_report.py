"""Write reports/fashion_mnist.md and reports/part_two.md from the study's experiment records.

    python scripts/make_report.py [--results reports/study] [--output reports/fashion_mnist.md]
        [--sampling-noise reports/sampling_noise.json]
        [--adapters reports/study/adapters] [--long reports/study/long] [--part-two reports/part_two.md]

Reads every record that `python scripts/run_experiments.py` wrote (one JSON per experiment, all
variants and floors scored) and renders the paired comparison with study.report, with the
sampling noise measured by scripts/sampling_noise.py when reports/sampling_noise.json exists. Part
two (study.part_two) reads the two later series: both adapters at 7 x 7 tokens, and 14 x 14 tokens.
The records are committed, so the reports can be rebuilt from a clean clone without re-running
anything.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline.files import write_text
from study.grid import load_records
from study.part_two import render_part_two
from study.report import render_report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", default="reports/study")
    parser.add_argument("--output", default="reports/fashion_mnist.md")
    parser.add_argument("--sampling-noise", default="reports/sampling_noise.json",
                        help="scripts/sampling_noise.py's result, shown when the file exists")
    parser.add_argument("--adapters", default="reports/study/adapters", help="part two: both adapters, 7x7")
    parser.add_argument("--long", default="reports/study/long", help="part two: 14x14 tokens")
    parser.add_argument("--part-two", default="reports/part_two.md")
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
    adapters, long = load_records(args.adapters), load_records(args.long)
    write_text(args.part_two, render_part_two(adapters, long))
    print(f"wrote {args.part_two} from {len(adapters)} + {len(long)} experiments")
    return 0


if __name__ == "__main__":
    sys.exit(main())
