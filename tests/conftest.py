"""Shared test setup.

Tiny models run much faster on one thread than on two contending ones (and CI has 2 cores), so
the whole suite pins torch to a single intra-op thread.
"""

import torch

torch.set_num_threads(1)
