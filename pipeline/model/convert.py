"""Import published generator checkpoints into a model directory (``models/<variant>/``).

Usage::

    python -m pipeline.model.convert --from autonat nnet_ema.pth models/base [--heads 8]
        [--tokens-meta data/tokens/meta.json]
    python -m pipeline.model.convert --from kamig graph_nnet_ema.pth models/kamig \\
        --cooccurrence CO.pkl --similarity RE.pkl --incompatibility POS.pkl [--heads 8]
        [--base nnet_ema.pth] [--tokens-meta data/tokens/meta.json]

* ``--from autonat``: AutoNAT-L's ``nnet_ema.pth`` (:mod:`pipeline.model.autonat`), written as the
  variant "base".
* ``--from kamig``: the authors' released KA-MIG model with its three graph files
  (:mod:`pipeline.model.kamig`), written as the variant "kamig" with ``fusion.adapter: official``.
  Each input's sha256 is printed; ``--base`` also reports whether the released backbone equals
  AutoNAT-L apart from ``mlm_layer`` (unverified by the spec).

The number of heads is not in the weights (AutoNAT-L: 8). The token meta comes from the shapes
(square grid, fingerprint ``imported:autonat``: the tokens of the MaskGIT VQGAN, which both use)
or, with ``--tokens-meta``, from the project's ``data/tokens/meta.json``, which must agree with them.
Nothing in any file runs: ``torch.load(weights_only=True)`` and a restricted unpickler.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.files import file_digest
from pipeline.model.autonat import AUTONAT_HEADS, import_autonat, read_torch_state, token_meta_for
from pipeline.model.io import save_generator
from pipeline.model.kamig import ReleasedFiles, compare_backbones, import_kamig
from pipeline.model.uvit import UViT


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline.model.convert",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--from", dest="source", required=True, choices=["autonat", "kamig"],
                        help="autonat: ImprovedNAT's nnet_ema.pth; kamig: KA-MIG's graph_nnet_ema.pth")
    parser.add_argument("checkpoint", help="the .pth file (autonat: or an AutoNAT <step>.ckpt directory)")
    parser.add_argument("out_dir", help="model directory to write (e.g. models/base)")
    parser.add_argument("--heads", type=int, default=AUTONAT_HEADS,
                        help=f"attention heads (not stored in the file; AutoNAT-L: {AUTONAT_HEADS})")
    parser.add_argument("--tokens-meta", default=None,
                        help="data/tokens/meta.json to record instead of a meta derived from the shapes")
    kamig = parser.add_argument_group("--from kamig")
    kamig.add_argument("--cooccurrence", help="the co-occurrence graph pickle (codebook_co_occurrence_*.pkl)")
    kamig.add_argument("--similarity", help="the similarity graph pickle (codebook_replace_graph_*.pkl)")
    kamig.add_argument("--incompatibility", help="the class-position incompatibility pickle")
    kamig.add_argument("--base", help="AutoNAT-L's nnet_ema.pth, to compare the released backbone with")
    return parser


def _import_kamig(args: argparse.Namespace) -> UViT:
    names = ("cooccurrence", "similarity", "incompatibility")
    missing = [f"--{name}" for name in names if not getattr(args, name)]
    if missing:
        raise PipelineError(f"--from kamig needs {', '.join(missing)} (the released graph files)")
    files = ReleasedFiles(*(Path(p) for p in (args.checkpoint, args.cooccurrence, args.similarity,
                                              args.incompatibility)))
    for path in (files.checkpoint, files.cooccurrence, files.similarity, files.incompatibility):
        print(f"sha256 {file_digest(path)}  {path}")
    model = import_kamig(files, heads=args.heads)
    if args.base:
        print(f"sha256 {file_digest(args.base)}  {args.base}")
        differ = compare_backbones(model, read_torch_state(args.base))
        listed = ", ".join(differ[:8])
        verdict = f"differs in {len(differ)} tensors ({listed}) from" if differ else "equals"
        print(f"the released backbone {verdict} {args.base}, mlm_layer.* aside")
    return model


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    started = time.perf_counter()
    try:
        if args.source == "kamig":
            model, variant = _import_kamig(args), "kamig"
        else:
            model, variant = import_autonat(args.checkpoint, heads=args.heads), "base"
        meta = token_meta_for(model, args.tokens_meta)
        save_generator(model, args.out_dir, variant=variant, token_meta=meta)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    spec = model.spec
    adapter = " + the official KA-MIG graph layer" if model.adapter is not None else ""
    print(f"wrote {args.out_dir}: AutoNAT U-ViT{adapter}, {spec.half_depth}+1+{spec.half_depth} blocks, "
          f"dim {spec.dim}, {spec.heads} heads, {spec.codebook_size} codes, {spec.num_classes} classes, "
          f"seq_len {spec.seq_len} ({time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
