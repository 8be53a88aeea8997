"""Write reports/fashion_mnist.md from the DVC experiments of this repository.

    python scripts/make_report.py [--output reports/fashion_mnist.md] [--exp-show saved.json]

Reads `dvc exp show --json` (all commits' and experiments' params and metrics) and renders the
comparison of base, control and KA-MIG with pipeline.report. Run scripts/run_experiments.py first.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from pipeline.files import write_text
from pipeline.report import records_from_exp_show, render_report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default="reports/fashion_mnist.md")
    parser.add_argument("--exp-show", help="a saved `dvc exp show --json` output instead of calling dvc")
    args = parser.parse_args()
    if args.exp_show:
        shown = json.loads(Path(args.exp_show).read_text())
    else:
        result = subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json", "--all-commits"],
                                capture_output=True, text=True)
        if result.returncode != 0:
            print(result.stderr, file=sys.stderr)
            return result.returncode
        shown = json.loads(result.stdout)
    records = records_from_exp_show(shown)
    if not records:
        print("error: no experiment with complete evaluation metrics found", file=sys.stderr)
        return 1
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    write_text(args.output, render_report(records))
    print(f"wrote {args.output} from {len(records)} experiments")
    return 0


if __name__ == "__main__":
    sys.exit(main())
