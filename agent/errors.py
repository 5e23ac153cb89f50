"""The error tree: every failure has a reason code, an exit code and a message a person can act on.

Library code raises these; `agent.cli` maps them to exit codes and the update worker maps them
to a FAILED/REJECTED job with `{"code": err.code, "message": str(err)}`. Each class also
inherits the matching builtin so callers that only know Python's exceptions still work.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # an annotation only: pathlib costs a wheel-installed `flash` 10 ms at start
    from pathlib import Path

# Exit codes, documented in docs/flashing.md ("Exit codes"). Keep the two in step.
EXIT_OK = 0
EXIT_ERROR = 1  # anything unexpected
EXIT_USAGE = 2  # bad command line or config
EXIT_NO_BOOTLOADER = 3  # link could not be opened, or no answer from the ROM bootloader
EXIT_WRONG_CHIP = 4  # chip is not the expected one, or the image does not fit it
EXIT_PROTECTED = 5  # read-out (or write) protection is active
EXIT_VERIFY = 6  # what was read back differs from what was written
EXIT_IMAGE = 7  # image or manifest rejected (format, size, sha256, signature, version)
EXIT_PROTOCOL = 8  # the bootloader refused a command (NACK) or answered out of protocol
EXIT_INTERRUPTED = 130


class Stm32OtaError(Exception):
    """Base of every error this package raises on purpose."""

    code = "error"
    exit_code = EXIT_ERROR

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    def as_dict(self) -> dict[str, str]:
        """The `{"code", "message"}` object published on the job topic."""
        return {"code": self.code, "message": str(self)}


class UsageError(Stm32OtaError, ValueError):
    """The command line or a value given by a person is wrong."""

    code = "usage"
    exit_code = EXIT_USAGE


class ConfigError(UsageError):
    """config.yaml is invalid; the message names the location and a hint."""

    code = "config"


class KeyFileError(UsageError):
    """A key file is missing, malformed or unsafe."""

    code = "bad_key"


class SessionTakenOver(ConfigError):
    """Another MQTT client connected with this agent's client id: two gateways share an id."""

    code = "duplicate_agent_id"


class ConfigInvalid(ConfigError):
    """config.yaml has problems; `.problems` lists every one (location, message, hint)."""

    def __init__(self, source: Path | str, problems: list[Any]) -> None:
        # problems are agent.config.values.Problem; errors.py sits below config, so only
        # their str() (one line each) is used here
        self.problems = problems
        n = len(problems)
        lines = [f"{source}: {n} problem{'s' if n != 1 else ''}:"]
        lines += [f"  - {p}" for p in problems]
        super().__init__("\n".join(lines))


class PayloadError(Stm32OtaError, ValueError):
    """A topic id or payload value that the MQTT contract or Home Assistant would refuse."""

    code = "bad_payload"


class FleetTimeout(Stm32OtaError, TimeoutError):
    """`stm32ota fleet --wait-for` ran out of time before every target reported the version."""

    code = "wait_timeout"


class NoTargets(Stm32OtaError, LookupError):
    """`stm32ota fleet --wait-for` saw no target of the product on the broker."""

    code = "no_targets"



class LinkError(Stm32OtaError, OSError):
    """The serial port or I2C bus could not be opened or failed."""

    code = "link_error"
    exit_code = EXIT_NO_BOOTLOADER


class LinkTimeout(LinkError, TimeoutError):
    """No (complete) answer within the deadline of the operation."""

    code = "timeout"


class NoBootloader(LinkError):
    """The ROM bootloader did not answer the connection sequence."""

    code = "no_bootloader"


class PinError(LinkError):
    """A pin could not be claimed or driven (line busy, chip missing, no permission)."""

    code = "pins"


class ProtocolError(Stm32OtaError, OSError):
    """The bootloader answered something the protocol does not allow here."""

    code = "protocol_error"
    exit_code = EXIT_PROTOCOL


class Nack(ProtocolError):
    """The bootloader answered NACK (0x1F)."""

    code = "nack"


class Unsupported(ProtocolError):
    """The bootloader's GET reply does not offer a command we need."""

    code = "unsupported_command"


class NackReason(ProtocolError):
    """Inside the simulator: why the simulated bootloader refuses; it answers NACK."""

    code = "sim_nack"


class MemoryRefused(NackReason):
    """Inside the simulator: the simulated chip refuses a memory access (answered with NACK)."""

    code = "sim_refused"


class BootConfigError(Stm32OtaError, OSError):
    """The chip's boot configuration (option bytes, empty-check flag, BOOT0) keeps the
    bootloader from being entered or left the way the target is set up."""

    code = "boot0_ignored"
    exit_code = EXIT_NO_BOOTLOADER


class StillInBootloader(BootConfigError):
    """After leaving, the chip still answers as the ROM bootloader: the application is not running."""

    code = "still_in_bootloader"


class SimFault(Stm32OtaError):
    """Inside the simulator: code run from RAM did something its core refuses (a hard fault)."""

    code = "sim_fault"


class ChipMismatch(Stm32OtaError, ValueError):
    """The chip is not the one expected, or the image does not fit it."""

    code = "wrong_chip"
    exit_code = EXIT_WRONG_CHIP


class ReadProtected(Stm32OtaError, PermissionError):
    """Read-out protection is active; removing it would mass-erase the chip."""

    code = "read_protected"
    exit_code = EXIT_PROTECTED


class VerifyFailed(Stm32OtaError, OSError):
    """Flash content differs from the image after writing."""

    code = "verify_failed"
    exit_code = EXIT_VERIFY


class GarbledWrite(VerifyFailed):
    """A failed write programmed other data at `address` (noise that passed the XOR checksum).

    Only erasing the page again fixes that; flasher/execute.py catches it and does, so it
    reaches a caller only as the VerifyFailed of the last attempt.
    """

    def __init__(self, address: int, block: Any = None) -> None:
        super().__init__(f"0x{address:08X} holds other data after a failed write")
        self.block = block  # the flasher's Block that has to be written again


class ImageRejected(Stm32OtaError, ValueError):
    """The firmware image or release manifest is not acceptable."""

    code = "image_rejected"
    exit_code = EXIT_IMAGE


class DownloadFailed(Stm32OtaError, OSError):
    """The image could not be fetched (HTTP error, or retries used up)."""

    code = "download_failed"


class DownloadRetry(DownloadFailed):
    """One download attempt failed in a way worth repeating; the downloader retries it."""


class Aborted(Stm32OtaError):
    """The operation was aborted on request."""

    code = "aborted"
    exit_code = EXIT_INTERRUPTED


class DemoFailed(Stm32OtaError):
    """The demo's update did not end with both targets verified on the new version."""

    code = "demo_failed"
