"""`python -m loadtest MODE ...`: the same as `earshot loadtest MODE ...`."""

import sys

from loadtest.cli import main

sys.exit(main())
