"""The generators, one module each, imported by name (this package imports nothing itself, so a
stage that needs only a backbone does not depend on the adapters and the graph code):

* :mod:`~pipeline.model.transformer` (MaskGIT) and :mod:`~pipeline.model.uvit` (AutoNAT's U-ViT):
  the backbones; :mod:`~pipeline.model.adapter`: the interface they call an adapter through;
* :mod:`~pipeline.model.knowledge` (``fusion.adapter: pipeline``) and :mod:`~pipeline.model.official`
  (``official``, the published KA-MIG layer): the two knowledge adapters;
* :mod:`~pipeline.model.io`: the disk format; :mod:`~pipeline.model.generators`: building and
  loading a generator with its adapter; :mod:`~pipeline.model.convert`: importing published weights.

Sampler and evaluation use::

    model = load_generator("models/kamig", device)       # pipeline.model.generators; eval mode
    model.precompute()                                    # freeze the adapter's inference tables
    logits = model(tokens, labels)                        # (B, L) with mask_id, (B,) -> (B, L, V)
    model.mask_id, model.null_class, model.codebook_size, model.num_classes, model.seq_len
"""
