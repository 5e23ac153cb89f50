"""Composition root of `stm32ota run`: config -> targets, MQTT, the updater, systemd.

MQTT callbacks only parse and enqueue (one bounded inbox, one dispatcher thread); flashing
runs on the updater's per-link workers; the job store (`ota.jobs.JobStore`) owns job state and
hands every change to `_on_job`, which publishes it as retained state/job messages plus one
event per status change.
"""

from __future__ import annotations

import functools
import logging
import threading
from datetime import datetime, timezone
from typing import Any, Callable, Mapping, Optional

from agent.mqtt import contract as ha
from agent.mqtt.client import MqttClient
from agent.mqtt.commands import MAX_COMMAND_BYTES, Dropped, parse_command
from agent.mqtt.inbox import Inbox
from agent.mqtt.timing import spread_offset
from agent.mqtt.tls import TlsOptions
from agent.mqtt.topics import Topics
from agent import systemd
from agent.ota.checks import compare_versions
from agent.config import Config, TargetConfig
from agent.config.targets import flasher_target
from agent.errors import SessionTakenOver, Stm32OtaError
from agent.flasher.target import Devices
from agent.ota.jobs import IN_PROGRESS, QUEUED, TERMINAL, Job, JobStore, StateStore
from agent.ota.keys import load_public_key
from agent.ota.pipeline import FlashTarget, Policy
from agent.ota.ratelimit import RateLimit
from agent.ota.updater import Updater

log = logging.getLogger(__name__)

INBOX_SIZE = 256  # messages on shared topics; as many again are kept for own commands
COMMAND_KINDS = ("cmd", "group_cmd", "fleet_cmd")
UNKNOWN_VERSION = "unknown"


def flash_target(t: TargetConfig) -> FlashTarget:
    """Everything the updater needs about one configured target: its OTA policy around the
    flasher's Target."""
    return FlashTarget(name=t.name, product=t.product, target=flasher_target(t),
                       groups=tuple(t.groups), auto_install=t.auto_install,
                       allow_downgrade=t.allow_downgrade)


def _when(text: Optional[str]) -> Optional[datetime]:
    if not text:
        return None
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)


class Service:
    """The running agent."""

    def __init__(self, cfg: Config, targets: list[FlashTarget], *,
                 client_factory: Optional[Callable[..., Any]] = None,
                 devices: Optional[Mapping[str, Devices]] = None) -> None:
        self.cfg = cfg
        self.agent_id = cfg.agent.id
        self.topics = Topics(cfg.mqtt.base_topic, self.agent_id, cfg.mqtt.discovery_prefix)
        self.targets = {t.name: t for t in targets}
        self.store = StateStore(cfg.agent.state_dir)  # the service only reads it
        self.limit = RateLimit()  # refusals reported per source topic: a flood costs nothing
        self.jobs = JobStore(self.store, self._on_job, self._on_progress, limit=self.limit)
        keys = tuple(load_public_key(p) for p in cfg.trust.keys)
        d = cfg.trust.download
        policy = Policy(trusted_keys=keys, allow_unsigned=cfg.trust.allow_unsigned,
                        cache_dir=str(cfg.agent.cache_dir), max_image_size=cfg.trust.max_image_size,
                        cache_max=cfg.agent.cache_max, download_timeout=d.timeout,
                        download_retries=d.retries, download_backoff=d.backoff,
                        download_deadline=d.deadline, download_min_rate=d.min_rate,
                        download_redirects=d.allow_redirects,
                        progress_interval=cfg.mqtt.progress_interval)
        self.updater = Updater(self.agent_id, targets, self.jobs, policy, devices=devices)
        self.client = (client_factory or self._make_client)()
        self.inbox = Inbox(INBOX_SIZE)
        self._stop = threading.Event()
        self._dispatcher = threading.Thread(target=self._dispatch, name="mqtt inbox", daemon=True)
        self._last_status: dict[str, tuple[str, str]] = {}
        self._publish_lock = threading.Lock()
        self._fault: Optional[Stm32OtaError] = None  # why run_forever() must end
        self._spread: dict[str, threading.Timer] = {}  # target -> its spread-out install

    def _make_client(self) -> MqttClient:
        m = self.cfg.mqtt
        tls = None
        if m.tls is not None:
            tls = TlsOptions(ca=m.tls.ca, cert=m.tls.cert, key=m.tls.key,
                             key_password=m.tls.key_password.resolve(), insecure=m.tls.insecure)
        return MqttClient(m.host, m.port, client_id=m.client_id, username=m.username,
                          password=m.password.resolve(), tls=tls, keepalive=m.keepalive,
                          will=(self.topics.availability, "offline", True),
                          reconnect_max=m.reconnect_max, max_payload=MAX_COMMAND_BYTES,
                          on_reject=self._on_oversize, on_taken_over=self._on_taken_over,
                          jitter=m.jitter)

    # ----- start / stop ----------------------------------------------------------------------

    def start(self) -> None:
        """Subscribe, announce every target, start MQTT, the dispatcher and the workers."""
        c, t = self.client, self.topics
        groups = {name: tuple(target.groups) for name, target in self.targets.items()}
        products = {target.product for target in self.targets.values()}
        for topic_filter in t.subscriptions(groups, products):
            if topic_filter == t.ha_status:
                # HA's birth: re-send everything retained (discovery first, then state and job),
                # so entities created from the fresh discovery get their state without a
                # retained copy
                c.on_ha_birth(self.cfg.mqtt.discovery_prefix)
            else:
                # Retain As Published: a command published retained is recognised (and
                # ignored) also when it arrives live, not only when we subscribe
                kind = t.parse_topic(topic_filter)[0]
                c.subscribe(topic_filter, self._enqueue,
                            retain_as_published=kind in COMMAND_KINDS)
        self.publish_discovery()
        for name in self.targets:
            job = self.jobs.load(name)
            self.publish_state(name, job)
            if job is not None:
                self._publish_job(name, job, retain=True, event=False)
        # Recovery first: it sweeps the temporary files an interrupted write left in state_dir,
        # which would otherwise race the first retained message's write into the same folder
        # (the sweep deleted a release being saved, and the release was lost)
        self.updater.start()
        self._dispatcher.start()
        c.start()
        systemd.notify("READY=1")
        systemd.notify(f"STATUS=watching {len(self.targets)} target(s)")
        log.info("agent %s started with %d target(s)", self.agent_id, len(self.targets))

    def run_forever(self) -> None:
        """Block until stop(), pinging the systemd watchdog when one is configured."""
        interval = systemd.watchdog_interval()
        while not self._stop.wait(interval if interval else 3600):
            if self._dispatcher.is_alive():
                systemd.notify("WATCHDOG=1")
        if self._fault is not None:
            self.stop()
            raise self._fault

    def _on_taken_over(self, why: str) -> None:
        """paho's thread: a second agent uses our id; end run_forever() with that error."""
        self._fault = SessionTakenOver(why)
        self._stop.set()

    def stop(self) -> None:
        """Stop workers (an interrupted flash resumes at the next start), then MQTT."""
        systemd.notify("STOPPING=1")
        self._stop.set()
        for timer in list(self._spread.values()):
            timer.cancel()
        self.updater.stop()
        self.inbox.close()
        for name in self.targets:  # nothing progresses while the agent is away: say so
            job = self.jobs.load(name)
            if job is not None and not job.terminal:
                self.publish_state(name, job)
        self.client.stop()

    # ----- inbound ---------------------------------------------------------------------------

    def _enqueue(self, topic: str, payload: bytes, retained: bool) -> None:
        """paho's thread: never block, never parse much; own targets' commands have room kept."""
        urgent = self.topics.parse_topic(topic)[0] == "cmd"
        if not self.inbox.put((topic, payload, retained), urgent):
            earlier = self.limit.take(f"inbox {topic}")
            if earlier is not None:
                log.error("inbox full: dropped a message on %s (and %d earlier ones)", topic,
                          earlier)

    def _on_oversize(self, topic: str, size: int) -> None:
        """paho's thread: a too-large payload was dropped unread; still tell its sender."""
        self._enqueue(topic, Dropped(size), False)  # type: ignore[arg-type]

    def _dispatch(self) -> None:
        while True:
            item = self.inbox.get()
            if item is None:
                return
            try:
                item() if callable(item) else self.handle(*item)
            except Exception:  # a bug in one message must not stop the next ones
                log.exception("error handling %s", item if callable(item) else f"a message on {item[0]}")

    def handle(self, topic: str, payload: bytes, retained: bool = False) -> None:
        """Route one inbound message (called on the dispatcher thread)."""
        kind, params = self.topics.parse_topic(topic)
        if kind == "release":
            self._release(params["product"], payload)
            return
        if kind == "cmd":
            names, direct = [params["target"]], True
        elif kind == "group_cmd":
            names = [n for n, t in self.targets.items() if params["group"] in t.groups]
            direct = False
        elif kind == "fleet_cmd":
            names, direct = list(self.targets), False
        else:
            return
        names = [n for n in names if n in self.targets]
        for name in names:  # a new command for a target replaces its spread-out install
            pending = self._spread.pop(name, None)
            if pending is not None:
                pending.cancel()
        if retained:
            if self.limit.take(f"retained {topic}") is not None:
                log.warning("ignoring a retained command on %s: commands must not be "
                            "retained", topic)
            return
        try:
            if isinstance(payload, Dropped):
                payload.check()
            cmd = parse_command(payload)
        except Stm32OtaError as err:
            for name in names:
                self.jobs.reject(name, err, to_version=None, origin=topic)
            return
        if cmd["op"] == "check":  # re-announce what we know, job or not
            for name in names:
                job = self.jobs.load(name)
                if job is not None:
                    self._on_job(name, job, True)
                else:
                    self.publish_state(name, None)
            return
        if cmd["op"] == "install" and not direct and cmd.get("spread"):
            self._spread_out(names, cmd, topic)
            return
        self.updater.handle_command(names, cmd, direct=direct, origin=topic)

    def _spread_out(self, names: list[str], cmd: dict, origin: str) -> None:
        """A group/fleet install with a spread: each target starts at its own fixed offset in
        the window, so 100,000 gateways do not download in the same second."""
        for name in names:
            delay = spread_offset(self.agent_id, name, cmd["spread"])
            log.info("%s: install starts in %.0f s (spread %g s)", name, delay, cmd["spread"])
            start = functools.partial(self.updater.handle_command, [name], cmd, direct=False,
                                      origin=origin)
            timer = threading.Timer(delay, self.inbox.put, (start, True))  # run by the dispatcher
            timer.daemon = True
            self._spread[name] = timer
            timer.start()

    def _release(self, product: str, payload: bytes) -> None:
        if not payload:  # a cleared retained release
            return
        try:
            if isinstance(payload, Dropped):
                payload.check()
            changed = self.updater.handle_release(product, payload, self.topics.release(product))
        except Stm32OtaError as err:
            if self.limit.take(self.topics.release(product)) is None:
                return  # a flood of bad releases: counted, not reported one by one
            log.warning("rejected release on %s: [%s] %s", self.topics.release(product), err.code, err)
            for name, t in self.targets.items():
                if t.product == product:
                    self.client.publish(self.topics.events(name), {
                        "event_type": "rejected", "job_id": None, "status": "REJECTED",
                        "error": err.as_dict(), "updated_at": ha.rfc3339(datetime.now(timezone.utc))})
            return
        for name in changed:
            self.publish_state(name, self.jobs.load(name))

    # ----- outbound --------------------------------------------------------------------------

    def publish_discovery(self) -> None:
        """Home Assistant device discovery for every target (also on HA's birth message)."""
        # no via_device: it must name another discovered device, and the agent is not one
        device = {"manufacturer": "STMicroelectronics", "model": "STM32"}
        for name, t in self.targets.items():
            payload = ha.discovery_payload(self.agent_id, name, base_topic=self.cfg.mqtt.base_topic,
                                           device_info=device, product=t.product,
                                           agent_name=self.cfg.agent.name or None)
            self.client.publish_sticky(self.topics.discovery(name), payload)

    def state_of(self, name: str, job: Optional[Job]) -> dict:
        """Home Assistant's update-entity state for a target."""
        t = self.targets[name]
        known = self.store.installed_version(name)
        installed = known or UNKNOWN_VERSION
        rel = self.store.release(t.product) or {}
        running = job is not None and job.status in (QUEUED, IN_PROGRESS)
        latest = rel.get("version") or installed
        if known and latest != known and compare_versions(known, latest) > 0:
            latest = known  # a direct install went past the announced release: nothing newer
        if running and job.to_version:
            latest = job.to_version
        running = running and not self._stop.is_set()  # a stopped agent's jobs wait for it
        return ha.state_payload(
            installed_version=installed, latest_version=latest,
            title=rel.get("title") or t.product,
            release_summary=rel.get("release_summary") or "",
            # never the download URL: it may carry a token, and it is not release notes
            release_url=rel.get("release_url"),
            in_progress=bool(running),
            update_percentage=job.percent if running else None)

    def publish_state(self, name: str, job: Optional[Job]) -> None:
        """Retained state for Home Assistant."""
        self.client.publish_sticky(self.topics.state(name), self.state_of(name, job))

    def _publish_job(self, name: str, job: Job, *, retain: bool, event: bool) -> None:
        doc = ha.job_payload(job.job_id, job.status, phase=job.phase, percent=job.percent,
                             from_version=job.from_version, to_version=job.to_version,
                             error=job.error, queued_at=_when(job.created),
                             started_at=_when(job.started), finished_at=_when(job.finished),
                             updated_at=_when(job.updated))
        if retain:
            self.client.publish_sticky(self.topics.job(name), doc)
        else:
            self.client.publish(self.topics.job(name), doc)
        if event:
            self.client.publish(self.topics.events(name), ha.event_payload(doc))

    def _on_progress(self, name: str, job: Job) -> None:
        """Progress inside a phase (a worker thread): job and state, neither retained nor an
        event; the retained copies keep the phase's start until the next phase or the end."""
        with self._publish_lock:
            if self._last_status.get(name) != (job.job_id, job.status):
                return  # the job moved on (or was never announced): this percent is stale
            self._publish_job(name, job, retain=False, event=False)
            self.client.publish(self.topics.state(name), self.state_of(name, job))

    def _on_job(self, name: str, job: Job, retain: bool) -> None:
        """Job store callback (any thread): job, state, and an event on status changes.

        Serialized: the dispatcher (QUEUED) and a fast worker (FAILED a moment later) may call
        at once, and the retained state must end with the newer one, never a stale
        `in_progress: true`. A non-retained notice (a refusal while another job runs) gets its
        event but does not disturb the running job's record.
        """
        with self._publish_lock:
            if not retain:
                self._publish_job(name, job, retain=False, event=True)
                return
            last = self._last_status.get(name)
            if last and last[0] == job.job_id and last[1] in TERMINAL and not job.terminal:
                log.debug("%s: dropping a stale %s update of finished job %s", name, job.status,
                          job.job_id)
                return
            key = (job.job_id, job.status)
            self._last_status[name] = key
            self._publish_job(name, job, retain=True, event=last != key)
            self.publish_state(name, job)

