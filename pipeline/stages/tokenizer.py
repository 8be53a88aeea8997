"""Stage ``tokenizer``: train the VQ-VAE (``tokenizer.kind: train``) or import the MaskGIT VQGAN.

Writes ``models/tokenizer/`` (config.json + model.safetensors), ``metrics/tokenizer.json`` (reconstruction
and codebook statistics on val, and the fingerprint every token shard records) and
``metrics/plots/tokenizer_recon.png`` (originals above their reconstructions). The work is
:func:`pipeline.tokenizer.train.fit_tokenizer`.

Usage: ``python -m pipeline.stages.tokenizer``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict

from pipeline import layout
from pipeline.config import Config
from pipeline.files import atomic_dir, write_json
from pipeline.images import save_png
from pipeline.launch import single_process_device
from pipeline.runtime import stage_main
from pipeline.tokenizer.base import save_tokenizer
from pipeline.tokenizer.train import evaluate_tokenizer, fit_tokenizer, reconstruction_grid, val_batches

log = logging.getLogger(__name__)
RECON_PLOT = layout.PLOTS_DIR / "tokenizer_recon.png"


def run(cfg: Config) -> None:
    device = single_process_device()
    tokenizer = fit_tokenizer(cfg, device)
    with atomic_dir(layout.TOKENIZER_DIR) as tmp:
        fingerprint = save_tokenizer(tokenizer, tmp)
    report = evaluate_tokenizer(tokenizer, val_batches(cfg, cfg.tokenizer.eval_images), device)
    write_json(layout.stage_metrics("tokenizer"), {**asdict(report), "fingerprint": fingerprint})
    save_png(RECON_PLOT, reconstruction_grid(cfg, tokenizer))
    log.info("tokenizer %s: psnr %.2f dB, codebook usage %.3f, perplexity %.1f",
             fingerprint, report.psnr, report.codebook_usage, report.perplexity)


def main() -> None:
    stage_main("tokenizer", run,
               outputs=lambda: [layout.TOKENIZER_DIR, layout.stage_metrics("tokenizer"), RECON_PLOT])


if __name__ == "__main__":
    main()
