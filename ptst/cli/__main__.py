"""`python -m ptst.cli` runs the `ptst` command (the tests start it this way)."""

import sys

from ptst.cli.app import main

sys.exit(main())
