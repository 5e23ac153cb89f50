"""Every refusal of the running agent: the job topic says REJECTED/FAILED with the right code,
the log says why, and nothing touched the MCU (no erase, no write, flash unchanged).

Real mosquitto, real HTTP server, simulated L432 on a pty with mock pins; commands are sent
as raw MQTT, the way mosquitto_pub or Home Assistant would send them.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timedelta, timezone

import pytest

from agent.ota.keys import keygen, sign_manifest
from agent.sim import Faults
from agentkit import FLASH_START, AgentKit, SimTarget

FW = AgentKit.image(2048, seed=11)


@pytest.fixture
def kit(tmp_path, caplog):
    """A kit with one UART target `pump` (L432) and a running in-process agent."""
    caplog.set_level(logging.INFO)
    with AgentKit(tmp_path) as k:
        yield k


def _start(kit: AgentKit, **target: object) -> SimTarget:
    t = kit.uart_target("pump", **target)
    kit.start_service()
    return t


def _untouched(t: SimTarget, before: bytes) -> None:
    assert t.touched() == [], t.touched()
    assert bytes(t.sim.flash) == before


def _expect(kit: AgentKit, t: SimTarget, send, status: str, code: str, caplog,
            mcu_untouched: bool = True) -> dict:
    """Send something, wait for the terminal job, check code, log and the chip."""
    before = bytes(t.sim.flash)
    events_before = list(t.sim.events)
    mark = kit.obs.mark()
    send()
    job = kit.wait_job("pump", "SUCCEEDED", "FAILED", "REJECTED", after=mark)
    assert (job["status"], job["error"]["code"] if job["error"] else None) == (status, code), job
    assert job["error"]["message"]
    assert code in caplog.text, caplog.text[-2000:]
    _untouched(t, before)
    if mcu_untouched:  # safety rule 1: the pins were not even moved
        assert t.sim.events == events_before
    state = kit.wait_settled("pump", job)
    assert state["in_progress"] is False and state["update_percentage"] is None
    return job


def _install_direct(kit: AgentKit, manifest: dict):
    return lambda: kit.command("pump", {"op": "install", "manifest": manifest})


def test_tampered_image_fails_on_sha256(kit: AgentKit, caplog) -> None:
    t = _start(kit)
    m = kit.release("pump-ctrl", "1.0.0", FW)
    kit.http.files["/pump-ctrl-1.0.0.bin"] = FW[:-1] + bytes([FW[-1] ^ 1])  # same size, one bit
    _expect(kit, t, _install_direct(kit, m), "FAILED", "sha256_mismatch", caplog)


def test_bad_signature(kit: AgentKit, caplog) -> None:
    t = _start(kit)
    m = kit.release("pump-ctrl", "1.0.0", FW)
    m["size"] = m["size"] - 1  # altered after signing
    _expect(kit, t, _install_direct(kit, m), "REJECTED", "bad_signature", caplog)


def test_missing_signature(kit: AgentKit, caplog) -> None:
    t = _start(kit)
    m = kit.release("pump-ctrl", "1.0.0", FW, signed=False)
    _expect(kit, t, _install_direct(kit, m), "REJECTED", "unsigned", caplog)


def test_untrusted_key(kit: AgentKit, caplog, tmp_path) -> None:
    t = _start(kit)
    other, _ = keygen(tmp_path / "stranger")
    m = sign_manifest(kit.release("pump-ctrl", "1.0.0", FW, signed=False), other)
    _expect(kit, t, _install_direct(kit, m), "REJECTED", "untrusted_key", caplog)


def test_rollback_and_reinstall_refused(kit: AgentKit, caplog) -> None:
    t = _start(kit)
    mark = kit.obs.mark()
    kit.command("pump", {"op": "install", "manifest": kit.release("pump-ctrl", "1.2.0", FW)})
    assert kit.wait_job("pump", after=mark)["status"] == "SUCCEEDED"
    t.sim.events.clear()
    older = kit.release("pump-ctrl", "1.1.9", AgentKit.image(2048, seed=12))
    _expect(kit, t, _install_direct(kit, older), "REJECTED", "downgrade", caplog)
    same = kit.release("pump-ctrl", "1.2.0", FW)
    _expect(kit, t, _install_direct(kit, same), "REJECTED", "already_installed", caplog)
    assert t.flash_bytes(FLASH_START, len(FW)) == FW


def test_expired_manifest(kit: AgentKit, caplog) -> None:
    t = _start(kit)
    past = (datetime.now(timezone.utc) - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    m = kit.release("pump-ctrl", "1.0.0", FW, expires=past)
    _expect(kit, t, _install_direct(kit, m), "REJECTED", "expired", caplog)


def test_http_server_gone_ends_in_one_failure_without_touching_the_mcu(kit: AgentKit,
                                                                      caplog) -> None:
    """Safety rule 5: the server disappears after the release was announced; the bounded
    retries end in exactly one terminal status, and the chip is never touched."""
    t = _start(kit)
    m = kit.release("pump-ctrl", "1.0.0", FW)
    kit.http.stop()  # later connections are refused
    job = _expect(kit, t, _install_direct(kit, m), "FAILED", "download_failed", caplog)
    time.sleep(0.3)  # a second terminal status would follow within this
    ends = [e["status"] for e in kit.events("pump") if e["job_id"] == job["job_id"]
            and e["status"] in ("SUCCEEDED", "FAILED", "REJECTED", "CANCELED")]
    assert ends == ["FAILED"]


def test_wrong_chip_fails_before_any_erase(kit: AgentKit, caplog) -> None:
    t = _start(kit)
    m = kit.release("pump-ctrl", "1.0.0", FW, chip=0x413)
    job = _expect(kit, t, _install_direct(kit, m), "FAILED", "wrong_chip", caplog,
                  mcu_untouched=False)
    assert "0x413" in job["error"]["message"]


def test_image_that_does_not_fit_fails_before_any_erase(kit: AgentKit, caplog) -> None:
    t = _start(kit)
    end = FLASH_START + t.sim.chip.flash_size
    m = kit.release("pump-ctrl", "1.0.0", FW, address=end - 1024)  # 2 KiB, 1 KiB left
    _expect(kit, t, _install_direct(kit, m), "FAILED", "image_outside_flash", caplog,
            mcu_untouched=False)


def test_read_out_protection_is_reported_not_removed(kit: AgentKit, caplog) -> None:
    t = _start(kit, faults=Faults(read_protected=True))
    m = kit.release("pump-ctrl", "1.0.0", FW)
    _expect(kit, t, _install_direct(kit, m), "FAILED", "read_protected", caplog,
            mcu_untouched=False)
    assert not [e for e in t.sim.events if e[0] == "readout_unprotect"]


def test_url_that_is_not_http(kit: AgentKit, caplog) -> None:
    t = _start(kit)
    m = kit.release("pump-ctrl", "1.0.0", FW, signed=False)
    m["url"] = "file:///etc/passwd"
    _expect(kit, t, _install_direct(kit, m), "REJECTED", "bad_url", caplog)


def test_hostile_product_name(kit: AgentKit, caplog) -> None:
    t = _start(kit)
    m = kit.release("pump-ctrl", "1.0.0", FW, signed=False)
    m["product"] = "../../etc/cron.d/x"
    _expect(kit, t, _install_direct(kit, m), "REJECTED", "bad_field", caplog)


def test_release_for_another_product(kit: AgentKit, caplog) -> None:
    t = _start(kit)
    m = kit.release("valve-ctrl", "1.0.0", FW)
    _expect(kit, t, _install_direct(kit, m), "REJECTED", "wrong_product", caplog)


BAD_COMMANDS = [
    ("not json", b"instal", "bad_command"),
    ("bad json", b'{"op": "install",', "bad_command"),
    ("duplicate key", b'{"op": "install", "op": "abort"}', "duplicate_key"),
    ("NaN", b'{"op": "install", "manifest": {"size": NaN}}', "bad_json"),
    ("wrong type op", b'{"op": 5}', "bad_command"),
    ("wrong type manifest", b'{"op": "install", "manifest": "x"}', "bad_command"),
    ("unknown field", b'{"op": "install", "force": true}', "unknown_field"),
    ("array", b'["install"]', "bad_command"),
    ("expired", b'{"op": "install", "not_after": "2001-01-01T00:00:00Z"}', "command_expired"),
    ("not_after without a zone", b'{"op": "install", "not_after": "2099-01-01T00:00:00"}',
     "bad_command"),
    ("not_after not a time", b'{"op": "install", "not_after": 5}', "bad_command"),
    ("negative spread", b'{"op": "install", "spread": -1}', "bad_command"),
    ("not utf-8", b"\xff\xfeinstall", "bad_command"),
    # issue 9 defect 4: ~1000 levels in 2 KB raised RecursionError (no reply at all)
    ("deep nesting", b"[" * 1000 + b"]" * 1000, "bad_command"),
    ("deep manifest", b'{"op": "install", "manifest": ' + b'{"a": ' * 1000 + b"1" + b"}" * 1001,
     "bad_command"),
    ("huge", b'{"op": "install", "pad": "' + b"x" * 40000 + b'"}', "too_large"),
    ("manifest wrong types", json.dumps({"op": "install", "manifest": {
        "product": "pump-ctrl", "version": 1, "url": "http://h/x", "size": "5",
        "sha256": "0" * 64, "format": "bin", "address": FLASH_START}}).encode(), "bad_field"),
]


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One running agent for the many malformed-command cases (each leaves nothing behind)."""
    with AgentKit(tmp_path_factory.mktemp("shared")) as k:
        t = _start(k)
        k.publish_release(k.release("pump-ctrl", "1.0.0", FW))  # `install` alone would work
        k.wait_state("pump", lambda s: s["latest_version"] == "1.0.0")
        yield k, t


@pytest.mark.parametrize("payload,code", [c[1:] for c in BAD_COMMANDS],
                         ids=[c[0] for c in BAD_COMMANDS])
def test_malformed_command(shared, caplog, payload: bytes, code: str) -> None:
    caplog.set_level(logging.INFO)
    kit, t = shared
    _expect(kit, t, lambda: kit.command("pump", payload), "REJECTED", code, caplog)


def test_bad_release_on_the_release_topic_is_not_remembered(kit: AgentKit, caplog) -> None:
    t = _start(kit, auto_install=True)
    m = kit.release("pump-ctrl", "1.0.0", FW)
    m["version"] = "9.9.9"  # signature no longer matches
    mark = kit.obs.mark()
    kit.publish_release(m)
    ev = kit.obs.wait_topic(kit.topics.events("pump"), after=mark).json()
    assert ev["event_type"] == "rejected" and ev["error"]["code"] == "bad_signature"
    assert "bad_signature" in caplog.text
    assert kit.states("pump")[-1]["latest_version"] != "9.9.9"
    # an install now has no release to take
    _expect(kit, t, lambda: kit.command("pump", "install"), "REJECTED", "no_release", caplog)


def test_retained_command_is_ignored(kit: AgentKit, caplog) -> None:
    t = kit.uart_target("pump")
    kit.publish_release(kit.release("pump-ctrl", "1.0.0", FW))
    kit.command("pump", "install", retain=True)  # left on the broker by mistake
    before = bytes(t.sim.flash)
    kit.start_service()
    # a live bad command afterwards is handled after the retained one (one inbox, in order)
    mark = kit.obs.mark()
    kit.command("pump", "bogus")
    job = kit.wait_job("pump", after=mark)
    assert job["error"]["code"] == "bad_command"
    assert [j["status"] for j in kit.jobs("pump")] == ["REJECTED"]
    assert "ignoring a retained command" in caplog.text
    _untouched(t, before)
    kit.command("pump", b"", retain=True)  # clear it
