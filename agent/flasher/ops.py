"""What the flasher does to one target: info, start, flash, read, erase (like esptool's cmds.py).

Each operation opens a session (reset into the bootloader, identify the chip), refuses to
write, read or erase a chip with read-out protection, does its work and leaves; the command
line's handlers and the update pipeline both call these, so a chip is flashed one way.
Progress comes back through `progress(phase, done, total)`, steps without a measure through
`on_step(phase)`, cancel through a threading.Event; `sleep` is injectable. `i2c_bus` and
`pin_backend` hand in objects that stand in for the target's devices (a simulator's).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from typing import Callable, Optional

from agent.errors import BootConfigError, ChipMismatch, Nack, ReadProtected, UsageError
from agent.flasher import onchip
from agent.flasher.execute import Result, execute, read_memory
from agent.flasher.image import Image
from agent.flasher.plan import pages_of_range, plan
from agent.flasher.session import (Identity, Session, Sleep, open_session, refuse_if_boot0_ignored,
                                   reload_options)
from agent.flasher.target import Target
from agent.link import I2CBus
from agent.pins import Backend
from agent.progress import ProgressCallback
from agent.stm32 import options as optbytes

log = logging.getLogger(__name__)

UNPROTECT_HINT = ("to erase everything and remove it: stm32ota unprotect --read "
                  "--yes-erase-everything, with the same link options")

StepCallback = Callable[[str], None]
"""on_step(phase): a step without a measure begins ("enter_bootloader", "start")."""


def info(target: Target, *, i2c_bus: Optional[I2CBus] = None,
         pin_backend: Optional[Backend] = None, sleep: Sleep = time.sleep) -> Identity:
    """Enter the bootloader and identify the chip; it stays in the bootloader."""
    with open_session(target, i2c_bus=i2c_bus, pin_backend=pin_backend, sleep=sleep) as s:
        return s.identity()


def start(target: Target, address: Optional[int] = None, *, i2c_bus: Optional[I2CBus] = None,
          pin_backend: Optional[Backend] = None,
          sleep: Sleep = time.sleep) -> tuple[Identity, str]:
    """Identify the chip, then start its application (GO to `address` if given).

    Returns the identity and how the application was started: "reset" or "go".
    """
    with open_session(target, i2c_bus=i2c_bus, pin_backend=pin_backend, sleep=sleep) as s:
        return s.identity(), s.start_application(address)


def flash(target: Target, image: Image, *, built_for: Optional[int] = None,
          start_app: bool = False, start_address: Optional[int] = None,
          progress: Optional[ProgressCallback] = None, on_step: Optional[StepCallback] = None,
          cancel: Optional[threading.Event] = None, i2c_bus: Optional[I2CBus] = None,
          pin_backend: Optional[Backend] = None,
          sleep: Sleep = time.sleep) -> tuple[Result, Optional[str]]:
    """Erase the pages `image` covers, write, verify (target.verify) and optionally start it.

    `built_for` is the product ID the image is made for (a release's chip): the chip must be
    it, and it is expected when the target expects none. Returns the Result and how the
    application was started ("reset", "go"; None: it stays in the bootloader).
    """
    step = on_step or _no_step
    if target.expect_chip is None and built_for is not None:
        target = replace(target, expect_chip=built_for)
    step("enter_bootloader")
    with open_session(target, i2c_bus=i2c_bus, pin_backend=pin_backend, sleep=sleep) as s:
        if built_for is not None and s.info.pid != built_for:
            raise ChipMismatch(f"the image is built for chip 0x{built_for:03X} but "
                               f"{target.describe()} answered 0x{s.info.pid:03X} ({s.chip.name})")
        # the session's first READ: read-out protection, the empty check and the skip
        # check's first look, all at the flash start as it is before anything is written
        seen = (s.chip.flash_start, s.facts.head())
        if s.read_protected:
            raise ReadProtected(
                f"{s.chip.name} has read-out protection active: nothing was written. It is never "
                f"removed automatically because that mass-erases the chip ({UNPROTECT_HINT})")
        the_plan = plan(image, s.chip, flash_size=s.facts.flash_size_for(image.end),
                        dual_bank=s.dual_bank,
                        max_write=s.link.caps.max_write)  # ChipMismatch before any erase
        refuse_if_boot0_ignored(s)  # before the first erase: the next entry must still work
        result = execute(the_plan, s.bl, progress, verify=target.verify,
                         retries=target.write_retries, cancel=cancel,
                         skip=target.skip_unchanged, seen=seen,
                         crc_on_chip=onchip.checker(s, target.verify))
        if not start_app:
            return result, None
        step("start")
        return result, s.start_application(start_address)


def read(target: Target, address: Optional[int] = None, length: Optional[int] = None, *,
         progress: Optional[ProgressCallback] = None, cancel: Optional[threading.Event] = None,
         i2c_bus: Optional[I2CBus] = None, pin_backend: Optional[Backend] = None,
         sleep: Sleep = time.sleep) -> tuple[int, bytes]:
    """Read `length` bytes from `address` (flash or any readable memory); returns the address
    and the bytes. Like stm32flash -r, no address means the flash start and no length the
    rest of the flash from there (the whole flash, as the chip reports its size)."""
    with open_session(target, i2c_bus=i2c_bus, pin_backend=pin_backend, sleep=sleep) as s:
        if s.read_protected:
            raise ReadProtected(f"{s.chip.name} has read-out protection active; memory cannot "
                                f"be read ({UNPROTECT_HINT})")
        flash_end = s.chip.flash_start + s.flash_size
        address = s.chip.flash_start if address is None else address
        if length is None:
            if not s.chip.flash_start <= address < flash_end:
                raise UsageError(f"--address 0x{address:08X} is outside the flash of "
                                 f"{s.chip.name}: give --length too")
            length = flash_end - address
        try:
            return address, read_memory(s.bl, address, length, progress,
                                        retries=target.write_retries, cancel=cancel)
        except Nack as err:
            start_, end = s.chip.flash_start, s.chip.flash_start + s.flash_size - 1
            raise Nack(f"{err}; the bootloader reads only mapped memory (flash of "
                       f"{s.chip.name}: 0x{start_:08X}-0x{end:08X}): check --address and "
                       f"--length") from err


def erase(target: Target, address: Optional[int] = None, length: Optional[int] = None, *,
          bank: Optional[int] = None, i2c_bus: Optional[I2CBus] = None,
          pin_backend: Optional[Backend] = None, sleep: Sleep = time.sleep) -> str:
    """Erase all flash (no address), one bank, or the whole pages of a range; says what."""
    with open_session(target, i2c_bus=i2c_bus, pin_backend=pin_backend, sleep=sleep) as s:
        if s.read_protected:
            raise ReadProtected(f"{s.chip.name} has read-out protection active: nothing "
                                f"erased ({UNPROTECT_HINT})")
        if bank is not None:
            if s.dual_bank is not True:
                raise UsageError(f"{s.chip.name} on {target.describe()} is not known to be in "
                                 "dual-bank mode: no bank to erase alone; use --all",
                                 code="bad_bank")
            s.bl.bank_erase(bank)
            return f"erased bank {bank} of {s.chip.name}"
        if address is None:
            return _erase_all(s)
        chosen = pages_of_range(s.chip, s.flash_size, address, length or 0, s.dual_bank)
        s.bl.erase_pages(chosen)
        return f"erased pages {chosen[0]}-{chosen[-1]} ({length} bytes)"


PROTECTION = ("read_protect", "read_unprotect", "write_protect", "write_unprotect")


def protection(target: Target, change: str, sectors: tuple[int, ...] = (), *,
               i2c_bus: Optional[I2CBus] = None, pin_backend: Optional[Backend] = None,
               sleep: Sleep = time.sleep) -> str:
    """Set or remove read-out or write protection, only ever on explicit request (the chip
    resets afterwards; removing read-out protection mass-erases it, AN3155 3.12)."""
    if change not in PROTECTION:
        raise UsageError(f"protection change must be one of {', '.join(PROTECTION)}")
    with open_session(target, i2c_bus=i2c_bus, pin_backend=pin_backend, sleep=sleep) as s:
        name = s.chip.name
        if change == "read_unprotect":
            s.bl.readout_unprotect()
            return f"removed the read-out protection of {name}: its flash is erased; it reset"
        if s.read_protected:  # the other three are refused by the ROM while RDP is active
            raise ReadProtected(f"{name} has read-out protection active ({UNPROTECT_HINT})")
        if change == "read_protect":
            s.bl.readout_protect()
            return (f"set read-out protection on {name}; it reset (reading, writing and "
                    "erasing through the bootloader are refused from now on)")
        if change == "write_unprotect":
            s.bl.write_unprotect()
            return f"removed the write protection of every sector of {name}; it reset"
        s.bl.write_protect(list(sectors))
        return f"write-protected sectors {', '.join(map(str, sectors))} of {name}; it reset"


def option_bytes(target: Target, *, boot_from_pin: bool = False,
                 i2c_bus: Optional[I2CBus] = None, pin_backend: Optional[Backend] = None,
                 sleep: Sleep = time.sleep) -> tuple[Identity, bool]:
    """Read the user option bytes; with `boot_from_pin` make the BOOT0 pin count again.

    Returns the identity (its `options` as they are now) and whether they were changed.
    Only the boot-selection bit changes; the whole option area is written back as read
    (the bootloader rewrites all of it, AN3155 3.6) and the chip reloads it and resets.
    """
    with open_session(target, i2c_bus=i2c_bus, pin_backend=pin_backend, sleep=sleep) as s:
        if s.read_protected:
            raise ReadProtected(f"{s.chip.name} has read-out protection active: its option "
                                "bytes cannot be read or changed through the bootloader")
        if s.options is None:
            raise UsageError(f"{s.chip.name}: stm32ota knows no boot-selection bit in its "
                             "option bytes (the BOOT0 pin always counts, or the options are "
                             "not memory-mapped)", code="no_boot_select")
        if not boot_from_pin or s.options.pin_used:
            return s.identity(), False
        size = min(s.chip.option_end - s.chip.option_start, 256)
        area = read_memory(s.bl, s.chip.option_start, size, None, retries=target.write_retries)
        after = reload_options(s, optbytes.boot_from_pin(s.chip, area))
        if after is None or not after.pin_used:
            raise BootConfigError(
                f"the option bytes of {s.chip.name} still ignore the BOOT0 pin after writing "
                f"them (read back {after.raw.hex() if after else 'nothing'}): power-cycle the "
                "board (some bootloaders load new options only then, AN2606) and check again")
        return s.identity(), True


def _erase_all(s: Session) -> str:
    if s.chip.mass_erase and s.flash_size == s.chip.flash_size:
        s.bl.mass_erase()
    else:  # AN2606 / stm32flash: L0/L1 cannot mass erase; erase page by page
        s.bl.erase_pages(list(s.chip.page_map(s.flash_size, s.dual_bank)))
    return f"erased all {size_text(s.flash_size)} of {s.chip.name}"


def size_text(n: int) -> str:
    """A size for people: whole KiB as "256 KiB", anything else in bytes."""
    return f"{n // 1024} KiB" if n >= 1024 and n % 1024 == 0 else f"{n} B"


def _no_step(phase: str) -> None:
    """An on_step callback that ignores everything."""
