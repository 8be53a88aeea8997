"""The study behind ``reports/``: its grid and records (:mod:`study.grid`), their statistics
(:mod:`study.stats`), FID's sampling noise (:mod:`study.noise`) and the reports rendered from the
records (:mod:`study.report`, :mod:`study.part_two`).

No DVC stage imports this package: the study drives the pipeline from outside, one
``dvc exp run`` per experiment (``scripts/run_experiments.py``), and ``scripts/make_report.py``
renders the reports from the committed records alone.
"""
