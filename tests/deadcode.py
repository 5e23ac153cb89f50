"""Dead code in agent/ as `Violation`s: vulture's findings, less true false positives.

The default min-confidence, 60, is vulture's lowest: besides unused imports (90%), arguments and
unreachable code (100%) it keeps unused functions, classes, methods, attributes and variables
(60%), the kind of dead code issue 7 lists (an unused class, constant, method, function).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Optional, Sequence

from layers import Violation

VULTURE_LINE = re.compile(r"^(?P<path>.+?):(?P<line>\d+): (?P<what>.+) \((?P<confidence>\d+)% "
                          r"confidence")


def check_dead_code(root: Path, allowlist: Optional[Path] = None,
                    ignore_decorators: Sequence[str] = (), min_confidence: int = 60
                    ) -> list[Violation]:
    """What vulture finds unused in root/agent, less the allowlist and the generator idiom."""
    paths = ["agent"] + ([str(allowlist.resolve())] if allowlist else [])
    command = [sys.executable, "-m", "vulture", *paths, "--min-confidence", str(min_confidence)]
    if ignore_decorators:
        command += ["--ignore-decorators", ",".join(ignore_decorators)]
    run = subprocess.run(command, cwd=root, capture_output=True, text=True, check=False)
    if run.returncode not in (0, 3):  # vulture: 0 nothing unused, 3 dead code found
        raise RuntimeError(f"vulture failed ({run.returncode}): {run.stderr.strip()}")
    found = []
    for match in map(VULTURE_LINE.match, run.stdout.splitlines()):
        if match is None or not match["path"].startswith("agent/"):
            continue
        path, line = match["path"], int(match["line"])
        if match["what"].startswith("unreachable code") and _bare_yield(root / path, line):
            continue  # `return` then `yield`: the idiom that makes a function a generator
        found.append(Violation(path, line, "dead-code",
                               f"{match['what']} ({match['confidence']}% confidence)"))
    return found


def _bare_yield(path: Path, line: int) -> bool:
    """Whether the line is a lone `yield` statement (comments aside)."""
    text = path.read_text(encoding="utf-8").splitlines()[line - 1]
    return text.split("#", 1)[0].strip() == "yield"
