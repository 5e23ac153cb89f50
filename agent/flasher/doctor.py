"""`stm32ota doctor`: walk a new board through what breaks ROM-bootloader flashing, in order.

Each check gives a Verdict (ok, warn, fail, skipped) with the fix; nothing is printed here
(cli/doctor.py does). The checks ride on one ordinary session (flasher.session): the port
and its parity, the bootloader's answer and baud rate, the chip, read protection, the
option bytes that decide BOOT0, the empty-flash latch and write protection are read while
the chip is in its bootloader; the reset pins are tested last, by leaving the bootloader
the normal way, so the chip ends running its application as it did before.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Optional

from agent.errors import (EXIT_NO_BOOTLOADER, EXIT_PROTECTED, EXIT_PROTOCOL, EXIT_WRONG_CHIP,
                          LinkError, NoBootloader, PinError, ProtocolError,
                          ReadProtected, StillInBootloader, Stm32OtaError)
from agent.flasher.session import Session, Sleep, open_session
from agent.flasher.target import Target, UartSettings
from agent.link import I2CBus, baud_rates
from agent.link.uart import PARITY_HINT
from agent.pins import Backend
from agent.stm32 import options as optbytes

log = logging.getLogger(__name__)

CHECKS = ("port", "bootloader", "reset_pins", "chip", "read_protection", "boot_options",
          "empty_latch", "write_protection")
SAME_OPTIONS = "with the same link and pin options"
PINS_HINT = ("configure the reset pins (--pins with --nrst and --boot0, or pins: in the "
             "config) so stm32ota can reset the chip into its bootloader and out again")


@dataclass(frozen=True)
class Verdict:
    """The outcome of one check: status ok, warn, fail or skipped, what was seen, the fix."""

    check: str
    status: str
    detail: str
    fix: str = ""
    exit_code: int = 0  # for a fail: the exit code of its failure class (errors.py)

    def as_dict(self) -> dict[str, str]:
        """{check, status, detail, fix}: one entry of `doctor --json`."""
        return {"check": self.check, "status": self.status, "detail": self.detail,
                "fix": self.fix}


def exit_code(verdicts: list[Verdict]) -> int:
    """The exit code of the first failed check; 0 when none failed (warnings pass)."""
    return next((v.exit_code for v in verdicts if v.status == "fail"), 0)


def diagnose(target: Target, *, i2c_bus: Optional[I2CBus] = None,
             pin_backend: Optional[Backend] = None, sleep: Sleep = time.sleep) -> list[Verdict]:
    """Run every check in order against the target; one Verdict per name in CHECKS."""
    probe = replace(target, expect_chip=None)  # doctor compares itself and still leaves
    try:
        with open_session(probe, i2c_bus=i2c_bus, pin_backend=pin_backend, sleep=sleep) as s:
            return _in_session(s, target)
    except (LinkError, ProtocolError) as err:
        return _complete(_not_entered(err, target))


def _complete(verdicts: list[Verdict]) -> list[Verdict]:
    """Fill the checks not reached with "skipped", naming the one that stopped them."""
    stop = next((v.check for v in verdicts if v.status == "fail"), "an earlier check")
    done = {v.check for v in verdicts}
    rest = [Verdict(c, "skipped", f"not checked: {stop} failed") for c in CHECKS if c not in done]
    return sorted(verdicts + rest, key=lambda v: CHECKS.index(v.check))


def _not_entered(err: Stm32OtaError, target: Target) -> list[Verdict]:
    """What a session that could not start tells: which check its error belongs to."""
    opened = Verdict("port", "ok", f"{target.describe()} opened")
    if isinstance(err, ReadProtected):
        return [opened, Verdict("read_protection", "fail", str(err), _RDP_FIX, EXIT_PROTECTED)]
    if isinstance(err, PinError):
        return [opened, Verdict("reset_pins", "fail", str(err),
                                "check the GPIO chip and line numbers and that no other "
                                "program holds the lines", EXIT_NO_BOOTLOADER)]
    if isinstance(err, NoBootloader):
        return [opened, Verdict("bootloader", "fail", str(err), _no_answer_fix(target),
                                EXIT_NO_BOOTLOADER)]
    if isinstance(err, ProtocolError):
        return [opened, Verdict("bootloader", "fail", str(err),
                                "the answer is not the ROM bootloader's: check the baud "
                                "rate, parity (8E1) and that nothing else talks on the line",
                                EXIT_PROTOCOL)]
    fix = PARITY_HINT if err.code == "no_parity" else (
        "close the other program (a running agent: stop it first)" if err.code == "port_busy"
        else "check the port name, permissions (dialout group) and the adapter")
    return [Verdict("port", "fail", str(err), fix, EXIT_NO_BOOTLOADER)]


def _no_answer_fix(target: Target) -> str:
    pins = target.pins
    text = "check TX/RX (crossed) and a common GND"
    if pins.nrst is None:
        return text + "; put the chip in its bootloader by hand (BOOT0 high, reset) or " + \
            PINS_HINT
    return text + ("; check that BOOT0 is wired to the line given and high at reset "
                   "(--boot0-active-low for an inverting driver) and that NRST is wired "
                   "(--nrst-active-high for an inverting driver); a G0/C0 with factory option "
                   "bytes ignores BOOT0 once flashed (only SWD, e.g. STM32CubeProgrammer, can "
                   "then clear nBOOT_SEL)")


_RDP_FIX = ("read-out protection stays until removed, which mass-erases the chip; stm32ota "
            "never does that on its own: remove it deliberately (e.g. stm32flash -k, or "
            "STM32CubeProgrammer) if the flash may be lost")


def _in_session(s: Session, target: Target) -> list[Verdict]:
    """All checks while in the bootloader, then the reset-pin check, which leaves it."""
    early = [_port(s, target), _bootloader(s, target), _chip(s, target.expect_chip)]
    if s.read_protected:
        hidden = "not readable: read-out protection hides the option bytes and the flash"
        later = [Verdict("read_protection", "fail",
                         f"{s.chip.name} has read-out protection active: nothing can be "
                         "read or written through the bootloader", _RDP_FIX, EXIT_PROTECTED)]
        later += [Verdict(c, "skipped", hidden) for c in CHECKS[5:]]
    else:
        later = [Verdict("read_protection", "ok", "read-out protection is off (level 0)"),
                 _boot_options(s), _empty_latch(s), _write_protection(s)]
    return sorted(early + later + [_reset_pins(s)], key=lambda v: CHECKS.index(v.check))


def _port(s: Session, target: Target) -> Verdict:
    link = target.link
    if not isinstance(link, UartSettings):
        return Verdict("port", "ok", f"{target.describe()} opened")
    if link.parity != "even":
        return Verdict("port", "warn", f"{link.port} opened with 8N1 as configured: the "
                       "bootloader needs 8E1 (AN3155 2); only the simulator's pty works "
                       "without parity", "use --parity even (parity: even in the config)")
    if not getattr(s.link, "parity_kept", True):
        return Verdict("port", "ok", f"{link.port} is a pseudo-terminal: it carries no parity "
                       "(the simulator); a real port must keep even parity")
    return Verdict("port", "ok", f"{link.port} opened; even parity with checking read back")


def _bootloader(s: Session, target: Target) -> Verdict:
    version = f"V{s.info.version >> 4}.{s.info.version & 0xF}"
    link = target.link
    if not isinstance(link, UartSettings):
        return Verdict("bootloader", "ok", f"bootloader {version} answers on {target.describe()}")
    rate = getattr(s.link, "baud", None)
    first = baud_rates(link.baud)[0]
    text = f"bootloader {version} answers at {rate} baud"
    if link.baud == "auto" and rate != first:
        return Verdict("bootloader", "warn", f"{text}, not at {first}: the ROM's autobaud is "
                       "off (AN2606 4.5: software detection has up to 5 % jitter)",
                       f"set --baud {rate} (baud: {rate} in the config) so every session "
                       "starts at the rate that works")
    return Verdict("bootloader", "ok", text)


def _chip(s: Session, expect: Optional[int]) -> Verdict:
    from_reg = "" if s.flash_size == s.chip.flash_size else " (flash-size register)"
    text = (f"0x{s.info.pid:03X} {s.chip.name} ({s.chip.family}), "
            f"{s.flash_size // 1024} KiB flash{from_reg}")
    if expect is not None and expect != s.info.pid:
        return Verdict("chip", "fail", f"expected 0x{expect:03X} but found {text}",
                       "check --expect-chip (expect_chip in the config) or the wiring: "
                       "is this the board you meant?", EXIT_WRONG_CHIP)
    return Verdict("chip", "ok", text)


def _boot_options(s: Session) -> Verdict:
    opts = s.options
    if opts is None:
        if optbytes.read_length(s.chip) or s.chip.family in ("L5", "U5"):
            return Verdict("boot_options", "warn", f"the option bytes of {s.chip.name} could "
                           "not be read; whether BOOT0 counts is unknown",
                           "read them with STM32CubeProgrammer (nBOOT_SEL, nSWBOOT0)")
        return Verdict("boot_options", "ok", f"{s.chip.family}: no option bit overrides the "
                       "BOOT0 pin")
    word = f"{opts.register} 0x{opts.value:08X}"
    if opts.pin_used:
        return Verdict("boot_options", "ok", f"{word}: BOOT0 comes from the pin")
    after = ("once the flash is programmed the bootloader cannot be entered again" if
             opts.nboot0 else "the chip always starts its bootloader, never the application")
    return Verdict("boot_options", "fail", f"{word}: the BOOT0 pin is ignored "
                   f"({opts.select_bit}, BOOT0 from {opts.boot0_source}); {after}",
                   f"run `stm32ota option-bytes --boot-from-pin` {SAME_OPTIONS} before the "
                   "first flash (stm32ota flash refuses until then: boot0_ignored)",
                   EXIT_NO_BOOTLOADER)


def _empty_latch(s: Session) -> Verdict:
    chip = s.chip
    if not chip.empty_check:
        return Verdict("empty_latch", "ok", f"{chip.family} has no empty check: BOOT0 alone "
                       "decides at every reset")
    if not s.blank_at_entry:
        return Verdict("empty_latch", "ok", "the flash is programmed; stm32ota clears the "
                       "empty-check flag when it starts the application")
    how = ("stm32ota clears the flag with a RAM routine when it starts the application "
           "after flashing (flash --go)" if chip.empty_flag else
           "power-cycle the board once after the first flash")
    return Verdict("empty_latch", "warn", f"the flash is empty and {chip.name} has an empty "
                   "check: the flag sampled at power-on sends every reset back to the "
                   "bootloader until it is cleared, also after flashing", how)


def _write_protection(s: Session) -> Verdict:
    span = optbytes.wrp_span(s.chip)
    if span is None:
        return Verdict("write_protection", "skipped", f"unknown: stm32ota does not know the "
                       f"write-protection option layout of {s.chip.family}")
    address, length = span
    try:
        raw = s.bl.read_memory(address, length)
    except ProtocolError as err:
        return Verdict("write_protection", "skipped", f"unknown: the WRP option words at "
                       f"0x{address:08X} are not readable ({err})")
    areas = optbytes.write_protected(s.chip, raw)
    if not areas:
        return Verdict("write_protection", "ok", "no write-protected flash")
    return Verdict("write_protection", "fail", "write protection active: " + "; ".join(areas),
                   "flashing those pages fails; remove it deliberately (stm32flash -u, or "
                   "STM32CubeProgrammer) if they may change", EXIT_PROTECTED)


def _reset_pins(s: Session) -> Verdict:
    """Leave the bootloader the normal way and see that the chip falls silent."""
    if not s.pins.can_reset:
        return Verdict("reset_pins", "skipped", "skipped: no reset pins; the chip stays in "
                       "its bootloader", PINS_HINT)
    entered = "the chip answers after entering"
    back = _reset_and_listen(s)
    if back is None:
        return Verdict("reset_pins", "ok", f"{entered} and is silent after the reset that "
                       "leaves it: NRST and BOOT0 work")
    if not back:
        return _nrst_dead()
    if s.blank_at_entry and s.chip.empty_check:
        return Verdict("reset_pins", "ok", f"{entered}; NRST resets it (a fresh bootloader "
                       "answered); BOOT0 low cannot be tested while the flash is empty, since "
                       "the empty check starts the bootloader anyway",
                       "run doctor again after the first flash")
    try:  # back in the ROM: leave the way flash --go does (clears an empty-check flag)
        how = s.start_application()
    except StillInBootloader as err:
        return _still(s, err)
    except (LinkError, ProtocolError) as err:
        return Verdict("reset_pins", "fail", f"leaving the bootloader failed: {err}",
                       "check the NRST wiring and its polarity", EXIT_NO_BOOTLOADER)
    return Verdict("reset_pins", "warn", f"{entered}; a plain reset brought it back to its "
                   f"bootloader, leaving with {how} worked: its empty-check flag was still "
                   "set from a power-on with empty flash", "power-cycle the board once")


def _reset_and_listen(s: Session) -> Optional[bool]:
    """Run the exit sequence; None: silent after it, True: a fresh bootloader answers,
    False: the same bootloader session answers (no reset happened; UART only)."""
    s.pins.exit_bootloader(s.exit_sequence or None)
    s.sleep(s.bl.timeouts.reset_settle)
    s.bl.fresh_sync = None
    try:
        s.bl.connect()
    except (LinkError, ProtocolError):
        return None
    return s.bl.fresh_sync is not False


def _still(s: Session, err: StillInBootloader) -> Verdict:
    fix = ("check that BOOT0 really goes low at reset: wiring, a pull-down, --boot0-active-low "
           "for an inverting driver")
    if s.options is not None and not s.options.pin_used:
        fix = f"run `stm32ota option-bytes --boot-from-pin` {SAME_OPTIONS}"
    return Verdict("reset_pins", "fail", f"after the reset the chip comes back to its "
                   f"bootloader: {err}", fix, EXIT_NO_BOOTLOADER)


def _nrst_dead() -> Verdict:
    return Verdict("reset_pins", "fail", "the reset pulse did not reset the chip: the "
                   "bootloader kept its session (it answered the next sync with NACK)",
                   "check that NRST is wired to the line given and its polarity "
                   "(--nrst-active-high for an inverting driver)", EXIT_NO_BOOTLOADER)
