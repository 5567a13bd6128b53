"""`python -m opsmedic` behaves exactly like the `opsmedic` script."""

import sys

from opsmedic.cli import main

sys.exit(main())
