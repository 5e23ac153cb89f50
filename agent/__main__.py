"""`python -m agent` is the same as the `stm32ota` command."""

from agent.cli import console

console()
