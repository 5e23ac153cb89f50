"""The README's install paths and first-hour order are ones that work (issue 11, items 1-2).

`make dist-check` (run by .ci/run) proves the wheel installs and runs; these tests keep the
README pointing at that wheel and the clone, never at a package-index name that does not
exist yet, and keep "From zero to Home Assistant" in an order that cannot fail.
"""

from __future__ import annotations

import re
from pathlib import Path

from agent import __version__

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
SERVICE = (ROOT / "docs" / "service.md").read_text(encoding="utf-8")


def code_lines(text: str) -> list[str]:
    """The README's indented code lines (its command examples)."""
    return [line.strip() for line in text.splitlines() if line.startswith("    ")]


def section(title: str) -> str:
    """The text of one `## ` section of the README."""
    start = README.index(f"\n## {title}")
    end = README.find("\n## ", start + 1)
    return README[start:end if end > 0 else len(README)]


def test_no_command_installs_stm32ota_from_the_package_index() -> None:
    index_install = re.compile(r"pip[x]?\s+install\s+(-\S+\s+)*['\"]?stm32ota(\[|['\"\s]|$)")
    pages = [README] + [p.read_text(encoding="utf-8") for p in (ROOT / "docs").glob("*.md")]
    for text in pages:
        assert [line for line in code_lines(text) if index_install.search(line)] == []
    # nor an error message that tells a user to: the index has no such package yet
    for path in (ROOT / "agent").rglob("*.py"):
        assert not index_install.search(path.read_text(encoding="utf-8")), path
    assert "once the package is published" in section("Install").lower()


def test_every_wheel_the_readme_names_is_the_one_make_dist_builds() -> None:
    wheels = set(re.findall(r"stm32ota-([\w.]+)-py3-none-any\.whl", README + SERVICE))
    assert wheels - {"<version>"} == {__version__}


def test_ci_builds_checks_and_runs_the_wheel_after_the_test_suites() -> None:
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.lstrip().startswith("#")]
    assert ci.index("make test") < ci.index("make test-lowest") < ci.index("make dist-check")
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^dist:.*\n(\t.*\n)*\t.*-m build\b", makefile, re.MULTILINE)
    assert re.search(r"^dist-check: dist\b.*\n\t.*scripts/dist-check", makefile, re.MULTILINE)


def test_from_zero_makes_the_key_before_installing_it_and_checks_before_starting() -> None:
    steps = section("From zero to Home Assistant")
    # the agent step installs release.pub (via docs/service.md), so keygen must come first
    agent_step = steps.index("follow [docs/service.md](docs/service.md)")
    assert steps.index("stm32ota keygen") < min(agent_step, steps.index("/etc/stm32ota/release.pub"))
    assert steps.index("check-config") < steps.index("systemctl enable")
    service = "\n".join(code_lines(SERVICE))
    assert (service.index("release.pub /etc/stm32ota/release.pub") < service.index("check-config")
            < service.index("systemctl enable"))


def test_the_pictures_the_readme_shows_are_in_the_repository() -> None:
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README)
    assert {"docs/architecture.svg", "docs/wiring.svg", "docs/ha-update-card.png"} <= set(pictures)
    for path in pictures:
        assert (ROOT / path).is_file(), path
    assert (ROOT / "docs" / "ha-update-card.png").stat().st_size < 200 * 1024


def test_the_licence_setup_cfg_declares_is_in_the_repository() -> None:
    cfg = (ROOT / "setup.cfg").read_text(encoding="utf-8")
    assert re.search(r"^license\s*=\s*MIT$", cfg, re.M)
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License") and "WITHOUT WARRANTY OF ANY KIND" in text
    assert "[LICENSE](LICENSE)" in README
