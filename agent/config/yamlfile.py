"""config.yaml text -> plain data: strict about duplicate keys, with the line of every key,
and refusing documents whose aliases expand past a small budget (the only yaml importer)."""

from __future__ import annotations

import logging
from typing import Any

import yaml

from agent.config.values import INVALID, Context, Problem, join

log = logging.getLogger(__name__)


# A config repeats a few blocks through anchors at most; a "billion laughs" file of 300 bytes
# nests aliases so that walking it visits 9**9 nodes. Composing is linear in the text (an alias
# is one shared node), so the walk below is where the expansion is counted and cut off.
MAX_ALIAS_EXPANSION = 10_000


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that records every duplicated mapping key and where each node sits, and
    refuses a document whose aliases expand past MAX_ALIAS_EXPANSION nodes."""

    duplicates: list[tuple[str, int, int]]
    node_lines: dict[str, int]
    first_alias: int | None = None
    expansions: int = 0  # nodes reached again through an alias
    bomb: bool = False  # expansions went past MAX_ALIAS_EXPANSION: the walk stopped

    def compose_node(self, parent: Any, index: Any) -> Any:
        """Remember the line of the first alias (where a refusal points)."""
        if self.first_alias is None and self.check_event(yaml.AliasEvent):
            self.first_alias = self.peek_event().start_mark.line + 1
        return super().compose_node(parent, index)

    def get_single_data(self) -> Any:
        """Compose, record duplicates and line numbers by location, then construct."""
        node = self.get_single_node()
        self.duplicates, self.node_lines, self._seen = [], {}, set()
        if node is None:
            return None
        self._walk(node, "")
        return None if self.bomb else self.construct_document(node)

    def _walk(self, node: yaml.Node, where: str) -> None:
        if id(node) in self._seen:  # reached again: through an alias
            self.expansions += 1
            self.bomb = self.bomb or self.expansions > MAX_ALIAS_EXPANSION
        if self.bomb:
            return
        self._seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = key_node.value
                path = join(where, key)
                line = key_node.start_mark.line + 1
                if key in seen:
                    self.duplicates.append((path, seen[key], line))
                else:
                    seen[key] = line
                    self.node_lines[path] = line
                self._walk(value_node, path)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                path = join(where, i)
                self.node_lines[path] = item.start_mark.line + 1
                self._walk(item, path)


def parse_yaml(text: str, ctx: Context) -> Any:
    """YAML text -> plain data; syntax errors, duplicate keys and alias bombs become problems."""
    loader = StrictLoader(text)
    try:
        data = loader.get_single_data()
    except RecursionError:  # an alias inside its own anchor, nested past Python's stack
        ctx.problems.append(Problem("", "the YAML nests too deeply (or an alias refers to "
                                    "itself); refused", "flatten it", line=loader.first_alias))
        return INVALID
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark else None
        ctx.problems.append(Problem("", f"not valid YAML: {err.problem or err}",
                                    "check indentation, colons and quotes", line=line))
        return INVALID
    except yaml.YAMLError as err:
        ctx.add("", f"not valid YAML: {err}")
        return INVALID
    finally:
        loader.dispose()
    if loader.bomb:
        ctx.problems.append(Problem("", f"anchors and aliases (&name, *name) expand to more "
                                    f"than {MAX_ALIAS_EXPANSION} repeated values; refused",
                                    "write the repeated parts out, or repeat fewer of them",
                                    line=loader.first_alias))
        return INVALID
    ctx.lines.update(loader.node_lines)
    for where, first, again in loader.duplicates:
        ctx.problems.append(Problem(where, f"given twice (lines {first} and {again}); YAML "
                                    "would silently keep only the last one",
                                    "delete one of them", line=again))
    return data
