"""The README, docs/ and the Home Assistant blueprints say what the code does: each test fails on drift.

Covered: the generated config reference and chip table, the reason-code list (both
directions), the manifest field table, the canonical encoding (a manifest from `stm32ota sign`
verifies with the docs' own snippet), the topic table, the payload examples (Home Assistant's
rules), the entity table and automation example against the discovery payload, every
`stm32ota ...` command line in the README and docs/ against the real argument parser, every
relative link and picture, the README's length, the systemd install steps against the unit,
the blueprints (valid YAML with `!input`, every input declared and used), the module map
("Layout:") against agent/, and constraints-lowest.txt against setup.cfg's lower bounds.
"""

from __future__ import annotations

import configparser
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.exceptions import InvalidSignature

from agent.mqtt import contract as ha
from agent.mqtt.topics import Topics
from agent.ota import manifest as mf
from agent.cli import build_parser, main
from agent.config import reference_markdown

ROOT = Path(__file__).resolve().parent.parent
# The front page and the reference pages it links to, by path from the repository's root
PAGES = {p.relative_to(ROOT).as_posix(): p.read_text(encoding="utf-8")
         for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]}
README = PAGES["README.md"]
DOCS = "\n".join(PAGES.values())
BLUEPRINTS = sorted((ROOT / "homeassistant/blueprints/automation/stm32ota").glob("*.yaml"))
REGENERATE = ".venv/bin/python scripts/docs-reference"
README_MAX_LINES = 250  # a front page that leads; the reference lives in docs/


def block(name: str) -> str:
    """The text between `<!-- NAME:start -->` and `<!-- NAME:end -->`, in whichever page."""
    found = re.findall(rf"<!-- {name}:start -->\n(.*?)<!-- {name}:end -->", DOCS, re.S)
    assert len(found) == 1, f"README.md and docs/ hold {len(found)} <!-- {name}:start/end --> blocks"
    return found[0]


def example(name: str) -> str:
    """The fenced code block right after `<!-- example:NAME -->`."""
    m = re.search(rf"<!-- example:{name} -->\n```\w*\n(.*?)```", DOCS, re.S)
    assert m, f"README.md and docs/ lack the example:{name} code block"
    return m.group(1)


def table_rows(text: str) -> list[list[str]]:
    """Cells of the body rows of the first Markdown table in `text`."""
    rows = [line for line in text.splitlines() if line.startswith("|")]
    return [[c.strip() for c in r.strip("|").split("|")] for r in rows[2:]]


def ticked(cell: str) -> list[str]:
    """Every `code span` in a table cell."""
    return re.findall(r"`([^`]+)`", cell)


# ------------------------------------------------------------------ configuration


def test_config_reference_is_generated_from_the_validator() -> None:
    body = block("config-reference").strip()
    assert body == reference_markdown().strip(), (
        f"docs/configuration.md's config reference is stale; regenerate it with: {REGENERATE}")


def test_the_chip_page_shows_what_stm32ota_chips_prints(capsys) -> None:
    assert main(["chips"]) == 0
    printed = capsys.readouterr().out.strip()
    shown = block("chips").strip().removeprefix("```\n$ stm32ota chips\n").removesuffix("```")
    assert shown.strip() == printed, f"docs/chips.md is stale; regenerate it with: {REGENERATE}"
    assert "[docs/chips.md](docs/chips.md)" in README


def test_the_regeneration_script_agrees_with_this_test() -> None:
    r = subprocess.run([sys.executable, str(ROOT / "scripts/docs-reference"), "--check"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


# ------------------------------------------------------------------ reason codes


CODE_PATTERNS = (
    re.compile(r"\b_?code\s*=\s*[\"']([a-z][a-z0-9_]*)[\"']", re.I),  # code="x", code = "x", _CODE = "x"
    re.compile(r"[\"']code[\"']\s*:\s*[\"']([a-z][a-z0-9_]*)[\"']"),  # {"code": "x", ...}
)


def codes_in_agent() -> dict[str, set[str]]:
    """Every literal reason code in agent/, with the files it appears in."""
    found: dict[str, set[str]] = {}
    for path in (ROOT / "agent").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        for pattern in CODE_PATTERNS:
            for m in pattern.finditer(text):
                found.setdefault(m.group(1), set()).add(str(path.relative_to(ROOT)))
    return found


def codes_in_readme() -> set[str]:
    return {c for row in table_rows(block("reason-codes")) for c in ticked(row[0])}


def test_the_code_scan_finds_codes_in_all_their_spellings() -> None:
    found = codes_in_agent()
    # class attribute, keyword argument, module constant and a literal error dict
    for code in ("nack", "bad_url", "bad_image", "too_many_attempts"):
        assert code in found, code


def test_every_reason_code_the_agent_uses_is_in_the_readme() -> None:
    missing = {c: sorted(f) for c, f in codes_in_agent().items() if c not in codes_in_readme()}
    assert not missing, f"add these to docs/reason-codes.md's table: {missing}"


def test_every_reason_code_in_the_readme_exists() -> None:
    stale = codes_in_readme() - set(codes_in_agent())
    assert not stale, f"docs/reason-codes.md lists codes that agent/ never uses: {sorted(stale)}"


# ------------------------------------------------------------------ signing


def test_manifest_field_table_matches_the_parser() -> None:
    rows = table_rows(block("manifest-fields"))
    fields = [ticked(r[0])[0] for r in rows]
    assert sorted(fields) == sorted(mf.FIELDS)
    required = {ticked(r[0])[0] for r in rows if r[1] == "yes"}
    assert required == set(mf.REQUIRED)


def readme_verify() -> Any:
    """The `verify(manifest, pub_line)` function exactly as docs/signing.md prints it."""
    code = re.search(r"```python\n(.*?)```", block("verify-snippet"), re.S).group(1)
    scope: dict[str, Any] = {}
    exec(compile(code, "docs/signing.md verify-snippet", "exec"), scope)  # noqa: S102 - our own docs
    return scope["verify"]


@pytest.fixture
def signed(tmp_path: Path) -> tuple[dict, str]:
    """A manifest written by `stm32ota sign` (non-ASCII text included) and its .pub line."""
    image = tmp_path / "fw.bin"
    image.write_bytes(bytes(range(256)) * 8)
    assert main(["keygen", "--out", str(tmp_path / "release")]) == 0
    out = tmp_path / "m.json"
    assert main(["sign", str(image), "--key", str(tmp_path / "release.key"),
                 "--product", "pump-ctrl", "--version", "1.5.0-rc.1",
                 "--url", "https://fw.example.com/pump ctrl.bin".replace(" ", "%20"),
                 "--title", "Pumpe für den Keller \"B\" \\ 2", "--release-summary",
                 "Behebt die ADC-Drift\nzweite Zeile ✓", "--rollout", "25", "--chip", "0x435",
                 "-o", str(out)]) == 0
    return json.loads(out.read_text(encoding="utf-8")), (tmp_path / "release.pub").read_text()


def test_a_manifest_from_stm32ota_sign_verifies_with_the_docs_recipe(signed) -> None:
    manifest, pub = signed
    readme_verify()(manifest, pub)  # raises on any difference in the encoding


def test_the_docs_recipe_rejects_a_changed_manifest(signed) -> None:
    manifest, pub = signed
    verify = readme_verify()
    with pytest.raises(InvalidSignature):
        verify({**manifest, "rollout": 26}, pub)
    with pytest.raises(InvalidSignature):
        verify({**manifest, "title": manifest["title"] + " "}, pub)


def test_the_docs_recipe_and_the_agent_sign_the_same_bytes(signed) -> None:
    manifest, _ = signed
    fields = {k: v for k, v in manifest.items() if k != "signature"}
    readme_bytes = json.dumps(fields, sort_keys=True, separators=(",", ":"),
                              ensure_ascii=False).encode("utf-8")
    assert mf.parse_manifest(manifest).canonical == readme_bytes
    assert "für".encode() in readme_bytes and b"\\u" not in readme_bytes  # literal UTF-8


# ------------------------------------------------------------------ MQTT


def test_topic_table_matches_the_topics_the_agent_uses() -> None:
    t = Topics("stm32ota", "AGENT")
    expected = {t.release("PRODUCT"), t.cmd("TARGET"), t.group_cmd("GROUP"), t.fleet_cmd,
                t.availability, t.state("TARGET"), t.job("TARGET"), t.events("TARGET"),
                t.discovery("TARGET"), t.ha_status}
    expected = {e.replace("AGENT", "<agent>").replace("TARGET", "<target>")
                .replace("PRODUCT", "<product>").replace("GROUP", "<group>") for e in expected}
    listed = {ticked(r[0])[0] for r in table_rows(block("topics"))}
    assert listed == expected


def test_state_example_is_exactly_what_home_assistant_accepts() -> None:
    state = json.loads(example("state"))
    assert state == ha.state_payload(**state)
    assert list(state) == list(ha.STATE_KEYS)


def test_job_and_event_examples_have_the_agents_shape() -> None:
    job = json.loads(example("job"))
    real = ha.job_payload("x", "SUCCEEDED")
    assert list(job) == list(real)
    assert job["status"] in ha.JOB_STATUSES
    assert set(job["error"]) == {"code", "message"} and job["error"]["code"] in codes_in_agent()
    event = json.loads(example("event"))
    assert event == ha.event_payload({k: v for k, v in event.items() if k != "event_type"})


def test_readme_lists_the_commands_and_phases_the_agent_knows() -> None:
    from agent.ota.jobs import PHASES
    from agent.mqtt.commands import COMMAND_OPS

    section = PAGES["docs/mqtt.md"]
    for op in COMMAND_OPS:
        assert f"- `{op}`" in section, op
    for phase, first, last in PHASES:
        assert f"`{phase}`" in section, phase
    for status in ha.JOB_STATUSES:
        assert f"`{status}`" in section and f"`{status.lower()}`" in section, status


# ------------------------------------------------------------------ Home Assistant


def discovery() -> dict:
    return ha.discovery_payload("gw-01", "pump", base_topic="stm32ota",
                                device_info={"manufacturer": "STMicroelectronics"},
                                product="pump-ctrl")


def test_entity_table_matches_the_discovery_payload() -> None:
    entities = {c["default_entity_id"] for c in discovery()["components"].values()}
    listed = {ticked(r[0])[0] for r in table_rows(block("entities"))}
    assert listed == entities


def test_the_blueprints_need_the_oldest_home_assistant_the_docs_support() -> None:
    stated = set(re.findall(r"Home Assistant (\d{4}\.\d+) or later", DOCS))
    assert len(stated) == 1, f"README.md and docs/ name different oldest versions: {stated}"
    assert re.search(r"Home Assistant (\d{4}\.\d+) or later", README)
    oldest = stated.pop()
    for path in (ROOT / "homeassistant").rglob("*.yaml"):
        assert f'min_version: "{oldest}.0"' in path.read_text(encoding="utf-8"), path


def test_screenshot_script_opens_the_entity_discovery_names_for_the_demo_pump() -> None:
    """scripts/ha-screenshot waits for and photographs one entity id: the one Home Assistant
    gives the demo's pump (from object_id / default_entity_id), or it times out waiting."""
    from agent.demo.world import AGENT_ID
    script = (ROOT / "scripts" / "ha-screenshot").read_text(encoding="utf-8")
    (entity,) = re.findall(r'^ENTITY = "([a-z0-9_.]+)"$', script, re.M)
    comps = ha.discovery_payload(AGENT_ID, "pump", base_topic="stm32ota", device_info={},
                                 product="pump-ctrl")["components"].values()
    assert entity in {c["default_entity_id"] for c in comps if c["platform"] == "update"}


def test_automation_example_uses_real_entities_and_event_types() -> None:
    doc = yaml.safe_load(example("automations"))
    entities = {c["default_entity_id"] for c in discovery()["components"].values()}
    used = set(re.findall(r'"entity_id": "([a-z0-9_.]+)"', json.dumps(doc)))
    assert used and used <= entities
    quoted = set(re.findall(r"'([a-z_]+)'", json.dumps(doc)))
    assert quoted and quoted <= set(ha.EVENT_TYPES)


class Input(str):
    """A `!input name` reference in a blueprint."""


def load_blueprint(path: Path) -> dict:
    loader = type("BlueprintLoader", (yaml.SafeLoader,), {})
    loader.add_constructor("!input", lambda ld, node: Input(ld.construct_scalar(node)))
    return yaml.load(path.read_text(encoding="utf-8"), Loader=loader)  # noqa: S506 - SafeLoader subclass


def input_refs(node: Any) -> set[str]:
    if isinstance(node, Input):
        return {str(node)}
    if isinstance(node, dict):
        return set().union(*(input_refs(v) for v in node.values())) if node else set()
    if isinstance(node, list):
        return set().union(*(input_refs(v) for v in node)) if node else set()
    return set()


def test_both_blueprints_ship() -> None:
    assert {p.name for p in BLUEPRINTS} == {"install_on_release.yaml", "notify_on_failure.yaml"}
    for p in BLUEPRINTS:
        assert p.name in PAGES["docs/home-assistant.md"]


@pytest.mark.parametrize("path", BLUEPRINTS, ids=lambda p: p.name)
def test_blueprint_is_an_automation_whose_inputs_are_declared_and_used(path: Path) -> None:
    bp = load_blueprint(path)
    meta = bp["blueprint"]
    assert meta["domain"] == "automation" and meta["name"]
    declared = set(meta["input"])
    body = {k: v for k, v in bp.items() if k != "blueprint"}
    assert input_refs(body) == declared
    assert {"triggers", "actions"} <= set(body)
    for spec in meta["input"].values():
        for f in spec.get("selector", {}).get("entity", {}).get("filter", []):
            assert f["integration"] == "mqtt" and f["domain"] in ("update", "event")


def test_failure_blueprint_offers_only_real_event_types() -> None:
    bp = load_blueprint(next(p for p in BLUEPRINTS if p.name == "notify_on_failure.yaml"))
    spec = bp["blueprint"]["input"]["outcomes"]
    options = {o["value"] for o in spec["selector"]["select"]["options"]}
    assert options <= set(ha.EVENT_TYPES) and set(spec["default"]) <= options


def test_install_blueprint_installs_update_entities_that_turn_on() -> None:
    bp = load_blueprint(next(p for p in BLUEPRINTS if p.name == "install_on_release.yaml"))
    assert any(t.get("to") == "on" and t["entity_id"] == "firmware" for t in bp["triggers"])
    assert any(a.get("action") == "update.install" for a in bp["actions"])


# ------------------------------------------------------------------ command lines and systemd


def readme_command_lines() -> list[str]:
    """Every `stm32ota ...` line of the README's and docs' indented code, continuations joined."""
    lines, out = DOCS.splitlines(), []
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if lines[i].startswith("    ") and re.match(r"(sudo )?stm32ota [a-z-]", line):
            while line.endswith("\\") and i + 1 < len(lines):
                i += 1
                line = line[:-1] + " " + lines[i].strip()
            out.append(line.split(" #", 1)[0].removeprefix("sudo "))
        i += 1
    return out


def test_every_command_line_in_the_readme_uses_real_subcommands_and_options() -> None:
    parser = build_parser()
    subs = next(a for a in parser._actions if a.choices and "flash" in a.choices).choices
    global_opts = set(parser._option_string_actions)
    lines = readme_command_lines()
    assert len(lines) > 15 and any(line.startswith("stm32ota flash") for line in lines)
    for line in lines:
        words = shlex.split(line)[1:]
        while words and words[0] in global_opts:
            words.pop(0)
        assert words and words[0] in subs, f"docs: unknown command in {line!r}"
        known = set(subs[words[0]]._option_string_actions)
        for w in words[1:]:
            if w.startswith("--"):
                assert w.split("=", 1)[0] in known, f"docs: {words[0]} has no {w} ({line!r})"


def test_install_steps_match_the_systemd_unit() -> None:
    unit = (ROOT / "systemd/stm32ota.service").read_text(encoding="utf-8")
    exec_start = re.search(r"^ExecStart=(\S+) run --config (\S+)$", unit, re.M)
    section = PAGES["docs/service.md"]
    binary, config = exec_start.groups()
    assert f"python3 -m venv {binary.rsplit('/bin/', 1)[0]}" in section
    assert config in section and "cp systemd/stm32ota.service /etc/systemd/system/" in section
    user = re.search(r"^User=(\S+)$", unit, re.M).group(1)
    assert re.search(rf"useradd .*\b{user}$", section, re.M | re.S)
    groups = re.search(r"^SupplementaryGroups=(.+)$", unit, re.M).group(1).split()
    assert f"usermod -aG {','.join(groups)} {user}" in section
    for key in ("WatchdogSec", "TimeoutStopSec", "StateDirectory", "CacheDirectory"):
        assert key in unit and key in section, key


# ------------------------------------------------------------------ layout and lowest versions


def layout_entries() -> list[tuple[str, str]]:
    """(first column, description) of each agent/ line in docs/development.md's "Layout:" block."""
    block = PAGES["docs/development.md"].split("Layout:", 1)[1].split("    tests/", 1)[0]
    entries: list[tuple[str, str]] = []
    for line in block.splitlines():
        m = re.match(r"      (\S.*?)(?:\s{2,}(.*))?$", line)
        if m:
            entries.append((m.group(1), m.group(2) or ""))
        elif line.startswith(" " * 27) and entries:  # a description continued
            entries[-1] = (entries[-1][0], entries[-1][1] + " " + line.strip())
    return entries


def test_the_readme_layout_names_only_modules_and_folders_that_exist() -> None:
    entries = layout_entries()
    assert len(entries) > 8
    for names, description in entries:
        for name in names.split():
            path = ROOT / "agent" / name
            assert path.exists(), f"docs layout names agent/{name}, which does not exist"
            if name.endswith("/"):  # the files a folder's description names are in it
                for module in re.findall(r"\b\w+\.py\b", description):
                    assert (path / module).is_file(), f"docs layout: no agent/{name}{module}"


def _requirement_floors() -> dict[str, str]:
    """{distribution: lower bound} of install_requires and of the extras `make test-lowest`
    installs; every one of them must have a lower bound."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg", encoding="utf-8")
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    extras = re.search(r"-c constraints-lowest\.txt -e '\.\[([\w,]+)\]'", makefile).group(1)
    lines = cfg["options"]["install_requires"].splitlines()
    for extra in extras.split(","):
        lines += cfg["options.extras_require"][extra].splitlines()
    floors = {}
    for line in (x.split("#")[0].strip() for x in lines):
        if line:
            m = re.match(r"([A-Za-z0-9_.-]+)\s*>=\s*([\w.]+)", line)
            assert m, f"setup.cfg: {line!r} has no lower bound (>=)"
            floors[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(2)
    return floors


def test_constraints_lowest_pins_exactly_the_lower_bounds_of_setup_cfg() -> None:
    pins = {}
    for line in (ROOT / "constraints-lowest.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = re.fullmatch(r"([A-Za-z0-9_.-]+)==([\w.]+)", line).groups()
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    assert pins == _requirement_floors()


# ------------------------------------------------------------------ the front page and its links


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"`", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text: str) -> set[str]:
    return {slug(h) for h in re.findall(r"^#{1,6} (.+)$", text, re.M)}


def links(text: str) -> list[str]:
    """Every Markdown link or picture target, outside indented and fenced code."""
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    prose = "\n".join(line for line in prose.splitlines() if not line.startswith("    "))
    return re.findall(r"\]\(([^)\s]+)\)", prose)


def test_every_relative_link_and_picture_resolves() -> None:
    checked = 0
    for page, text in PAGES.items():
        base = (ROOT / page).parent
        for target in links(text):
            if re.match(r"[a-z]+:", target):  # http(s), mailto: not checked offline
                continue
            path, _, anchor = target.partition("#")
            file = (base / path).resolve() if path else ROOT / page
            assert file.exists(), f"{page}: the link {target} points at nothing"
            if anchor:
                assert anchor in anchors(file.read_text(encoding="utf-8")), \
                    f"{page}: no heading in {file.name} makes the anchor #{anchor}"
            checked += 1
    assert checked > 20


def test_the_link_check_catches_a_broken_link_and_anchor() -> None:
    assert links("see [a](docs/nope.md) and ![b](x.svg)\n\n    [not](code.md)\n") == \
        ["docs/nope.md", "x.svg"]
    assert slug("Rollout, rollback protection and recovery") == \
        "rollout-rollback-protection-and-recovery"
    assert slug("Bring up a new board: `stm32ota doctor`") == "bring-up-a-new-board-stm32ota-doctor"


def test_every_docs_page_is_linked_from_the_readme() -> None:
    linked = {t.partition("#")[0] for t in links(README)}
    assert set(PAGES) - {"README.md"} <= linked, "a docs page the front page never links to"


def test_the_readme_is_a_front_page_in_a_newcomers_order() -> None:
    assert len(README.splitlines()) <= README_MAX_LINES, "the reference belongs in docs/"
    order = [h for h in re.findall(r"^## (.+)$", README, re.M)]
    wanted = ["Quick start", "Install", "Your first flash",
              "Your first update over MQTT, on one machine", "From zero to Home Assistant"]
    assert [h for h in order if h in wanted] == wanted
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README)
    assert pictures[0] == "docs/architecture.svg", "the architecture picture leads"


def test_every_file_of_the_repository_the_docs_name_exists() -> None:
    named = set()
    for text in PAGES.values():
        # repository paths, not /etc/systemd/... nor the homeassistant/... MQTT topics
        named |= set(re.findall(
            r"(?<![/\w])((?:scripts|bench|tests|systemd|homeassistant/blueprints)/[\w./-]*\w)",
            text))
    assert len(named) > 10
    missing = sorted(n for n in named if not (ROOT / n).exists())
    assert not missing, f"README.md or docs/ name files that do not exist: {missing}"


def test_the_readmes_performance_figures_are_those_of_the_benchmark_page() -> None:
    summary = block("performance-summary")
    figures = set(re.findall(r"\d+\.\d+", summary))
    assert len(figures) >= 6
    missing = figures - set(re.findall(r"\d+\.\d+", PAGES["docs/performance.md"]))
    assert not missing, f"README's performance summary quotes figures docs/performance.md lacks: {missing}"
