"""`stm32ota demo`: a whole signed firmware update on one machine, with no hardware and no setup.

    outcome = run_demo(DemoOptions(fast=True, workdir=Path("demo")))   # or DemoFailed

What runs, all real except the chips and their reset wires (see `agent.demo.world`):

- an MQTT broker (amqtt from the `demo` extra in a child process, or a mosquitto binary, or
  `--broker HOST:PORT`);
- two simulated STM32L432s running firmware 1.0.0: `pump` on a UART (a pty, AN3155) and
  `sensor` on an I2C bus (AN4221, 0x48), both reset through mock NRST/BOOT0 pins;
- one agent (`agent.service.Service`) configured by a generated config.yaml, whose state says
  1.0.0 is installed;
- a throwaway ed25519 key, version 1.1.0 of both firmwares (Intel HEX for pump, bin for
  sensor) on a local HTTP server, signed release manifests published retained, then `install`
  on each target's command topic, as Home Assistant's Install button sends it;
- the job topics rendered live; at the end each chip's flash is compared byte for byte with
  1.1.0 and written to `<workdir>/flash-<target>.bin`.

`faults=True` adds a NACK storm on both chips (every 5th write packet refused), the L432's
missing ACK after an I2C erase, slow erases, and a crash and restart of the demo's own broker
while the flash is being changed.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import threading
import time
from dataclasses import dataclass
from typing import Optional

from agent.flasher import image as firmware
from agent.demo.parts import FLASH_BASE
from agent.demo.view import Board
from agent.demo.world import (NACK_EVERY, NEW, OLD, TARGETS, DemoOptions, World,
                              prepare_workdir)
from agent.errors import DemoFailed, Stm32OtaError
from agent.ota.jobs import SUCCEEDED, TOUCHES_FLASH

log = logging.getLogger(__name__)

__all__ = ["DemoFailed", "DemoOptions", "Outcome", "run_demo"]

RELEASE_TIMEOUT = 15.0  # for the agent to take the announced release
STATE_TIMEOUT = 10.0  # for the agent's retained state to say what it installed
BROKER_DOWN = 1.5  # seconds the broker stays away in --faults


@dataclass
class Outcome:
    """How each target ended: {name: (job status, installed version, flash verified, why not)}."""

    seconds: float
    targets: dict[str, tuple[str, Optional[str], bool, str]]

    @property
    def ok(self) -> bool:
        """True when every target is verified on the new version."""
        return all(status == SUCCEEDED and version == NEW and verified and not why
                   for status, version, verified, why in self.targets.values())


def run_demo(opts: DemoOptions) -> Outcome:
    """Set up, update both targets, check, summarise, tear down; DemoFailed unless all is well."""
    with contextlib.ExitStack() as stack:
        work, temporary = prepare_workdir(opts.workdir)
        if temporary:
            stack.callback(shutil.rmtree, work, ignore_errors=True)
        world = World(opts, work, stack)
        world.build()
        _intro(world, temporary)
        assert world.board is not None
        stack.enter_context(_logs_to(world.board, world.hidden_logs))
        world.start()
        outcome = _update(world)
        _summary(world, outcome)
        if opts.keep:
            _keep(world)
    if not outcome.ok:
        bad = [f"{n}: {why}" for n, (_, _, _, why) in outcome.targets.items() if why]
        raise DemoFailed("the update did not end verified on both targets: " + "; ".join(bad))
    return outcome


@contextlib.contextmanager
def _logs_to(board: Board, hidden: dict[str, int]):  # type: ignore[no-untyped-def]
    """Show log records between the progress bars instead of over them."""
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers[:] = [_ToBoard(board, hidden, verbose=root.level <= logging.INFO)]
    try:
        yield
    finally:
        root.handlers[:] = saved


class _ToBoard(logging.Handler):
    """Records go through the board; after SHOWN records of one logger the rest are counted."""

    SHOWN = 3

    def __init__(self, board: Board, hidden: dict[str, int], verbose: bool) -> None:
        super().__init__()
        self.board, self.hidden, self.verbose = board, hidden, verbose
        self.seen: dict[str, int] = {}
        self.setFormatter(logging.Formatter("  log: %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        """Show one record, or count it once its logger has said enough."""
        try:
            n = self.seen[record.name] = self.seen.get(record.name, 0) + 1
            if self.verbose or record.levelno >= logging.ERROR or n <= self.SHOWN:
                self.board.say(self.format(record))
                return
            if n == self.SHOWN + 1:
                self.board.say(f"  log: (more from {record.name} are counted in the summary; "
                               "-v shows them all)")
            self.hidden[record.name] = self.hidden.get(record.name, 0) + 1
        except Exception:  # logging must never break the demo
            self.handleError(record)


def _intro(w: World, temporary: bool) -> None:
    assert w.board is not None and w.web is not None
    say = w.board.say
    timing = "--fast: no line time" if w.o.fast else "real timing: 115200 baud, 400 kHz I2C, " \
        "datasheet erase/program times"
    say(f"stm32ota demo: firmware {OLD} -> {NEW} on two simulated STM32L432s ({timing})")
    say(f"  broker    {w.broker_text}")
    say(f"  firmware  http://127.0.0.1:{w.web.port}/ serves {', '.join(p.name for p in sorted(w.files.values()))}")
    say(f"  signing   throwaway ed25519 key {w.work / 'keys' / 'demo-release.key'}")
    for t in TARGETS:
        say(f"  {t.name:<9} STM32L432 on {w.labels[t.name]}, runs {t.product} {OLD}")
    where = " (temporary; keep it with --workdir DIR)" if temporary else ""
    say(f"  agent     id '{w.svc.agent_id}', config {w.work / 'config.yaml'}{where}")
    if w.o.faults:
        say(f"  faults    every {NACK_EVERY}th write packet NACKed, slow erases, no ACK after "
            "the I2C erase (the L432 quirk)" + (", broker restart mid-flash" if w.broker
                                                 else "; no broker restart: --broker is not ours"))


def _wait(cond, timeout: float, board: Board) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        board.changed.wait(0.1)
        board.changed.clear()
    return True


def _update(w: World) -> Outcome:
    board = w.board
    assert board is not None
    rows = board.rows
    if not _wait(lambda: all(r.installed for r in rows.values()), STATE_TIMEOUT, board):
        raise DemoFailed("the agent published no state for its targets; see the log above")
    before = {n: r.installed for n, r in rows.items()}
    for t in TARGETS:
        w.viewer.publish_sticky(w.topics.release(t.product), w.manifests[t.name])
        m = w.manifests[t.name]
        board.say(f"published {t.product} {NEW} ({m['format']}, {m['size']} bytes, signed) "
                  f"retained on {w.topics.release(t.product)}")
    if not _wait(lambda: all(r.latest == NEW for r in rows.values()), RELEASE_TIMEOUT, board):
        raise DemoFailed(f"the agent did not take the {NEW} releases; see the log above")
    started = time.monotonic()
    for name in rows:
        w.viewer.publish(w.topics.cmd(name), "install")
    board.say(f"sent install to {', '.join(w.topics.cmd(n) for n in rows)}\n")
    board.start()
    chaos = _Chaos(w)
    timeout = w.o.timeout or (60.0 if w.o.fast else 180.0)
    deadline = started + timeout
    while not board.all_done() and time.monotonic() < deadline:
        board.changed.wait(0.2)
        board.render()
        chaos.poll()
    chaos.join()
    _wait(lambda: all(r.installed == NEW or r.status != SUCCEEDED for r in rows.values()),
          STATE_TIMEOUT, board)
    board.stop()
    w.before, w.chaos_note = before, chaos.note
    return _check(w, time.monotonic() - started, timeout)


class _Chaos:
    """--faults: restart the embedded broker once while a flash is being changed."""

    def __init__(self, w: World) -> None:
        self.w = w
        self.thread: Optional[threading.Thread] = None
        self.note = ""

    def poll(self) -> None:
        w = self.w
        if not w.o.faults or w.broker is None or self.thread is not None:
            return
        busy = [r for r in w.board.rows.values() if not r.done and r.phase in TOUCHES_FLASH]
        if busy:
            self.note = f"broker restarted while {busy[0].name} was in {busy[0].phase}"
            self.thread = threading.Thread(target=self._restart, args=(busy[0].name,
                                                                       busy[0].phase),
                                           name="demo chaos", daemon=True)
            self.thread.start()

    def _restart(self, name: str, phase: str) -> None:
        w = self.w
        w.board.say(f"fault: killing the MQTT broker while {name} is in {phase}")
        try:
            w.broker.restart(down=BROKER_DOWN)
        except Stm32OtaError as err:
            self.note = f"the broker did not come back: {err}"
            w.board.say(f"fault: {self.note}")
            return
        w.board.say(f"fault: broker back on {w.host}:{w.port} after {BROKER_DOWN:.1f} s; "
                    "the agent reconnects and re-publishes its retained state")

    def join(self) -> None:
        if self.thread is not None:
            self.thread.join(10 + BROKER_DOWN)


def _check(w: World, seconds: float, timeout: float) -> Outcome:
    """Compare each chip's flash with the new image; write the flash dumps."""
    result = {}
    for t in TARGETS:
        row, sim = w.board.rows[t.name], w.sims[t.name]
        (w.work / f"flash-{t.name}.bin").write_bytes(bytes(sim.flash))
        image = firmware.load(str(w.files[(t.name, NEW)]), bin_default=FLASH_BASE)
        verified, why = flash_matches(sim, image)
        if not row.done:
            why = f"no result after {timeout:.0f} s (last seen: {row.status} {row.phase})"
        elif row.status != SUCCEEDED:
            err = row.error or {}
            why = f"job {row.status}: [{err.get('code')}] {err.get('message')}"
        elif row.installed != NEW:
            why = f"the agent reports {row.installed} installed, not {NEW}"
        result[t.name] = (row.status, row.installed, verified, why)
    return Outcome(seconds, result)


def flash_matches(sim, image: "firmware.Image") -> tuple[bool, str]:  # type: ignore[no-untyped-def]
    """Compare the simulated chip's flash with every segment of the image, byte for byte."""
    for seg in image.segments:
        off = seg.address - FLASH_BASE
        got = bytes(sim.flash[off:off + len(seg.data)])
        if got != seg.data:
            bad = next(i for i, (a, b) in enumerate(zip(got, seg.data)) if a != b)
            return False, f"flash differs from {NEW} at 0x{seg.address + bad:08X}"
    if sim.mode != "application":
        return False, f"the chip is in {sim.mode} mode, not running the application"
    return True, ""


def _fault_counts(w: World) -> str:
    nacks = sum(1 for sim in w.sims.values() for e in sim.events
                if e[0] == "nack" and "fault injection" in str(e[-1]))
    quirks = sum(1 for sim in w.sims.values() for e in sim.events
                 if e[:2] == ("fault", "i2c-erase-no-ack"))
    return f"{nacks} write packets NACKed, {quirks} I2C erase(s) without the final ACK"


def _summary(w: World, outcome: Outcome) -> None:
    say = w.board.say
    say("")
    say(f"Summary: {OLD} -> {NEW} in {outcome.seconds:.1f} s "
        f"({'--fast' if w.o.fast else 'real timing'})")
    say(f"  {'target':<8} {'link':<18} {'before':<7} {'after':<7} {'job':<10} {'time':>6}  flash")
    for t in TARGETS:
        row = w.board.rows[t.name]
        status, installed, verified, why = outcome.targets[t.name]
        took = f"{row.finished - row.started:.1f} s" if row.finished and row.started else "-"
        size = w.files[(t.name, NEW)].name
        if verified:
            check = f"verified: {t.size} bytes match {size}, application running"
            check += f"; but {why}" if why else ""
        else:
            check = f"NOT verified: {why}"
        say(f"  {t.name:<8} {row.label:<18} {w.before.get(t.name) or '?':<7} "
            f"{installed or '?':<7} {status:<10} {took:>6}  {check}")
    if w.o.faults:
        say(f"  faults ridden through: {_fault_counts(w)}"
            + (f"; {w.chaos_note}" if w.chaos_note else ""))
    if w.hidden_logs:
        say("  log lines not shown: " + ", ".join(f"{n} from {name}" for name, n
                                                   in sorted(w.hidden_logs.items())))
    if w.o.workdir is not None:
        say(f"  flash dumps: {', '.join(str(w.work / f'flash-{t.name}.bin') for t in TARGETS)}")
    else:
        say("  (add --workdir DIR to keep the keys, images, manifests and flash dumps)")
    if outcome.ok:
        say(f"Result: OK, both targets run {NEW}, verified byte for byte against the signed images.")
    else:
        say("Result: FAILED, " + "; ".join(f"{n}: {why}" for n, (_, _, _, why)
                                           in outcome.targets.items() if why))


def _keep(w: World) -> None:
    """Leave everything running until Ctrl-C, with what to look at."""
    say = w.board.say
    t0 = TARGETS[0].name
    login = f" -u {w.o.username} -P PASSWORD" if w.o.username else ""
    try:  # Ctrl-C may come while the hints are still being printed: stop cleanly then too
        say("")
        say("--keep: the broker, both simulated chips, the web server and the agent keep "
            "running; Ctrl-C stops them.")
        say(f"  broker   {w.host}:{w.port}")
        say(f"  watch    mosquitto_sub -h {w.host} -p {w.port}{login} -t '{w.topics.base}/#' -v")
        say(f"  topics   {w.topics.state(t0)}, {w.topics.job(t0)}, {w.topics.events(t0)}, "
            f"{w.topics.discovery(t0)}")
        say(f"  commands mosquitto_pub -h {w.host} -p {w.port}{login} -q 1 -t {w.topics.cmd(t0)} "
            "-m check (or abort, install)")
        say(f"  files    {w.work}")
        w.board.start()
        while True:
            w.board.changed.wait(1.0)
            w.board.render()
    except KeyboardInterrupt:
        say("stopping the demo")
