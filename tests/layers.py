"""STYLE.md's architecture as pure checks over a source tree; tests/test_layers.py runs them.

Each `check_*` function takes the root of a tree that holds an `agent/` package and returns the
`Violation`s it finds, so the same code judges this repository and small planted trees.

Decisions the checks make:
- Every `agent.*` import is an edge of the import graph wherever it stands: at module level,
  inside a function, or under `if TYPE_CHECKING:`. Hiding an import only defers a cycle or an
  upward dependency, so the layer and cycle checks see through it, and the local-import check
  reports the hiding on its own.
- `import agent.a.b` is an edge to agent.a.b only, not to the packages Python also runs first:
  a package's __init__ importing its own submodules is the normal shape, not a cycle.
- `from agent.a import b` is an edge to agent.a.b when b is a module, else to agent.a.
"""

from __future__ import annotations

import ast
import builtins
import fnmatch
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

# STYLE.md "Layers you can see from the folder list", top to bottom; "bottom" is errors.py,
# progress.py, systemd.py and the package itself (its __version__ is for everyone)
LAYERS = ("cli", "demo", "service", "config", "mqtt", "ota", "flasher", "stm32", "link", "pins",
          "bottom")
BOTTOM = ("agent", "agent.errors", "agent.progress", "agent.systemd")
# the simulator sits beside the layers: few may use it, and it uses only the chip facts
SIM_USERS = ("agent.cli.sim", "agent.demo")
SIM_USES = ("agent.sim", "agent.stm32", "agent.errors", "agent.progress")

# each third-party library has one owner module (a glob where any one module of a folder may own it)
OWNERS = {
    "paho": "agent/mqtt/client.py",
    "serial": "agent/link/uart.py",
    "smbus2": "agent/link/i2c.py",
    "gpiod": "agent/pins/libgpiod.py",
    "RPi": "agent/pins/rpigpio.py",
    "cryptography": "agent/ota/keys.py",
    "bincopy": "agent/flasher/image.py",
    "yaml": "agent/config/yamlfile.py",
    "amqtt": "agent/demo/*.py",
}
# (importers, what they may not import, why); BOUNDARY_DOORS are the allowed ways through
BOUNDARIES = (
    (("agent.ota", "agent.flasher"), ("paho", "agent.config"),
     "ota/ and flasher/ use neither paho nor the config package"),
    (("agent.stm32",), ("agent.link",), "stm32/ may import only the Link protocol, agent.link.base"),
)
BOUNDARY_DOORS = ("agent.link.base",)
ERRORS_MODULE = "agent/errors.py"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 50
BUILTIN_ERRORS = frozenset(name for name, value in vars(builtins).items()
                           if isinstance(value, type) and issubclass(value, BaseException))


@dataclass(frozen=True)
class Violation:
    """One broken rule at one place, printed as `path:line: [rule] message`."""

    path: str
    line: int
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: [{self.rule}] {self.message}"


@dataclass(frozen=True)
class Module:
    """One parsed source file: dotted name, path relative to the root, syntax tree, length."""

    name: str
    path: str
    tree: ast.Module
    lines: int


@dataclass(frozen=True)
class Import:
    """One imported module and where the import stands ("" = module level)."""

    source: Module
    target: str
    line: int
    scope: str


def load(root: Path) -> list[Module]:
    """Every module under root/agent, parsed, in path order."""
    modules = []
    for path in sorted((root / "agent").rglob("*.py")):
        rel = path.relative_to(root)
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        text = path.read_text(encoding="utf-8")
        tree = ast.parse(text, filename=str(rel))
        modules.append(Module(".".join(parts), rel.as_posix(), tree, len(text.splitlines())))
    return modules


def within(name: str, prefix: str) -> bool:
    """Whether dotted `name` is `prefix` or inside it."""
    return name == prefix or name.startswith(prefix + ".")


def imports(module: Module, names: set[str]) -> list[Import]:
    """Every module that `module` imports, one entry per imported module and statement."""
    found: list[Import] = []

    def visit(node: ast.AST, scope: str) -> None:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for target in dict.fromkeys(_targets(node, module, names)):
                found.append(Import(module, target, node.lineno, scope))
            return
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, "under `if TYPE_CHECKING:`")
            for child in node.orelse:
                visit(child, scope)
            return
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            scope = f"inside def {node.name}"
        elif isinstance(node, ast.ClassDef):
            scope = f"inside class {node.name}"
        for child in ast.iter_child_nodes(node):
            visit(child, scope)

    visit(module.tree, "")
    return found


def _is_type_checking(test: ast.expr) -> bool:
    """`TYPE_CHECKING` or `typing.TYPE_CHECKING`."""
    return ((isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
            or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _targets(node: ast.Import | ast.ImportFrom, module: Module, names: set[str]) -> list[str]:
    """The modules one import statement loads: submodules by name, else the package."""
    if isinstance(node, ast.Import):
        return [_resolve(alias.name, names) for alias in node.names]
    base = node.module or ""
    if node.level:
        package = module.name.split(".")
        if not module.path.endswith("__init__.py"):
            package.pop()
        package = package[:len(package) - node.level + 1]
        base = ".".join(package + ([node.module] if node.module else []))
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in names else _resolve(base, names)
            for a in node.names]


def _resolve(name: str, names: set[str]) -> str:
    """An agent module name cut back to the longest module that exists; others unchanged."""
    if not within(name, "agent"):
        return name
    while name not in names and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def layer_of(name: str) -> Optional[str]:
    """The layer of a dotted agent module: one of LAYERS, "sim", or None when it fits none."""
    if name == "agent.__main__":
        return "cli"
    if name in BOTTOM:
        return "bottom"
    parts = name.split(".")
    if len(parts) > 1 and parts[1] in LAYERS[:-1] + ("sim",):
        return parts[1]
    return None


def all_imports(root: Path) -> Iterator[Import]:
    """Every import in the tree, of agent modules and libraries, module level or not."""
    modules = load(root)
    names = {m.name for m in modules}
    for module in modules:
        yield from imports(module, names)


def agent_imports(root: Path) -> Iterator[Import]:
    """Every import of an agent module in the tree."""
    return (i for i in all_imports(root) if within(i.target, "agent"))


def check_layers(root: Path) -> list[Violation]:
    """Imports point down the layer order; sim/ is used by cli/sim.py and demo/ only."""
    found = [Violation(m.path, 1, "layers", f"{m.name} fits no layer of STYLE.md")
             for m in load(root) if layer_of(m.name) is None]
    for imp in agent_imports(root):
        problem = _layer_problem(imp.source.name, imp.target)
        if problem:
            found.append(Violation(imp.source.path, imp.line, "layers", problem))
    return found


def _layer_problem(source: str, target: str) -> Optional[str]:
    """Why `source` may not import `target`, or None when it may."""
    mine, theirs = layer_of(source), layer_of(target)
    if mine is None:
        return None  # reported once for the module itself
    if theirs is None:
        return f"{source} imports {target}, which fits no layer"
    if theirs == "sim":
        if mine == "sim" or any(within(source, user) for user in SIM_USERS):
            return None
        return f"{source} imports the simulator {target}; only agent.cli.sim and agent.demo may"
    if mine == "sim":
        if target == "agent" or any(within(target, used) for used in SIM_USES):
            return None
        return f"the simulator {source} imports {target}; sim/ may use stm32/, errors, progress"
    if LAYERS.index(theirs) < LAYERS.index(mine):
        return f"{source} (layer {mine}) imports {target} (layer {theirs}, above it)"
    return None


def check_cycles(root: Path) -> list[Violation]:
    """No import cycle between agent modules (self-imports included)."""
    edges: dict[str, dict[str, Import]] = {}
    for imp in agent_imports(root):
        edges.setdefault(imp.source.name, {}).setdefault(imp.target, imp)
    found = []
    for component in _strongly_connected(edges):
        cycle = _cycle_through(min(component), component, edges)
        hops = [edges[a][b] for a, b in zip(cycle, cycle[1:])]
        where = ", ".join(f"{h.source.path}:{h.line}" for h in hops)
        message = f"import cycle {' -> '.join(cycle)} (imports at {where})"
        if len(component) > len(cycle) - 1:
            message += f"; all of {', '.join(sorted(component))} reach each other"
        found.append(Violation(hops[0].source.path, hops[0].line, "cycles", message))
    return found


def _strongly_connected(edges: dict[str, dict[str, Import]]) -> list[set[str]]:
    """Tarjan's components that hold a cycle: more than one module, or one importing itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    result: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in edges.get(node, {}):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while node not in component:  # pop the component rooted at node
                component.add(stack.pop())
            if len(component) > 1 or node in edges.get(node, {}):
                result.append(component)

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return result


def _cycle_through(start: str, component: set[str], edges: dict[str, dict[str, Import]]
                   ) -> list[str]:
    """A shortest path start -> ... -> start inside one component (breadth first)."""
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for nxt in sorted(edges.get(node, {})):
            if nxt == start:
                return paths[node] + [start]
            if nxt in component and nxt not in paths:
                paths[nxt] = paths[node] + [nxt]
                queue.append(nxt)
    raise AssertionError(f"{start} is on no cycle")  # a component always has one


def check_local_imports(root: Path) -> list[Violation]:
    """Agent modules are imported at module level, not in functions or TYPE_CHECKING blocks."""
    return [Violation(i.source.path, i.line, "local-imports",
                      f"import of {i.target} {i.scope}: agent imports belong at module level")
            for i in agent_imports(root) if i.scope]


def check_boundaries(root: Path) -> list[Violation]:
    """ota/ and flasher/ use neither paho nor config; stm32/ sees only the Link protocol."""
    return [Violation(i.source.path, i.line, "boundaries", f"{i.source.name} imports {i.target}: "
                      + why)
            for i in all_imports(root) for sources, targets, why in BOUNDARIES
            if any(within(i.source.name, s) for s in sources) and i.target not in BOUNDARY_DOORS
            and any(within(i.target, t) for t in targets)]


def check_third_party(root: Path) -> list[Violation]:
    """Each third-party library is imported by its one owner module, and no other is used."""
    stdlib = getattr(sys, "stdlib_module_names", None)  # 3.10+; before it, owned libraries only
    found, users = [], {}
    for imp in all_imports(root):
        lib, place = imp.target.split(".")[0], (imp.source.path, imp.line, "third-party")
        owner = OWNERS.get(lib)
        if owner and fnmatch.fnmatch(imp.source.path, owner):
            users.setdefault(lib, {}).setdefault(imp.source.path, imp)
        elif owner:
            found.append(Violation(*place, f"imports {lib}, which only {owner} may import"))
        elif lib != "agent" and stdlib is not None and lib not in stdlib:
            found.append(Violation(*place, f"imports {lib}, a third-party library no module "
                                   "owns (add it to OWNERS, and to setup.cfg)"))
    for lib, by_path in users.items():
        for imp in list(by_path.values())[1:]:
            found.append(Violation(imp.source.path, imp.line, "third-party",
                                   f"{lib} is imported by {len(by_path)} modules "
                                   f"({', '.join(by_path)}); one module owns it"))
    return found


def check_errors(root: Path) -> list[Violation]:
    """Every exception class is defined in agent/errors.py."""
    classes = [(m, node) for m in load(root) for node in ast.walk(m.tree)
               if isinstance(node, ast.ClassDef)]
    known = set(BUILTIN_ERRORS)
    errors: dict[int, tuple[Module, ast.ClassDef]] = {}
    grown = True
    while grown:  # a class whose base is an error is an error: repeat until nothing changes
        grown = False
        for module, node in classes:
            if id(node) not in errors and (_error_name(node.name) or any(
                    base in known or _error_name(base) for base in _base_names(node))):
                errors[id(node)] = (module, node)
                known.add(node.name)
                grown = True
    return [Violation(m.path, node.lineno, "errors",
                      f"error class {node.name} is defined outside {ERRORS_MODULE}")
            for m, node in errors.values() if m.path != ERRORS_MODULE]


def _error_name(name: str) -> bool:
    return name.endswith(("Error", "Exception"))


def _base_names(node: ast.ClassDef) -> list[str]:
    """The last dotted part of each base: `serial.SerialException` -> SerialException."""
    return [b.id if isinstance(b, ast.Name) else b.attr
            for b in node.bases if isinstance(b, (ast.Name, ast.Attribute))]


def check_sizes(root: Path) -> list[Violation]:
    """No module over MAX_MODULE_LINES, no function over MAX_FUNCTION_LINES (without decorators)."""
    found = []
    for module in load(root):
        if module.lines > MAX_MODULE_LINES:
            found.append(Violation(module.path, 1, "sizes", f"module has {module.lines} lines, "
                                   f"over {MAX_MODULE_LINES}: split it"))
        for name, node in _functions(module.tree, ""):
            length = node.end_lineno - node.lineno + 1  # lineno is the `def` line
            if length > MAX_FUNCTION_LINES:
                found.append(Violation(module.path, node.lineno, "sizes", f"function {name} has "
                                       f"{length} lines, over {MAX_FUNCTION_LINES}: split it"))
    return found


def _functions(node: ast.AST, prefix: str
               ) -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """Every function under node, nested ones too, with a dotted qualified name."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            name = prefix + child.name
            if not isinstance(child, ast.ClassDef):
                yield name, child
            yield from _functions(child, name + ".")
        else:
            yield from _functions(child, prefix)
