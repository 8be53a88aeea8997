"""Stage ``sample@{base,control,permuted,kamig}``: class-balanced MaskGIT samples of one variant.

Writes ``data/samples/<variant>/`` (tokens in the token-shard schema, :mod:`pipeline.shards`),
``metrics/plots/samples_<variant>.png`` (decoded samples, one row per class) and
``metrics/sample_<variant>.json`` (throughput, read by ``evaluate@<variant>``; kept out of
``data/samples`` so the token folder is byte-identical for a seed). The tokens depend only on
``sample.*`` and the model, whatever the number of processes. The work is
:func:`pipeline.sampling.generate.sample_variant`.

Usage: ``python -m pipeline.stages.sample base|control|permuted|kamig`` (or under ``accelerate launch``).
"""

from __future__ import annotations

from collections.abc import Sequence

from pipeline import layout
from pipeline.config import Config
from pipeline.files import write_json
from pipeline.images import save_png
from pipeline.launch import shared_stage
from pipeline.runtime import stage_main
from pipeline.sampling.generate import sample_grid, sample_variant, throughput, write_samples
from pipeline.shards import read_meta


def run(cfg: Config, variant: str) -> None:
    with shared_stage() as state:
        meta = read_meta(layout.TOKENS_DIR)
        samples = sample_variant(cfg, variant, meta, state)
        if state.is_main_process:
            write_samples(layout.samples_dir(variant), meta, samples)
            save_png(layout.sample_grid(variant), sample_grid(cfg.sample, meta, samples, state.device))
            write_json(layout.sample_metrics(variant), throughput(cfg.sample, samples, state.device))


def outputs(variant: str) -> list:
    return [layout.samples_dir(variant), layout.sample_grid(variant), layout.sample_metrics(variant)]


def main(argv: Sequence[str] | None = None) -> None:
    stage_main("sample", run, outputs=outputs, variants=layout.GENERATOR_VARIANTS, argv=argv)


if __name__ == "__main__":
    main()
