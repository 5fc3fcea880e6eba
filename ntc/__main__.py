"""`python -m ntc`: the same as the `ntc` command."""

import sys

from .cli import main

sys.exit(main())
