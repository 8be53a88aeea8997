"""Stage ``tokenize``: encode the train and val images into Parquet token shards.

Writes ``data/tokens/{train,val}/part-NNNNN.parquet`` and ``data/tokens/meta.json`` (the contract of
:mod:`pipeline.shards`), and ``metrics/tokenize.json`` (throughput). The shards' bytes do not depend
on the batch size or the number of processes. The work is
:func:`pipeline.tokenizer.encode.tokenize_splits`.

Usage: ``python -m pipeline.stages.tokenize`` (or under ``accelerate launch``).
"""

from __future__ import annotations

from pipeline import layout
from pipeline.config import Config
from pipeline.files import write_json
from pipeline.launch import shared_stage
from pipeline.runtime import stage_main
from pipeline.shards import write_meta
from pipeline.tokenizer.encode import token_meta, tokenize_splits


def run(cfg: Config) -> None:
    with shared_stage() as state:
        meta = token_meta()
        report = tokenize_splits(cfg, meta, state)
        if state.is_main_process:
            write_meta(layout.TOKENS_DIR, meta)
            write_json(layout.stage_metrics("tokenize"), report)


def main() -> None:
    stage_main("tokenize", run,
               outputs=lambda: [layout.TOKENS_DIR / "meta.json", layout.stage_metrics("tokenize")])


if __name__ == "__main__":
    main()
