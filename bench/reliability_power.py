"""The "Power loss" category of bench/reliability.py: the state store cut at every disk operation.

A kill -9 leaves the page cache to be written; a power loss does not. Each trial runs one
install's worth of state changes on `tests/powerloss.PowerLossDisk`, cuts the power at one
operation, rebuilds what the medium would hold (only fsync'ed data, and of the folder changes
not yet fsync'ed a random prefix), then loads the state and runs `Updater.recover` on it: the
state must load, never fall behind an acknowledged save, and the open job must be queued again.
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

from powerloss import count_ops, trial
from reliability import LogWatch, Row, category


@category("POWER")
def power_category(quick: bool) -> Row:
    """Power cut at every disk operation of an install (several journal outcomes each)."""
    row = Row("Power loss")
    rng = random.Random(20)
    with tempfile.TemporaryDirectory(prefix="stm32ota-rel-power-") as tmp, LogWatch() as logs:
        total = count_ops(Path(tmp))
        cuts = range(0, total + 1, 4) if quick else range(total + 1)
        for cut in cuts:
            for _ in range(2 if quick else 20):
                seed = rng.randrange(1 << 30)
                work = Path(tmp) / f"cut{cut}-{seed}"
                row.tried += 1
                row.expected += 1
                found = trial(work, cut, seed)
                # the trial writes only the state folder and its rebuilt copy
                row.outside_bytes += sum(p.stat().st_size for p in work.iterdir() if p.is_file())
                if found:
                    row.failures.append(f"cut at {cut} (seed {seed}): {found[0]}")
                else:
                    row.clean += 1
                    row.delivered += 1
        row.tracebacks += logs.tracebacks
    row.figures["disk operations per install"] = str(total)
    return row
