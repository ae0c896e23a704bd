"""`python -m shipper` is the same as the `moodle-tsdb-shipper` command."""

import sys

from .cli import main

sys.exit(main())
