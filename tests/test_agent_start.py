"""What the agent does at start, before the broker's retained messages reach it.

The README's walkthrough found it on a loaded machine: the start-up sweep of temporary files
(left by a kill inside an atomic write) ran after the MQTT client had started, so it could
delete the temporary file of the retained release being saved at that moment; the save then
failed and the release was lost until it was announced again.
"""

from __future__ import annotations

from pathlib import Path


from agent.ota import jobs as jobs_module
from agentkit import AgentKit


def test_the_temp_sweep_runs_before_any_message_is_handled(tmp_path: Path, monkeypatch) -> None:
    with AgentKit(tmp_path) as kit:
        kit.uart_target("pump", product="pump-ctrl", pins="none")
        m = kit.release("pump-ctrl", "1.5.0", kit.image(2048))
        kit.publish_release(m)  # retained: the broker hands it over as soon as the agent subscribes
        kit.write_config()
        stale = kit.state_dir / "releases" / ".pump-ctrl.json.abc123"
        stale.parent.mkdir(parents=True, exist_ok=True)
        stale.write_text("{half a write", encoding="utf-8")
        seen: list[tuple[bool, bool]] = []
        sweep = jobs_module.StateStore.sweep_temps

        def recording_sweep(state: jobs_module.StateStore) -> None:
            svc = kit.service
            seen.append((svc._dispatcher.is_alive(), svc.client._started))
            sweep(state)

        monkeypatch.setattr(jobs_module.StateStore, "sweep_temps", recording_sweep)
        kit.start_service()
        assert seen == [(False, False)], "the sweep ran while messages could be handled"
        state = kit.obs.wait_topic(kit.topics.state("pump"),
                                   lambda msg: msg.json().get("latest_version") == "1.5.0")
        assert state is not None
        assert not stale.exists()
        assert (kit.state_dir / "releases" / "pump-ctrl.json").is_file()
