"""`stm32ota chips`: the chip table people check their part against, as text and as JSON."""

from __future__ import annotations

import json

from cli_tools import cli

from agent.stm32.chips import CHIPS, find


def test_json_lists_every_pid_once_in_order_with_the_l432_facts_of_an2606(capsys) -> None:
    code, out, err = cli(capsys, "chips", "--json")
    assert code == 0, err
    rows = json.loads(out)
    assert [int(r["pid"], 16) for r in rows] == sorted(CHIPS)
    by_pid = {r["pid"]: r for r in rows}
    # AN2606 (STM32L43xxx/44xxx chapter): USART bootloader V3.1, I2C1 V1.2 at 0x48 (7-bit)
    assert by_pid["0x435"] == {
        "pid": "0x435", "name": "STM32L43xxx/44xxx", "family": "L4", "flash_kib": 256,
        "uart": "3.1", "i2c": "1.2", "i2c_address": "0x48", "parts": list(CHIPS[0x435].parts)}
    # AN2606: the F1 medium-density bootloader has USART (protocol V2.2) and no I2C
    assert (by_pid["0x410"]["uart"], by_pid["0x410"]["i2c"], by_pid["0x410"]["i2c_address"]) \
        == ("2.2", None, None)
    for row in rows:  # every PID listed is one `--chip` accepts
        assert find(row["pid"]).pid == int(row["pid"], 16)


def test_text_has_one_line_per_chip_naming_its_interfaces(capsys) -> None:
    code, out, err = cli(capsys, "chips")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["PID", "chip", "family"]
    rows = [line for line in lines if line.startswith("0x")]
    assert len(rows) == len(CHIPS)
    l432 = next(line for line in rows if line.startswith("0x435 "))
    assert l432.split()[1:4] == ["STM32L43xxx/44xxx", "L4", "256"]
    assert l432.endswith("UART v3.1, I2C v1.2 at 0x48")
    assert next(line for line in rows if line.startswith("0x410 ")).endswith("UART v2.2")
    assert f"{len(CHIPS)} product IDs" in out
