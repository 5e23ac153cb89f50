"""`python -m agent` is the same as the `stm32ota` command."""

import sys

from agent.cli import main

sys.exit(main())
