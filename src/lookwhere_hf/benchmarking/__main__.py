"""`python -m lookwhere_hf.benchmarking`: the same as `lookwhere-hf benchmark`."""

import sys

from .command import main

sys.exit(main())
