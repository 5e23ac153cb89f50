"""The chip table: every row consistent with itself and with AN2606, and find()/lookup()."""

from __future__ import annotations

import pytest

from agent.errors import EXIT_USAGE, EXIT_WRONG_CHIP, ChipMismatch, UsageError
from agent.stm32.chips import CHIPS, KiB, Chip, find, lookup

# stm32flash master cae1bb8 dev_table.c (62 AN2606 rows + 3 "not yet in AN2606");
# release 0.7 knows a subset of these.
STM32FLASH_PIDS = {
    0x440, 0x444, 0x442, 0x445, 0x448,  # F0
    0x412, 0x410, 0x414, 0x420, 0x428, 0x418, 0x430,  # F1
    0x411,  # F2
    0x432, 0x422, 0x439, 0x438, 0x446,  # F3
    0x413, 0x419, 0x423, 0x433, 0x458, 0x431, 0x441, 0x421, 0x434, 0x463,  # F4
    0x452, 0x449, 0x451,  # F7
    0x466, 0x460, 0x467, 0x456,  # G0
    0x468, 0x469, 0x479,  # G4
    0x483, 0x450, 0x480,  # H7
    0x457, 0x425, 0x417, 0x447,  # L0
    0x416, 0x429, 0x427, 0x436, 0x437,  # L1
    0x464, 0x435, 0x462, 0x415, 0x461, 0x470, 0x471,  # L4
    0x472,  # L5
    0x494, 0x495,  # WB
    0x497,  # WL
    0x482,  # U5
    0x641, 0x9A8, 0x9B0,  # not in AN2606
}
# AN2606: on these the bootloader itself uses all of the RAM.
ALL_RAM_USED = {0x445, 0x457}
SECTOR_SIZES = {128, 256, 1 * KiB, 2 * KiB, 4 * KiB, 8 * KiB, 16 * KiB, 32 * KiB, 64 * KiB,
                128 * KiB, 256 * KiB}
ALL = sorted(CHIPS.values(), key=lambda c: c.pid)
ids = [f"0x{c.pid:03X}" for c in ALL]


def test_covers_every_pid_stm32flash_knows() -> None:
    assert len(STM32FLASH_PIDS) == 65
    assert STM32FLASH_PIDS <= set(CHIPS)


def test_covers_every_family_the_agent_supports() -> None:
    families = {c.family for c in ALL}
    assert {"F0", "F1", "F2", "F3", "F4", "F7", "G0", "G4", "H7", "L0", "L1", "L4", "L5", "U5",
            "WB", "WL", "C0"} <= families


def test_keys_are_the_rows_pids_and_names_are_unique() -> None:
    assert all(pid == chip.pid for pid, chip in CHIPS.items())
    names = [c.name for c in ALL]
    assert all(n.strip() for n in names)
    assert len(set(names)) == len(names)


@pytest.mark.parametrize("chip", ALL, ids=ids)
def test_pages_fill_the_flash_exactly(chip: Chip) -> None:
    assert sum(n * size for n, size in chip.pages) == chip.flash_size
    assert all(n > 0 and size in SECTOR_SIZES for n, size in chip.pages)
    table = chip.page_table()
    assert table[0][0] == chip.flash_start
    assert all(a + s == b for (a, s), (b, _) in zip(table, table[1:]))
    assert table[-1][0] + table[-1][1] == chip.flash_end


@pytest.mark.parametrize("chip", ALL, ids=ids)
def test_memory_ranges_are_ordered_and_apart(chip: Chip) -> None:
    assert chip.flash_start in (0x08000000,)
    assert 0x20000000 <= chip.ram_start <= chip.ram_end <= 0x20300000
    if chip.pid not in ALL_RAM_USED:
        assert chip.ram_start < chip.ram_end
    assert chip.sysmem_start < chip.sysmem_end
    assert chip.option_start < chip.option_end or chip.option_start == chip.option_end == 0
    flash = range(chip.flash_start, chip.flash_end)
    assert chip.sysmem_start not in flash and chip.sysmem_end - 1 not in flash
    assert chip.option_start not in flash
    if chip.flash_size_reg is not None:
        assert chip.flash_size_reg not in flash
        assert chip.flash_size_reg % 2 == 0
    assert chip.write_align in {4, 8, 16, 32}


@pytest.mark.parametrize("chip", [c for c in ALL if c.bootloader_id_addr is not None],
                         ids=lambda c: f"0x{c.pid:03X}")
def test_bootloader_id_lives_in_system_memory(chip: Chip) -> None:
    if chip.pid == 0x467:  # G0B1: AN2606 puts it in the second system-memory area
        assert chip.bootloader_id_addr == 0x1FFF9FFE
        return
    assert chip.sysmem_start <= chip.bootloader_id_addr < chip.sysmem_end


@pytest.mark.parametrize("chip", ALL, ids=ids)
def test_protocol_facts_are_plausible(chip: Chip) -> None:
    assert chip.uart_version in {0x22, 0x31}
    assert chip.uart_erase_opcode == (0x43 if chip.uart_version < 0x30 else 0x44)
    assert chip.i2c_version in {0, 0x10, 0x11, 0x12}
    if chip.i2c_address is not None:
        assert chip.i2c_version != 0
        assert 0x08 <= chip.i2c_address <= 0x77
    assert chip.erase_ms_per_page > 0 and chip.program_us_per_word > 0


def test_write_alignment_per_family() -> None:
    # AN3155: 4-byte multiples; L4/G0/G4/WB/WL/L5/C0 program 64-bit double words (AN2606
    # Table 7), U5 128-bit quad words, H74x/H72x 256-bit flash words, H7A3 128-bit words.
    expected = {"F0": 4, "F1": 4, "F2": 4, "F3": 4, "F4": 4, "F7": 4, "L0": 4, "L1": 4,
                "W": 4, "L4": 8, "G0": 8, "G4": 8, "WB": 8, "WL": 8, "L5": 8, "C0": 8, "U5": 16}
    for chip in ALL:
        if chip.family == "H7":
            assert chip.write_align == (16 if chip.pid == 0x480 else 32)
        else:
            assert chip.write_align == expected[chip.family], hex(chip.pid)


def test_mass_erase_missing_exactly_on_l0_l1() -> None:
    assert {c.pid for c in ALL if not c.mass_erase} == {
        c.pid for c in ALL if c.family in ("L0", "L1")}


def test_no_i2c_bootloader_on_families_an4221_does_not_list() -> None:
    assert all(c.i2c_version == 0 for c in ALL if c.family in ("F1", "F2", "L1", "WL", "W"))


def test_legacy_erase_only_on_f1_class_bootloaders() -> None:
    assert lookup(0x410).uart_erase_opcode == 0x43
    assert lookup(0x435).uart_erase_opcode == 0x44


def test_flash_size_register_per_family() -> None:
    # Reference manuals, "Flash size data register".
    expected = {"F0": 0x1FFFF7CC, "F1": 0x1FFFF7E0, "F2": 0x1FFF7A22, "F3": 0x1FFFF7CC,
                "F4": 0x1FFF7A22, "G0": 0x1FFF75E0, "G4": 0x1FFF75E0, "L0": 0x1FF8007C,
                "L4": 0x1FFF75E0, "WB": 0x1FFF75E0, "WL": 0x1FFF75E0, "L5": 0x0BFA05E0,
                "U5": 0x0BFA07A0, "C0": 0x1FFF75A0}
    for chip in ALL:
        if chip.family in expected:
            assert chip.flash_size_reg == expected[chip.family], hex(chip.pid)
    assert lookup(0x449).flash_size_reg == 0x1FF0F442
    assert lookup(0x452).flash_size_reg == 0x1FF07A22
    assert lookup(0x450).flash_size_reg == 0x1FF1E880
    assert lookup(0x416).flash_size_reg == 0x1FF8004C  # L1 cat. 1/2
    assert lookup(0x436).flash_size_reg == 0x1FF800CC  # L1 cat. 3+


def test_l432_matches_an2606_tables_3_164_165() -> None:
    chip = lookup(0x435)
    assert chip.family == "L4" and "L43" in chip.name
    assert chip.flash_start == 0x08000000 and chip.flash_size == 256 * KiB
    assert chip.pages == ((128, 2048),)
    assert chip.write_align == 8
    assert chip.ram_start >= 0x20000000 + 12 * KiB  # the bootloader's own 12 KiB
    assert chip.ram_end == 0x2000C000
    assert (chip.sysmem_start, chip.sysmem_end) == (0x1FFF0000, 0x1FFF7000)
    assert (chip.option_start, chip.option_end) == (0x1FFF7800, 0x1FFF7810)
    assert chip.bootloader_id_addr == 0x1FFF6FFE
    assert chip.flash_size_reg == 0x1FFF75E0
    assert (chip.uart_version, chip.i2c_version, chip.i2c_address) == (0x31, 0x12, 0x48)
    assert chip.mass_erase and not chip.dual_bank


def test_f4_sectors_as_rm0090() -> None:
    table = lookup(0x413).page_table()
    assert len(table) == 12
    assert table[:5] == ((0x08000000, 16 * KiB), (0x08004000, 16 * KiB),
                         (0x08008000, 16 * KiB), (0x0800C000, 16 * KiB),
                         (0x08010000, 64 * KiB))
    assert table[5] == (0x08020000, 128 * KiB) and table[11] == (0x080E0000, 128 * KiB)


def test_f4_dual_bank_sectors_number_on_from_12() -> None:
    chip = lookup(0x419)
    table = chip.page_table()
    assert len(table) == 24 and chip.dual_bank
    assert table[12] == (0x08100000, 16 * KiB)
    assert table[16] == (0x08110000, 64 * KiB)
    assert table[23] == (0x081E0000, 128 * KiB)
    assert chip.page_index(0x08100000) == 12


def test_f401_small_layouts() -> None:
    assert [s for _, s in lookup(0x423).page_table()] == [16 * KiB] * 4 + [64 * KiB, 128 * KiB]
    assert [s for _, s in lookup(0x458).page_table()] == [16 * KiB] * 4 + [64 * KiB]


def test_f7_sectors() -> None:
    sizes = [s for _, s in lookup(0x449).page_table()]
    assert sizes == [32 * KiB] * 4 + [128 * KiB] + [256 * KiB] * 3


def test_h72x_flash_starts_at_0x08000000_not_stm32flash_typo() -> None:
    chip = lookup(0x483)
    assert chip.flash_start == 0x08000000 and chip.flash_size == 1024 * KiB


def test_page_table_truncated_to_flash_size_register() -> None:
    chip = lookup(0x435)
    table = chip.page_table(128 * KiB)  # L431KB
    assert len(table) == 64
    assert table[-1] == (0x0801F800, 2048)
    assert chip.page_table(256 * KiB) == chip.page_table()
    f401 = lookup(0x433).page_table(256 * KiB)  # F401xC-sized part with a D/E PID
    assert len(f401) == 6


def test_page_table_refuses_impossible_sizes() -> None:
    chip = lookup(0x435)
    with pytest.raises(ChipMismatch) as err:
        chip.page_table(512 * KiB)
    assert err.value.code == "flash_size_mismatch" and "256 KiB" in str(err.value)
    with pytest.raises(ChipMismatch):
        chip.page_table(0)
    with pytest.raises(ChipMismatch):
        lookup(0x413).page_table(100 * KiB)  # inside sector 4


def test_page_index_edges() -> None:
    chip = lookup(0x435)
    assert chip.page_index(0x08000000) == 0
    assert chip.page_index(0x080007FF) == 0
    assert chip.page_index(0x08000800) == 1
    assert chip.page_index(0x0803FFFF) == 127
    for outside in (0x07FFFFFF, 0x08040000):
        with pytest.raises(ChipMismatch) as err:
            chip.page_index(outside)
        assert err.value.code == "out_of_flash"
    with pytest.raises(ChipMismatch):
        chip.page_index(0x08020000, flash_size=128 * KiB)
    f4 = lookup(0x413)
    assert [f4.page_index(a) for a in (0x0800FFFF, 0x08010000, 0x0801FFFF, 0x08020000)] == [
        3, 4, 4, 5]


def test_pages_covering() -> None:
    chip = lookup(0x435)
    assert chip.pages_covering(0x08000700, 0x200) == [0, 1]
    assert chip.pages_covering(0x08000800, 0x800) == [1]
    assert chip.pages_covering(0x08000000, 0) == []
    with pytest.raises(ChipMismatch):
        chip.pages_covering(0x0803F000, 0x2000)


def test_erase_time_follows_sector_size() -> None:
    f4 = lookup(0x413)
    assert f4.erase_ms(0) < f4.erase_ms(4) < f4.erase_ms(5)
    assert lookup(0x435).erase_ms(3) == lookup(0x435).erase_ms_per_page


def test_lookup_unknown_pid_is_a_wrong_chip_error() -> None:
    with pytest.raises(ChipMismatch) as err:
        lookup(0x123)
    assert err.value.code == "unknown_chip"
    assert err.value.exit_code == EXIT_WRONG_CHIP
    assert "0x123" in str(err.value)


@pytest.mark.parametrize("text,pid", [
    ("0x435", 0x435), ("0X435", 0x435), ("435", 0x435), ("L432", 0x435), ("l432", 0x435),
    ("STM32L432", 0x435), ("STM32L432KC", 0x435), ("stm32l433rc", 0x435), ("L442", 0x435),
    ("L431KB", 0x435), ("F103", None), ("F103C8", 0x410), ("F103RE", 0x414),
    ("F103VG", 0x430), ("F407", 0x413), ("F407VG", 0x413), ("F411", 0x431),
    ("F401RE", 0x433), ("F401CC", 0x423), ("G071", 0x460), ("G474", 0x469), ("H743", 0x450),
    ("H723", 0x483), ("WB55", 0x495), ("WLE5", 0x497), ("L552", 0x472), ("L151C8", 0x416),
    ("L151C8T6A", 0x429), ("STM32L43xxx/44xxx", 0x435), ("F030C8", 0x440), ("F030F4", 0x444),
    ("U575", 0x482), ("G0B1", 0x467), ("C031", 0x453),
])
def test_find_resolves_part_names_and_pids(text: str, pid: int | None) -> None:
    if pid is None:
        with pytest.raises(UsageError):
            find(text)
    else:
        assert find(text).pid == pid


@pytest.mark.parametrize("chip", ALL, ids=ids)
def test_every_part_pattern_finds_its_own_chip(chip: Chip) -> None:
    for pattern in chip.parts:
        assert find(pattern) is chip, pattern
    assert find(f"0x{chip.pid:03x}") is chip


def test_find_ambiguous_names_candidates() -> None:
    with pytest.raises(UsageError) as err:
        find("l4")
    assert err.value.code == "ambiguous_chip" and err.value.exit_code == EXIT_USAGE
    assert "0x435" in str(err.value) and "0x415" in str(err.value)
    with pytest.raises(UsageError) as err:
        find("F401")
    assert "0x423" in str(err.value) and "0x433" in str(err.value)


def test_find_unknown_is_a_usage_error() -> None:
    for text in ("Z999", "0x999", "", "STM32"):
        with pytest.raises(UsageError) as err:
            find(text)
        assert err.value.exit_code == EXIT_USAGE
    with pytest.raises(UsageError) as err:
        find("0x999")
    assert err.value.code == "unknown_chip" and "0x435" in str(err.value)


# AN2606, "bootloader configuration" table of each chapter (7-bit I2C addresses); issue 8
# facts 9.1. F72x: Table 97 (I2C1/I2C3; I2C2 printed 0x4D), F74x: Table 99.
AN2606_I2C_ADDRESSES = {0x452: 0x49, 0x449: 0x45, 0x435: 0x48, 0x415: 0x43, 0x461: 0x4C,
                        0x471: 0x5B, 0x466: 0x56, 0x460: 0x51, 0x467: 0x5D, 0x456: 0x62}


def test_i2c_addresses_as_an2606() -> None:
    for pid, address in AN2606_I2C_ADDRESSES.items():
        assert lookup(pid).i2c_address == address, hex(pid)
    assert "0x4D" in lookup(0x452).note  # the I2C2 oddity is shown by `info`


def test_f030xc_f09x_row_as_stm32flash_and_rm0360() -> None:
    chip = lookup(0x442)
    assert chip.sysmem_start == 0x1FFFD800  # not the old 0x1FFFC800 (stm32flash 5361ed8)
    assert "OBL_LAUNCH" in chip.note and "empty" in chip.note
