"""`python -m richkd ...` (also what `torchrun -m richkd train ...` runs)."""

import sys

from richkd.cli import main

sys.exit(main())
