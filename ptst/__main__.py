"""`python -m ptst ...` (also what `accelerate launch -m ptst` and `torchrun -m ptst` call)."""

import sys

from ptst.cli import main

sys.exit(main())
