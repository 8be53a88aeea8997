"""Sampling: MaskGIT decoding as one pure function (:mod:`.decode`) and the sample stage's work
(:mod:`.generate`: class-balanced batches across processes, merging, writing, the PNG grid)."""

from pipeline.sampling.decode import (
    DecodePlan,
    LogitsFn,
    decode_plan,
    guided_logits,
    maskgit_decode,
)
from pipeline.sampling.generate import (
    Samples,
    batch_generator,
    class_balanced_labels,
    generate_samples,
    merge_samples,
    write_samples,
)

__all__ = [
    "DecodePlan",
    "LogitsFn",
    "Samples",
    "batch_generator",
    "class_balanced_labels",
    "decode_plan",
    "generate_samples",
    "guided_logits",
    "maskgit_decode",
    "merge_samples",
    "write_samples",
]
