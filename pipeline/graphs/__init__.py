"""KA-MIG's token graphs: the ``graphs`` DVC stage (:mod:`.build`) and the files it writes.

``data/graphs/`` holds ``cooccurrence.parquet``, ``similarity.parquet`` and
``position_token_counts.parquet``. :mod:`pipeline.graphs.storage` owns their format and every read
of them, the knowledge adapter's included (:func:`pipeline.graphs.storage.load_knowledge_graphs`).
Importing this package loads neither faiss, polars nor torch.
"""
