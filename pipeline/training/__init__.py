"""Training the generators: masked-token training with accelerate, resumable and deterministic.

* :mod:`.runs` - ``train_base`` and ``finetune`` from params to a trained model, and saving it;
* :mod:`.loop` - the loop itself (:func:`train_generator`) and masked validation;
* :mod:`.batches` - data order, masking and the masked-token loss, derived from (seed, step);
* :mod:`.optim` - AdamW, the learning-rate schedule, mixed precision;
* :mod:`.checkpoints` - checkpoints, fingerprints and resume;
* :mod:`.live` - the DVCLive training curves.
"""
