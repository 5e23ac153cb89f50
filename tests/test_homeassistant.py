"""Topics and payloads of the MQTT contract, checked against the rules Home Assistant enforces."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from agent.errors import ImageRejected, PayloadError
from agent.mqtt.contract import (
    EVENT_TYPES,
    JOB_STATUSES,
    STATE_KEYS,
    discovery_payload,
    event_payload,
    job_payload,
    rfc3339,
    state_payload,
)
from agent.mqtt.topics import Topics, route_topic

T = Topics("stm32ota", "gw-01", "homeassistant")


def _state(**over: object) -> dict:
    args = dict(
        installed_version="1.0.0",
        latest_version="1.1.0",
        title="pump-ctrl",
        release_summary="fixes",
        release_url="https://example.com/r/1.1.0",
        in_progress=True,
        update_percentage=42,
    )
    args.update(over)
    return state_payload(**args)  # type: ignore[arg-type]


# --- topics ---------------------------------------------------------------------------------


def test_topics_follow_the_contract() -> None:
    assert T.release("pump-ctrl") == "stm32ota/release/pump-ctrl"
    assert T.cmd("pump") == "stm32ota/gw-01/pump/cmd"
    assert T.group_cmd("cellar") == "stm32ota/group/cellar/cmd"
    assert T.fleet_cmd == "stm32ota/fleet/cmd"
    assert T.availability == "stm32ota/gw-01/availability"
    assert T.state("pump") == "stm32ota/gw-01/pump/state"
    assert T.job("pump") == "stm32ota/gw-01/pump/job"
    assert T.events("pump") == "stm32ota/gw-01/pump/events"
    assert T.discovery("pump") == "homeassistant/device/gw-01_pump/config"
    assert T.ha_status == "homeassistant/status"


def test_multi_level_base_topic_is_allowed() -> None:
    assert Topics("site/a", "gw").cmd("x") == "site/a/gw/x/cmd"


@pytest.mark.parametrize("bad", ["", "a/b", "a+", "#", "a b", "pümp", "a\x00"])
def test_ids_with_wildcards_or_separators_are_refused(bad: str) -> None:
    with pytest.raises(PayloadError) as e:
        T.cmd(bad)
    assert e.value.code == "bad_id"
    with pytest.raises(ValueError):
        Topics("stm32ota", bad)


@pytest.mark.parametrize("bad", ["", "/x", "x/", "a//b", "a/+", "a/#"])
def test_bad_base_topics_are_refused(bad: str) -> None:
    with pytest.raises(PayloadError):
        Topics(bad, "gw")


@pytest.mark.parametrize(
    "topic,expected",
    [
        ("stm32ota/release/pump-ctrl", ("release", {"product": "pump-ctrl"})),
        ("stm32ota/gw-01/pump/cmd", ("cmd", {"target": "pump"})),
        ("stm32ota/group/cellar/cmd", ("group_cmd", {"group": "cellar"})),
        ("stm32ota/fleet/cmd", ("fleet_cmd", {})),
        ("homeassistant/status", ("ha_status", {})),
        ("stm32ota/gw-02/pump/cmd", ("unknown", {})),  # another agent's target
        ("stm32ota/gw-01/pump/state", ("unknown", {})),  # our own output
        ("stm32ota/gw-01/pump/cmd/extra", ("unknown", {})),
        ("other/gw-01/pump/cmd", ("unknown", {})),
        ("stm32ota/release/a/b", ("unknown", {})),
    ],
)
def test_parse_topic_routes_inbound_messages(topic: str, expected: tuple) -> None:
    assert T.parse_topic(topic) == expected


def test_parse_topic_inverts_the_builders() -> None:
    for build, kind, key in ((T.cmd, "cmd", "target"), (T.group_cmd, "group_cmd", "group"), (T.release, "release", "product")):
        assert T.parse_topic(build("x_1")) == (kind, {key: "x_1"})


def test_subscriptions_cover_own_targets_groups_fleet_and_ha_birth() -> None:
    subs = T.subscriptions({"pump": ("cellar",), "fan": ("cellar", "roof")})
    assert subs == [
        "stm32ota/gw-01/pump/cmd",
        "stm32ota/gw-01/fan/cmd",
        "stm32ota/group/cellar/cmd",
        "stm32ota/group/roof/cmd",
        "stm32ota/fleet/cmd",
        "homeassistant/status",
    ]


def test_subscriptions_start_with_each_product_release_once() -> None:
    subs = T.subscriptions({"pump": ("cellar",), "fan": ("cellar",)},
                           products=["pump-ctrl", "fan-ctrl", "pump-ctrl"])
    assert subs[:3] == ["stm32ota/release/fan-ctrl", "stm32ota/release/pump-ctrl",
                        "stm32ota/gw-01/pump/cmd"]
    assert len(subs) == len(set(subs)) == 7


@pytest.mark.parametrize(
    "topic,expected",
    [
        ("stm32ota/gw-02/availability", ("availability", {"agent": "gw-02"})),
        ("stm32ota/gw-02/pump/state", ("state", {"agent": "gw-02", "target": "pump"})),
        ("stm32ota/gw-02/pump/job", ("job", {"agent": "gw-02", "target": "pump"})),
        ("stm32ota/gw-02/pump/cmd", ("cmd", {"agent": "gw-02", "target": "pump"})),
        ("stm32ota/group/cellar/state", ("state", {"agent": "group", "target": "cellar"})),
        ("stm32ota/group/cellar/cmd", ("group_cmd", {"group": "cellar"})),
        ("stm32ota/release/availability", ("release", {"product": "availability"})),
        ("stm32ota/fleet/cmd", ("fleet_cmd", {})),
        ("stm32ota/gw-02/pump/events", ("unknown", {})),
        ("stm32ota/gw 2/pump/state", ("unknown", {})),
        ("stm32ota/gw-02/pump/state/x", ("unknown", {})),
        ("other/gw-02/availability", ("unknown", {})),
    ],
)
def test_route_topic_reads_every_agents_topics(topic: str, expected: tuple) -> None:
    assert route_topic("stm32ota", topic) == expected


# --- discovery ------------------------------------------------------------------------------


def _discovery() -> dict:
    return discovery_payload(
        "gw-01", "pump", base_topic="stm32ota", device_info={"manufacturer": "ACME", "model": "STM32L432"}, product="pump-ctrl"
    )


def test_discovery_has_what_device_discovery_requires() -> None:
    d = _discovery()
    # HA DEVICE_DISCOVERY_SCHEMA: device + origin + components required
    assert set(d) >= {"device", "origin", "components"}
    assert d["device"]["identifiers"] == ["stm32ota_gw-01_pump"]
    assert d["device"]["manufacturer"] == "ACME"
    assert d["origin"]["name"] == "stm32ota"
    assert d["availability_topic"] == "stm32ota/gw-01/availability"
    assert (d["payload_available"], d["payload_not_available"]) == ("online", "offline")
    assert json.loads(json.dumps(d)) == d  # plain JSON
    for comp in d["components"].values():
        assert comp["platform"] in {"update", "sensor", "button", "event"}
        assert comp["unique_id"].startswith("gw-01_pump_")
    ids = [c["unique_id"] for c in d["components"].values()]
    assert len(set(ids)) == len(ids)


def test_discovery_update_entity() -> None:
    (u,) = [c for c in _discovery()["components"].values() if c["platform"] == "update"]
    assert u["device_class"] == "firmware"
    assert u["entity_category"] == "config"
    assert u["state_topic"] == "stm32ota/gw-01/pump/state"
    assert u["command_topic"] == "stm32ota/gw-01/pump/cmd"
    assert u["payload_install"] == "install"
    assert u["retain"] is False  # an Install must never be replayed from a retained message
    assert u["default_entity_id"] == "update.gw_01_pump_firmware"
    assert u["title"] == "pump-ctrl"


def test_every_entity_gets_the_same_id_on_old_and_new_home_assistant() -> None:
    """HA before 2025.10 builds the entity id from object_id (DOMAIN.object_id), 2025.10 and
    later from default_entity_id: both must name the same entity, or the docs' automations
    point at nothing on one of them."""
    for c in _discovery()["components"].values():
        assert c["default_entity_id"] == f"{c['platform']}.{c['object_id']}"


def test_discovery_status_sensor_button_and_event() -> None:
    comps = {c["platform"]: c for c in _discovery()["components"].values()}
    s = comps["sensor"]
    assert s["state_topic"] == s["json_attributes_topic"] == "stm32ota/gw-01/pump/job"
    assert "value_json.status" in s["value_template"]
    assert s["options"] == list(JOB_STATUSES)
    b = comps["button"]
    assert (b["command_topic"], b["payload_press"]) == ("stm32ota/gw-01/pump/cmd", "abort")
    e = comps["event"]
    assert e["state_topic"] == "stm32ota/gw-01/pump/events"
    assert e["event_types"] == list(EVENT_TYPES)


def test_discovery_title_and_device_overrides() -> None:
    d = discovery_payload("gw", "pump", base_topic="b", device_info={"name": "Cellar pump"}, product="p", title="Pump firmware")
    assert d["device"]["name"] == "Cellar pump"
    assert d["components"]["firmware"]["title"] == "Pump firmware"


def test_discovery_refuses_unknown_device_keys_and_bad_ids() -> None:
    with pytest.raises(PayloadError, match="modell"):
        discovery_payload("gw", "pump", base_topic="b", device_info={"modell": "x"}, product="p")
    with pytest.raises(PayloadError):
        discovery_payload("gw", "pu/mp", base_topic="b", device_info={}, product="p")


# --- update-entity state --------------------------------------------------------------------


# HA 2026.2 MQTT_JSON_UPDATE_SCHEMA: the only keys it allows (any other key drops the message)
HA_STATE_SCHEMA_KEYS = {
    "installed_version", "latest_version", "title", "release_summary",
    "release_url", "entity_picture", "in_progress", "update_percentage",
}


def test_state_has_exactly_the_contract_keys_all_allowed_by_ha() -> None:
    s = _state()
    # DESIGN.md: the 7 keys it names, always all present; entity_picture is the unused 8th
    assert tuple(s) == STATE_KEYS and len(s) == 7
    assert set(s) <= HA_STATE_SCHEMA_KEYS
    assert s["update_percentage"] == 42 and s["in_progress"] is True


def test_idle_state_publishes_null_percentage_only() -> None:
    s = _state(in_progress=False, update_percentage=None, latest_version="1.0.0")
    assert [k for k, v in s.items() if v is None] == ["update_percentage"]


@pytest.mark.parametrize("key", ["installed_version", "latest_version", "title", "release_summary", "in_progress"])
def test_state_refuses_none(key: str) -> None:
    with pytest.raises(PayloadError, match=key):
        _state(**{key: None})


def test_state_without_release_url_leaves_the_key_out_rather_than_null() -> None:
    s = _state(release_url=None)
    assert "release_url" not in s
    assert [k for k, v in s.items() if v is None] == []
    assert set(s) <= HA_STATE_SCHEMA_KEYS


@pytest.mark.parametrize("pct", [-1, 100.5, 101, float("nan"), "50", True])
def test_state_refuses_bad_percentages(pct: object) -> None:
    with pytest.raises(ValueError):
        _state(update_percentage=pct)


@pytest.mark.parametrize("pct", [0, 0.0, 50.5, 100, 100.0])
def test_state_accepts_percentages_in_range(pct: float) -> None:
    assert _state(update_percentage=pct)["update_percentage"] == pct


def test_state_refuses_percentage_when_not_in_progress() -> None:
    with pytest.raises(PayloadError):
        _state(in_progress=False, update_percentage=10)


@pytest.mark.parametrize("url", ["example.com", "", "ftp://example.com/x", "file:///etc/passwd", "https://"])
def test_state_refuses_non_http_urls(url: str) -> None:
    with pytest.raises(PayloadError, match="release_url"):
        _state(release_url=url)


def test_state_refuses_non_string_versions_and_non_bool_progress() -> None:
    with pytest.raises(PayloadError):
        _state(installed_version=1.2)
    with pytest.raises(PayloadError):
        _state(in_progress=1)


def test_long_release_summary_is_cut_to_255() -> None:
    s = _state(release_summary="x" * 1000)
    assert len(s["release_summary"]) == 255
    assert _state(release_summary="y" * 255)["release_summary"] == "y" * 255


# --- job and events -------------------------------------------------------------------------

NOW = datetime(2026, 1, 31, 12, 0, 0, 123456, tzinfo=timezone.utc)


def test_job_payload_fields_and_timestamps() -> None:
    j = job_payload(
        "j1", "IN_PROGRESS", phase="write", percent=37.5, from_version="1.0.0", to_version="1.1.0",
        queued_at=NOW, started_at=NOW + timedelta(seconds=1), updated_at=NOW,
    )
    assert j == {
        "job_id": "j1", "status": "IN_PROGRESS", "phase": "write", "percent": 37.5,
        "from_version": "1.0.0", "to_version": "1.1.0", "error": None,
        "queued_at": "2026-01-31T12:00:00.123Z", "started_at": "2026-01-31T12:00:01.123Z",
        "finished_at": None, "updated_at": "2026-01-31T12:00:00.123Z",
    }


def test_job_updated_at_defaults_to_now_in_utc() -> None:
    j = job_payload("j", "QUEUED")
    stamp = datetime.fromisoformat(j["updated_at"].replace("Z", "+00:00"))
    assert abs(stamp - datetime.now(timezone.utc)) < timedelta(minutes=5)
    assert j["updated_at"].endswith("Z")


def test_rfc3339_converts_to_utc_and_refuses_naive() -> None:
    cet = timezone(timedelta(hours=1))
    assert rfc3339(datetime(2026, 1, 1, 13, 0, tzinfo=cet)) == "2026-01-01T12:00:00.000Z"
    with pytest.raises(PayloadError):
        rfc3339(datetime(2026, 1, 1))


def test_failed_job_carries_the_error_of_the_error_tree() -> None:
    j = job_payload("j", "FAILED", error=ImageRejected("sha256 mismatch", code="sha256_mismatch"), updated_at=NOW)
    assert j["error"] == {"code": "sha256_mismatch", "message": "sha256 mismatch"}
    j = job_payload("j", "REJECTED", error={"code": "bad_json", "message": "not JSON"}, updated_at=NOW)
    assert j["error"]["code"] == "bad_json"


@pytest.mark.parametrize(
    "status,error",
    [
        ("FAILED", None),
        ("REJECTED", None),
        ("SUCCEEDED", {"code": "x", "message": "y"}),
        ("IN_PROGRESS", {"code": "x", "message": "y"}),
        ("FAILED", {"code": "x"}),
        ("FAILED", {"code": "x", "message": "y", "extra": 1}),
        ("FAILED", {"code": None, "message": "y"}),
    ],
)
def test_job_error_rules(status: str, error: object) -> None:
    with pytest.raises(PayloadError):
        job_payload("j", status, error=error)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kw", [{"status": "DONE"}, {"job_id": ""}, {"job_id": None}, {"percent": 101}, {"percent": None}, {"phase": 3}]
)
def test_job_refuses_bad_values(kw: dict) -> None:
    args = {"job_id": "j", "status": "QUEUED", **kw}
    with pytest.raises(PayloadError):
        job_payload(args.pop("job_id"), args.pop("status"), **args)


def test_event_payload_adds_event_type_from_status() -> None:
    j = job_payload("j", "CANCELED", updated_at=NOW)
    e = event_payload(j)
    assert e["event_type"] == "canceled" and e["event_type"] in EVENT_TYPES
    assert {k: v for k, v in e.items() if k != "event_type"} == j
    with pytest.raises(PayloadError):
        event_payload({"status": "nope"})
