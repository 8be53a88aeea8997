"""The generator: MaskGIT backbone (``transformer``), AutoNAT U-ViT backbone (``uvit``; published
weights via ``convert``), KA-MIG adapter (``knowledge``), disk format (``io``).

Sampler and evaluation use::

    model = load_generator("models/kamig", device)       # eval mode, EMA weights, adapter included
    model.precompute()                                    # freeze the adapter's inference tables
    logits = model(tokens, labels)                        # (B, L) with mask_id, (B,) -> (B, L, V)
    model.mask_id, model.null_class, model.codebook_size, model.num_classes, model.seq_len
"""

from pipeline.model.io import build_generator, check_token_meta, load_generator, save_generator
from pipeline.model.knowledge import KnowledgeAdapter, KnowledgeGraphs
from pipeline.model.transformer import GeneratorSpec, MaskGIT, count_parameters
from pipeline.model.uvit import UViT, UViTSpec

__all__ = [
    "GeneratorSpec",
    "KnowledgeAdapter",
    "KnowledgeGraphs",
    "MaskGIT",
    "UViT",
    "UViTSpec",
    "build_generator",
    "check_token_meta",
    "count_parameters",
    "load_generator",
    "save_generator",
]
