"""`stm32ota option-bytes`: show the boot-selection option bits, or make the BOOT0 pin count.

Never implicit: `flash` only refuses (`boot0_ignored`) when the options would lock it out;
changing them is this explicit command, which rewrites the option area through the
bootloader; the chip reloads it and resets (AN3155 3.6).
"""

from __future__ import annotations

import argparse
import logging

from agent.cli.options import add_link_options, command, parser, target_from_args
from agent.flasher import ops

log = logging.getLogger(__name__)


def options_text(opts: dict) -> str:
    """One line for people from UserOptions.as_dict(): the word, its value, BOOT0's source."""
    text = f"{opts['register']} {opts['value']} at {opts['address']}: BOOT0 from {opts['boot0_source']}"
    if not opts["pin_used"]:
        text += f" (the pin is ignored: {opts['select_bit']}; `option-bytes --boot-from-pin`)"
    return text


@parser("option-bytes", "show the user option bytes that decide where BOOT0 comes from, or "
                        "program them so the BOOT0 pin counts (--boot-from-pin)")
def _option_bytes_args(p: argparse.ArgumentParser) -> None:
    add_link_options(p)
    p.add_argument("--boot-from-pin", action="store_true",
                   help="program nBOOT_SEL=0 (G0/C0), nSWBOOT0=1 (L4/G4/WL) or BOOT_SEL=1 "
                        "(F0) so the BOOT0 pin selects the bootloader; the chip resets")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout, for scripts")


@command("option-bytes")
def cmd_option_bytes(args: argparse.Namespace) -> int:
    """Read (and with --boot-from-pin change) the boot-selection option bits."""
    identity, changed = ops.option_bytes(target_from_args(args), boot_from_pin=args.boot_from_pin)
    opts = identity.options
    assert opts is not None  # ops.option_bytes raises when the chip has none
    if args.json:
        import json  # noqa: PLC0415 - lazy: only --json needs it, and `flash` imports this module
        print(json.dumps({"chip": identity.chip.name, "pid": f"0x{identity.info.pid:03X}",
                          "changed": changed, "user_options": opts.as_dict()}, indent=2))
    else:
        print(("Programmed: " if changed else "") + options_text(opts.as_dict()))
    return 0
