"""The simulated chip's I2C slave side: address match, one answer per read transaction, SCL
stretching, BUSY polling of no-stretch commands, and the bootloader's I2C timeout.

A mixin of `core.SimChip` (which holds the state it uses: lock, clock, answer queue, session).
"""

from __future__ import annotations

import errno
from typing import Any

from agent.sim.bootrom import Bootrom
from agent.stm32.protocol import BUSY, NACK

I2C_TIMEOUT_S = 1.0  # AN2606 Table 230 / AN4221 caution: 1 s between frames, then system reset


class I2cSide:
    """I2C transactions addressed to the simulated bootloader (mixed into SimChip)."""

    # provided by SimChip (with clock(), sleep(), note(), system_reset() and _dropped())
    lock: Any
    chip: Any
    mode: str
    busy_until: float
    _out: Any
    _iface: Any
    _session: Any
    _silent: bool
    _i2c_last: float
    _i2c_stalled: bool
    _quirk_nack: bool

    def i2c_acks_address(self) -> bool:
        """True if the bootloader would acknowledge its I2C address right now."""
        with self.lock:
            self._i2c_timeout_check()
            self._run_due_timers()
            return (self.mode == "bootloader" and not self._silent and self.chip.i2c_version != 0
                    and self._iface in (None, "i2c"))

    def _i2c_timeout_check(self) -> None:
        if self._iface != "i2c" or self._session is None:
            return
        mid = not self._session.at_top or bool(self._out)
        idle = self.clock() - max(self._i2c_last, self.busy_until)
        if mid and idle > I2C_TIMEOUT_S:
            self.note("i2c_timeout", round(idle, 3))
            self.system_reset()

    def _i2c_select(self) -> Bootrom:
        if self._iface is None:
            self._iface = "i2c"
            self._session = Bootrom(self, "i2c")
        assert self._session is not None
        return self._session

    def i2c_write(self, frame: bytes) -> None:
        """One I2C write transaction addressed to the bootloader (address already ACKed)."""
        with self.lock:
            session = self._i2c_select()
            self._i2c_unstall()
            if self._out:
                # it is still trying to send its answer: SCL stays stretched
                raise OSError(errno.ETIMEDOUT, "bootloader has an unread answer pending; "
                              "read it before writing the next frame")
            self._quirk_nack = False
            data = bytes(b for b in frame if not self._dropped())
            if data:
                session.feed_frame(data)
            self._i2c_last = self.clock()

    def i2c_read(self, n: int) -> bytes:
        """One I2C read transaction of n bytes (address already ACKed)."""
        with self.lock:
            self._i2c_select()
            self._i2c_unstall()
            got = bytearray()
            while len(got) < n:
                got += self._i2c_next(n - len(got))
            self._i2c_last = self.clock()
            return bytes(got)

    def _run_due_timers(self) -> None:
        """Run the end of operations that send nothing (e.g. the erase after RUP's ACKs)."""
        while self._out and not self._out[0].data and self._out[0].ready <= self.clock():
            item = self._out.popleft()
            if item.then:
                item.then()

    def _i2c_unstall(self) -> None:
        """After a partly read answer the bootloader still waits to send the rest, with SCL
        stretched at the next address match until its own I2C timeout resets it (OpenBL
        `OPENBL_I2C_SendByte`: no ADDR handling, `NVIC_SystemReset` on timeout)."""
        if self._i2c_stalled:
            self.note("i2c_stall")
            self.system_reset()
            raise OSError(errno.ETIMEDOUT, "bootloader stretched SCL: the previous answer was "
                          "read only in part")

    def _i2c_next(self, n: int) -> bytes:
        self._run_due_timers()
        if not self._out:
            if self._quirk_nack:
                return bytes([NACK]) * n
            # the bootloader has nothing to send: its I2C peripheral stretches SCL until the
            # host controller gives up, which Linux reports as a timeout
            raise OSError(errno.ETIMEDOUT, "bootloader has nothing to send (read without a "
                          "command, or more bytes than the answer holds)")
        item = self._out[0]
        now = self.clock()
        if item.no_stretch and (item.busy_left > 0 or now < item.ready):
            item.busy_left = max(0, item.busy_left - 1)  # AN4221 2.x: BUSY 0x76 until done
            return bytes([BUSY])
        if now < item.ready:  # stretching command: SCL held low until the operation ends
            wait = item.ready - now
            self.lock.release()
            try:
                self.sleep(wait)
            finally:
                self.lock.acquire()
            return b""
        if n > len(item.data):
            # AN4221 / OpenBL: each answer is one read transaction; past its end the
            # bootloader has no byte to send, stretches SCL and resets on its I2C timeout
            self.note("i2c_overread", n, len(item.data))
            self.system_reset()
            raise OSError(errno.ETIMEDOUT, f"read of {n} bytes, the answer holds "
                          f"{len(item.data)}: SCL stretched")
        take = bytes(item.data[:n])
        del item.data[:n]
        self._i2c_stalled = bool(item.data)
        if not item.data:
            self._out.popleft()
            if item.then:
                item.then()
            self._run_due_timers()
        return take
