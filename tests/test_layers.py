"""STYLE.md's layers as a test: every rule holds for agent/, and every check catches a planted break.

The checks are pure functions over a source tree (tests/layers.py). Layers, top to bottom: cli,
demo, service, config, mqtt, ota, flasher, stm32, link, pins, then errors.py, progress.py,
systemd.py (and agent/__init__.py's __version__); a module imports from its own layer and the
ones below. sim/ sits aside: only cli/sim.py and demo/ import it, and it imports only stm32/,
errors and progress. Every agent import counts, including one inside a function or under
`if TYPE_CHECKING:` (which is a violation of its own): hiding an import does not remove it.
"""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from pathlib import Path
from typing import Callable, Optional

import pytest

import deadcode
import layers
from layers import Violation

ROOT = Path(__file__).resolve().parent.parent
ALLOWLIST = Path(__file__).with_name("vulture_allowlist.py")
# subcommand handlers are reached through the registries these decorators fill (cli/options.py)
VULTURE_DECORATORS = ("@parser", "@command")

CHECKS: dict[str, Callable[[Path], list[Violation]]] = {
    "layers": layers.check_layers,
    "cycles": layers.check_cycles,
    "local-imports": layers.check_local_imports,
    "boundaries": layers.check_boundaries,
    "third-party": layers.check_third_party,
    "errors": layers.check_errors,
    "sizes": layers.check_sizes,
}
HINTS = {
    "layers": "imports point down: " + " > ".join(layers.LAYERS[:-1])
              + " > errors/progress/systemd; only cli/sim.py and demo/ import sim/",
    "cycles": "move what both modules need down a layer, or into one of them",
    "local-imports": "lazy imports are for optional third-party libraries only",
    "boundaries": "ota/ and flasher/ get their values passed in; stm32/ talks to a Link",
    "third-party": "each library has one owner module (layers.OWNERS); others call the owner",
    "errors": "define the error in agent/errors.py (with its code and exit code)",
    "sizes": "a module over 400 lines or a function over 50 is a sign to split (STYLE.md)",
    "dead-code": "delete it; a name only a library calls goes in tests/vulture_allowlist.py",
}


def report(rule: str, found: list[Violation]) -> str:
    """The failure message: the rule, what to do, then one `path:line: [rule] why` per line."""
    lines = "\n".join(map(str, found))
    return f"{len(found)} violation(s) of rule {rule!r} ({HINTS[rule]}):\n{lines}"


@pytest.mark.parametrize("rule", list(CHECKS))
def test_agent_keeps_the_rule(rule: str) -> None:
    found = CHECKS[rule](ROOT)
    assert not found, report(rule, found)


def need_vulture() -> None:
    """Fail, saying what to install, where vulture (the `test` extra) is missing."""
    if importlib.util.find_spec("vulture") is None:
        pytest.fail("vulture is not installed: pip install -e '.[test]'")


def test_agent_has_no_dead_code() -> None:
    need_vulture()
    found = deadcode.check_dead_code(ROOT, ALLOWLIST, VULTURE_DECORATORS)
    assert not found, report("dead-code", found)


# ----- each check fails on a planted violation --------------------------------------------------

# a small tree that keeps every rule: the planted tests each break one
CLEAN = {
    "agent/__init__.py": '__version__ = "0"\n',
    "agent/__main__.py": "from agent.cli import main\n",
    "agent/errors.py": "class Stm32OtaError(Exception):\n    pass\n\n\n"
                       "class ProtocolError(Stm32OtaError):\n    pass\n",
    "agent/progress.py": "from agent.errors import ProtocolError\n",
    "agent/cli/__init__.py": "from agent import __version__\nfrom agent.cli import sim\n",
    "agent/cli/sim.py": "from agent.sim import chip\n",
    "agent/demo/world.py": "import amqtt\n\nfrom agent import service\nfrom agent.sim import chip\n",
    "agent/service.py": "from agent.config import values\nfrom agent.mqtt import client\n",
    "agent/config/yamlfile.py": "import yaml\n\nfrom agent.ota import jobs\n",
    "agent/mqtt/client.py": "import paho.mqtt.client as paho\n\nfrom agent.ota import jobs\n",
    "agent/ota/jobs.py": "import json\n\nfrom agent.flasher import ops\n",
    "agent/flasher/ops.py": "from agent.stm32 import bootloader\n",
    "agent/stm32/bootloader.py": "from agent.link.base import Link\nfrom agent.pins import base\n",
    "agent/link/base.py": "from agent.errors import ProtocolError\nfrom agent.pins.base import Pins\n",
    "agent/pins/base.py": "class Pins:\n    pass\n",
    "agent/pins/libgpiod.py": "def open_chip() -> None:\n    import gpiod  # optional: lazy\n",
    "agent/sim/chip.py": "from agent import errors, progress\nfrom agent.stm32 import bootloader\n",
}


def plant(root: Path, changes: dict[str, str], base: Optional[dict[str, str]] = None) -> Path:
    """`base` (CLEAN) with `changes` over it, dedented, under root; an __init__.py per package."""
    for rel, text in {**(CLEAN if base is None else base), **changes}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    for folder in [root / "agent", *(p for p in (root / "agent").rglob("*") if p.is_dir())]:
        (folder / "__init__.py").touch()
    return root


def places(found: list[Violation]) -> set[tuple[str, int]]:
    """Where the violations are: (path, line) pairs."""
    return {(v.path, v.line) for v in found}


@pytest.mark.parametrize("rule", list(CHECKS))
def test_the_clean_tree_keeps_every_rule(tmp_path: Path, rule: str) -> None:
    found = CHECKS[rule](plant(tmp_path, {}))
    assert not found, report(rule, found)


@pytest.mark.parametrize("path, text, why", [
    ("agent/link/uart.py", "from agent.flasher import ops\n", "(layer link) imports agent.flasher"),
    ("agent/ota/pipeline.py", "import agent.sim.chip\n", "imports the simulator agent.sim.chip"),
    ("agent/cli/flasher.py", "from agent.sim import chip\n", "only agent.cli.sim and agent.demo"),
    ("agent/sim/pty.py", "from agent.flasher import ops\n", "sim/ may use stm32/"),
    ("agent/targets.py", "TARGETS = ()\n", "agent.targets fits no layer"),
])
def test_an_import_against_the_layers_is_reported(tmp_path: Path, path: str, text: str,
                                                  why: str) -> None:
    found = layers.check_layers(plant(tmp_path, {path: text}))
    assert places(found) == {(path, 1)}
    assert why in str(found[0]) and "[layers]" in str(found[0])


def test_a_hidden_upward_import_is_still_an_upward_import(tmp_path: Path) -> None:
    root = plant(tmp_path, {"agent/pins/base.py": """
        def pins() -> None:
            from agent.link import base
        """})
    assert places(layers.check_layers(root)) == {("agent/pins/base.py", 2)}


HIDDEN_CYCLE = {
    "agent/ota/jobs.py": """
        from agent.flasher import ops


        def recover() -> None:
            from agent.ota import pipeline
        """,
    "agent/ota/pipeline.py": """
        from typing import TYPE_CHECKING

        if TYPE_CHECKING:
            from agent.ota.jobs import Job
        """,
}


def test_a_cycle_hidden_in_a_function_and_type_checking_is_reported(tmp_path: Path) -> None:
    found = layers.check_cycles(plant(tmp_path, HIDDEN_CYCLE))
    assert places(found) == {("agent/ota/jobs.py", 5)}
    assert "agent.ota.jobs -> agent.ota.pipeline -> agent.ota.jobs" in found[0].message
    assert "agent/ota/pipeline.py:4" in found[0].message


def test_a_longer_cycle_and_a_self_import_are_reported(tmp_path: Path) -> None:
    root = plant(tmp_path, {
        "agent/flasher/ops.py": "from agent.flasher import plan\n",
        "agent/flasher/plan.py": "from agent.flasher import image\n",
        "agent/flasher/image.py": "import bincopy\n\nfrom agent.flasher.ops import flash\n",
        "agent/link/base.py": "from agent.link import base\n",
    })
    found = {v.path: v.message for v in layers.check_cycles(root)}
    assert "agent.flasher.image -> agent.flasher.ops -> agent.flasher.plan -> agent.flasher.image" \
        in found["agent/flasher/image.py"]
    assert "agent.link.base -> agent.link.base" in found["agent/link/base.py"]
    assert len(found) == 2


def test_agent_imports_in_functions_and_type_checking_are_reported(tmp_path: Path) -> None:
    found = layers.check_local_imports(plant(tmp_path, HIDDEN_CYCLE))
    assert places(found) == {("agent/ota/jobs.py", 5), ("agent/ota/pipeline.py", 4)}
    assert "inside def recover" in str(found[0]) and "TYPE_CHECKING" in str(found[1])


@pytest.mark.parametrize("path, text", [
    ("agent/ota/download.py", "from agent.config import values\n"),
    ("agent/flasher/ops.py", "from agent.config.values import Config\n"),
    ("agent/ota/jobs.py", "import paho.mqtt.client\n"),
    ("agent/stm32/wire.py", "from agent.link.uart import UartLink\n"),
    ("agent/stm32/wire.py", "from agent.link import uart\n"),
])
def test_a_crossed_boundary_is_reported(tmp_path: Path, path: str, text: str) -> None:
    found = layers.check_boundaries(plant(tmp_path, {path: text}))
    assert places(found) == {(path, 1)}


def test_a_second_importer_of_a_library_is_reported(tmp_path: Path) -> None:
    root = plant(tmp_path, {
        "agent/mqtt/fleet.py": "import json\n\nimport paho.mqtt.client as paho\n",
        "agent/demo/view.py": "def broker() -> None:\n    from amqtt.broker import Broker\n",
    })
    found = layers.check_third_party(root)
    assert places(found) == {("agent/mqtt/fleet.py", 3), ("agent/demo/world.py", 1)}
    messages = "\n".join(map(str, found))
    assert "only agent/mqtt/client.py may import" in messages
    assert "amqtt is imported by 2 modules (agent/demo/view.py, agent/demo/world.py)" in messages


@pytest.mark.skipif(sys.version_info < (3, 10), reason="needs sys.stdlib_module_names")
def test_a_library_with_no_owner_is_reported(tmp_path: Path) -> None:
    found = layers.check_third_party(plant(tmp_path, {"agent/ota/jobs.py": "import numpy\n"}))
    assert places(found) == {("agent/ota/jobs.py", 1)}
    assert "numpy" in found[0].message


def test_an_error_class_outside_errors_py_is_reported(tmp_path: Path) -> None:
    root = plant(tmp_path, {"agent/stm32/wire.py": """
        from agent.errors import ProtocolError


        class Nack(ProtocolError):
            pass


        class Silence(Nack):
            pass


        class Refused(OSError):
            pass


        class FrameError:
            pass


        class Row:
            pass
        """})
    found = layers.check_errors(root)
    assert [v.message.split()[2] for v in found] == ["Nack", "Silence", "Refused", "FrameError"]
    assert places(found) == {("agent/stm32/wire.py", line) for line in (4, 8, 12, 16)}


def function(name: str, lines: int, decorator: str = "") -> str:
    """A function of exactly `lines` lines from `def` to its end, after an optional decorator."""
    return f"{decorator}def {name}() -> None:\n" + "    pass\n" * (lines - 1)


def test_a_long_function_and_a_long_module_are_reported(tmp_path: Path) -> None:
    root = plant(tmp_path, {
        "agent/flasher/plan.py": function("fits", 50, "@staticmethod\n") + function("long", 51),
        "agent/flasher/ops.py": "X = 1\n" * 400,
        "agent/flasher/image.py": "X = 1\n" * 401,
    })
    found = layers.check_sizes(root)
    assert places(found) == {("agent/flasher/plan.py", 52), ("agent/flasher/image.py", 1)}
    assert "function long has 51 lines" in str(found[1])


def test_unused_code_is_reported_and_allowed_names_are_not(tmp_path: Path) -> None:
    need_vulture()
    used_by_frameworks = """
        from agent.cli.options import command


        @command("run")
        def cmd_run() -> int:
            return len(list(steps())) + Handler().ready


        def forgotten() -> int:
            return 1


        def steps():
            return
            yield  # the idiom that makes steps a generator: not dead code


        class Handler:
            ready = 0

            def log_message(self) -> None:
                pass
        """
    root = plant(tmp_path, {
        "agent/cli/options.py": "def command(name):\n    return REGISTRY.setdefault(name, None)\n",
        "agent/cli/run.py": used_by_frameworks,
    }, base={})
    found = deadcode.check_dead_code(root, ALLOWLIST, VULTURE_DECORATORS)
    assert places(found) == {("agent/cli/run.py", 9)}
    assert "unused function 'forgotten'" in str(found[0])
