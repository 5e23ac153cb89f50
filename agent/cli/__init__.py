"""The `stm32ota` command line: argparse subcommands, and the one place errors become exit codes."""

from __future__ import annotations

import argparse
import atexit
import importlib
import logging
import os
import sys
import threading
import traceback
from typing import Any, Optional, Sequence

from agent import __version__
from agent.cli.options import COMMANDS, CONFIG_MODULE, MODULES, PARSERS
from agent.errors import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_USAGE, Stm32OtaError

log = logging.getLogger(__name__)

# Commands whose work is over when their handler returns: no thread, child process or atexit
# hook of theirs outlives it (unlike run, sim, demo, fleet and the MQTT tools), so console()
# may end the process without the interpreter's teardown.
QUICK_EXIT = frozenset({"info", "flash", "read", "erase", "doctor", "option-bytes", "protect",
                        "unprotect", "chips"})


def load_handlers(command: Optional[str] = None) -> None:
    """Import the handler module of `command` (it registers its parser and handler), or of
    every subcommand and the --config target maker when `command` is None or unknown
    (`--help`, a typo)."""
    names = {MODULES[command]} if command in MODULES else {*MODULES.values(), CONFIG_MODULE}
    for module in sorted(names):
        importlib.import_module(f"{__name__}.{module}")


def _command_in(argv: Sequence[str]) -> Optional[str]:
    """The subcommand named in argv: the first word that is not an option (the options before
    it, -v/-q/--version/--help, take no value)."""
    return next((a for a in argv if not a.startswith("-")), None)


def _columns() -> int:
    """shutil.get_terminal_size().columns without importing shutil: $COLUMNS, else the width
    of the terminal on stdout, else 80."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter at argparse's width, without its `import shutil`: argparse makes one
    for every add_argument, so every command paid for shutil (and the bz2 and lzma it imports,
    3-6 ms) before a flash could start."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: Optional[int] = None, **kwargs: Any) -> None:
        if width is None:
            width = _columns() - 2  # as argparse does
        super().__init__(prog, indent_increment, max_help_position, width, **kwargs)


def build_parser(command: Optional[str] = None) -> argparse.ArgumentParser:
    """The command line (contract: DESIGN.md): every subcommand's options, or with `command`
    only that one's (the others are listed by name, their modules left unimported)."""
    load_handlers(command)
    p = argparse.ArgumentParser(prog="stm32ota", formatter_class=HelpFormatter, description=(
        "Flash STM32 microcontrollers through ST's ROM bootloader (UART or I2C), "
        "and keep them up to date over MQTT."))
    p.add_argument("--version", action="version", version=f"stm32ota {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: protocol)")
    p.add_argument("-q", "--quiet", action="store_true", help="only errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False, formatter_class=HelpFormatter)
    common.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                        help="more log output (-vv: protocol)")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="only errors")
    # With `command` given, argparse parses that command and no other: the options before it
    # take no value, so the first word that is no option is `command` (or a word it rejects).
    # The other commands are only listed (a usage error names them all, --help those loaded),
    # so they get no options: their parsers cost 5-10 ms of every start otherwise.
    only = command if command in MODULES else None
    unparsed = argparse.ArgumentParser(prog="stm32ota", add_help=False)
    for name in MODULES:
        helptext, setup = PARSERS.get(name, (None, None))
        if setup is None:  # not loaded
            sub.choices[name] = unparsed
        elif only not in (None, name):
            sub.add_parser(name, help=helptext, add_help=False)
        else:
            sp = sub.add_parser(name, help=helptext, description=helptext, parents=[common],
                                formatter_class=HelpFormatter)
            setup(sp)
    return p


def setup_logging(verbose: int, quiet: bool) -> None:
    """Plain log lines on stderr."""
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def console() -> None:
    """The `stm32ota` console script and `python -m agent`: main(), then the exit.

    After a short-lived command (QUICK_EXIT) the process ends with os._exit once the atexit
    hooks have run and stdout and stderr are flushed: the interpreter's teardown, freeing every
    module and object, took 30-40 ms after a flash's last byte (stm32flash, which the benchmark
    compares, takes none). main() returns as before, so tests still call it in-process.
    """
    argv = sys.argv[1:]
    code = main(argv)
    if _command_in(argv) in QUICK_EXIT:
        _exit_now(code)
    sys.exit(code)


def _exit_now(code: int) -> None:
    """os._exit(code) after what the interpreter's exit does that matters here: atexit hooks
    (logging's flush), then flushing stdout and stderr, where a failure (a full disk, a closed
    pipe) is reported as the interpreter reports it and makes the exit code 120. Returns, leaving
    the exit to the interpreter, while another thread runs."""
    if threading.active_count() > 1:
        return
    atexit._run_exitfuncs()  # noqa: SLF001 - what the interpreter runs at exit, then forgets
    for stream in (sys.stdout, sys.stderr):
        if stream is None or stream.closed:
            continue
        try:
            stream.flush()
        except Exception as exc:  # noqa: BLE001 - the interpreter catches all here, too
            code = 120
            try:
                print(f"Exception ignored in: {stream!r}", file=sys.stderr)
                traceback.print_exception(type(exc), exc, None, file=sys.stderr)
            except Exception:  # noqa: BLE001, S110 - stderr itself failed: nothing to tell
                pass
    os._exit(code)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line; returns the exit code (console() exits with it)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_command_in(argv))
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, --version (0) or a usage error argparse printed (2)
        return done.code if isinstance(done.code, int) else EXIT_USAGE
    if not args.command:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    setup_logging(args.verbose, args.quiet)
    if getattr(args, "config", None):
        importlib.import_module(f"{__name__}.{CONFIG_MODULE}")  # the --config target maker
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("stm32ota: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Stm32OtaError as err:
        print(f"stm32ota: error [{err.code}]: {err}", file=sys.stderr)
        return err.exit_code
    except OSError as err:  # a file that cannot be read or written
        code = "file_error"
        where = f": {err.filename}" if err.filename else ""
        print(f"stm32ota: error [{code}]: {err.strerror or err}{where}", file=sys.stderr)
        return EXIT_ERROR
