"""Checking flash by a CRC the chip computes itself, for bootloaders without Get Checksum.

A USART bootloader before V3.3 (the L432's V3.1) has no 0xA1 (AN3155 3.13), which leaves
read-back: the whole image on the line a second time. Instead the CRC routine of
agent/stm32/ramcrc.py goes to RAM above the bootloader's own (`Chip.ram_start`, AN2606), GO
starts it (AN3155 3.5; stm32flash runs its reset code the same way), the chip comes back to
its bootloader once the routine should be done, and one READ fetches one CRC-32 per range.

Coming back needs a sure way (`way_back`); without one nothing goes to RAM and the caller
reads back. Anything that goes wrong before GO (a refused upload) also means read-back; a
routine that had not finished leaves no done mark, so its RAM is never taken for an answer.
"""

from __future__ import annotations

import logging
import os
from typing import Optional

from agent.errors import (LinkError, Nack, NoBootloader, ProtocolError, Stm32OtaError,
                          VerifyFailed)
from agent.flasher.commands import read_memory, write_memory
from agent.flasher.execute import OnChipCrc
from agent.flasher.session import Session
from agent.stm32.ramcrc import crc_job

log = logging.getLogger(__name__)

PROBE_HZ = 4e6  # the L4's reset clock (MSI 4 MHz, RM0394 6.2.3): the first wait with pins
SLOWEST_HZ = 1e6  # below every STM32's reset clock (L0/L1 MSI: 2.1 MHz): the last wait


def way_back(s: Session) -> Optional[str]:
    """How the chip comes back to its bootloader after code run from RAM, if it surely does.

    "pins": NRST pulsed with BOOT0 high. "boot0": the code ends in SYSRESETREQ and the BOOT0
    pin, held high by us, boots the ROM again. "empty": the code sets the empty-check flag,
    then SYSRESETREQ; with main flash selected the ROM boots (ramcrc.py), on the parts whose
    flag software can set (Chip.empty_flag "pempty", "acr"), and only for a chip that was
    blank when the session began, where the empty path is the one in use. None: neither is
    sure (BOOT0 high by a jumper is invisible), and the caller reads back.
    """
    if s.target is None:
        return None
    driven = "boot0" in s.pins.available
    opts = s.options if driven else None
    boot0 = driven and s.pins.asserted("boot0") and (opts is None or opts.pin_used)
    if boot0 and s.pins.can_reset:
        return "pins"
    if boot0:
        return "boot0"
    if s.chip.empty_flag in ("pempty", "acr") and s.blank_at_entry:
        return "empty"
    return None


def checker(s: Session, verify: str) -> Optional[OnChipCrc]:
    """What execute() is given as `crc_on_chip`: None when told to read back or no way back."""
    way = way_back(s) if verify in ("auto", "crc") else None
    if way is None:
        return None
    return lambda items, phase: crc_on_chip(s, way, items, phase)


def crc_on_chip(s: Session, way: str, items: list[tuple[int, int]],
                phase: str = "verify") -> Optional[list[int]]:
    """The CRC-32 (zlib) of each (address, length) item, computed by the chip from RAM.

    With pins the routine is given the time it takes at PROBE_HZ, then once more at
    SLOWEST_HZ, since an NRST pulse ends one still running. Resetting itself, it gets the
    SLOWEST_HZ time at once, so the first 0x7F finds the bootloader waiting (one arriving
    while the ROM starts its autobaud could leave it deaf, and without NRST nothing would
    bring it back). None when it cannot run or did not finish: the caller reads back.
    `way` is what `way_back` said; `phase` ("check" or "verify") says what a chip that does
    not come back has missed.
    """
    assert s.target is not None
    nonce = int.from_bytes(os.urandom(4), "little")
    job = crc_job(items, s.chip.ram_start, s.chip.ram_end, nonce, reset=way != "pins",
                  empty=s.chip.empty_flag if way == "empty" else "")
    if job is None:
        log.info("the CRC routine for %d ranges does not fit the RAM of %s", len(items),
                 s.chip.name)
        return None
    retries = s.target.write_retries
    try:
        write_memory(s.bl, job.load, job.blob, retries=retries)
    except Stm32OtaError as err:
        log.warning("the CRC routine could not be written to RAM (%s); reading back", err)
        return None
    for core_hz in (PROBE_HZ, SLOWEST_HZ) if way == "pins" else (SLOWEST_HZ,):
        try:
            s.bl.go(job.load)
        except Nack as err:  # refused: still in the bootloader, nothing started
            log.warning("GO to the CRC routine was refused (%s); reading back", err)
            return None
        except (LinkError, ProtocolError) as err:  # a lost ACK: it may well be running
            log.warning("no clean answer to GO (%s); waiting for the routine all the same", err)
        settle = s.bl.timeouts.reset_settle if way != "pins" else 0.0
        s.sleep(job.seconds(core_hz) * 1.1 + settle + 0.001)
        _come_back(s, way, phase)
        try:
            crcs = job.parse(read_memory(s.bl, job.results, 4 * (job.count + 1),
                                         retries=retries))
        except Stm32OtaError as err:
            log.warning("the CRCs could not be read from RAM (%s); reading back", err)
            return None
        if crcs is not None:
            return crcs
        log.info("the CRC routine had not finished after %.3g s (a core slower than %g MHz)",
                 job.seconds(core_hz), core_hz / 1e6)
    return None


def _come_back(s: Session, way: str, phase: str) -> None:
    """Reach the bootloader after the routine. A chip that reset itself and does not come
    back cannot be reached from here: VerifyFailed (`not_verified`) after writing, NoBootloader
    in the skip check, before anything was erased."""
    try:
        s.reenter()
    except NoBootloader as err:
        if way == "pins":
            raise
        why = (f"{s.chip.name} did not come back to its bootloader after computing a CRC from "
               f"RAM (it resets itself, and " +
               ("its BOOT0 pin" if way == "boot0" else "its empty-check flag") +
               " should have brought it back)")
        fix = ("power-cycle it into its bootloader and flash again with `verify: readback` "
               "(or wire NRST and BOOT0)")
        if phase == "check":
            raise NoBootloader(f"{why}: nothing was erased or written yet; {fix} ({err})") \
                from err
        raise VerifyFailed(f"{why}: the image is written but not verified; {fix} ({err})",
                           code="not_verified") from err
