"""``python -m pipeline.config``: check, show or apply a preset (:mod:`pipeline.config.loading`)."""

import sys

from pipeline.config.loading import main

sys.exit(main())
