"""The MQTT client: the only module that imports paho. It parses nothing and never blocks.

`MqttClient` wraps paho-mqtt 2.x (CallbackAPIVersion.VERSION2) with what an agent that must
survive broker outages needs, all at QoS 1:

- automatic reconnect with a bounded back-off (paho's own loop thread);
- MQTT 5, or MQTT 3.1.1 when the broker refuses 5 (`protocol=None`, the default; pinned with 5
  or 4); a persistent session (5: clean_start=False + session expiry; 3.1.1: clean_session=False
  unless session_expiry is 0) so QoS 1 commands sent while briefly away are still delivered;
- on every (re)connect: re-subscribe everything (a restarted broker without persistence has
  forgotten all subscriptions), re-publish the latest "sticky" retained message of each topic
  (availability, discovery, state, job) -- only the birth and those changed while away when
  the broker kept the session -- and then the other messages published while offline;
- a bounded offline queue (paho's); on reconnect we take it back (`drop_out_messages()`) and
  re-send it *after* the sticky ones, minus stale copies of sticky topics;
- `subscribe_qos=0` for a viewer that keeps no session (the fleet view); `on_taken_over(why)`
  when the broker says another client took the session over (0x8E: final, no reconnect);
  `jitter`: a random delay up to that bound before reconnecting and answering HA's birth;
- inbound payloads over `max_payload` are dropped with a log line before any handler sees them;
- a failed attempt says why at WARNING when new, DEBUG while it repeats; paho keeps retrying,
  but a refused login ends wait_connected() at once (`refused` says why).

Threading: message handlers and the birth callback run on paho's network thread: they only
parse and enqueue (never download, flash, sleep or wait); publish() there only queues bytes.
"""

from __future__ import annotations

import logging
import sys
import random
import threading
from typing import Any, Callable

import paho.mqtt.client as paho
from paho.mqtt import __version__ as paho_version
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from agent.mqtt.health import SESSION_TAKEN_OVER, Lifetimes, not_connected_noise
from agent.mqtt.payload import Payload, encode, idle_wait, tunable_loop
from agent.mqtt.readahead import drain, read_ahead
from agent.mqtt.subscriptions import Handler, Subscriptions
from agent.mqtt.timing import jitter
from agent.mqtt.tls import TlsOptions, configure_tls, connect_failure

log = logging.getLogger(__name__)

QOS = 1  # DESIGN.md: QoS 1 throughout
RejectHandler = Callable[[str, int], None]


class _Paho(paho.Client):
    """paho's client whose network thread waits `idle_wait(keepalive)` for traffic, and reads
    its TCP socket ahead (`agent.mqtt.readahead`).

    A publish or subscribe from another thread still wakes it at once (paho's socket pair),
    and the keepalive is read on every pass, so a shorter Server Keep Alive from the broker's
    CONNACK shortens the wait. paho's loop_start() has no timeout parameter, hence the
    override of its one network-wait step, used only while `tunable_loop()` finds that step.
    That step also handles every packet already read ahead, not one per select() pass. The
    socket comes from paho's private `_create_socket()` (paho 2.x; its public API has no way
    to read ahead): a paho that no longer calls it, or reads the socket other than with
    recv(), gets the plain socket, as before.
    """

    def _loop(self, timeout: float = 1.0) -> MQTTErrorCode:
        rc = super()._loop(idle_wait(self.keepalive))
        return MQTTErrorCode(drain(self._sock, self.loop_read, rc))

    def _create_socket(self) -> Any:
        return read_ahead(super()._create_socket(), paho.Client)


class MqttClient:
    """A reconnecting QoS 1 MQTT client with sticky retained messages; see the module docstring."""

    def __init__(self, host: str, port: int = 1883, *, client_id: str, username: str | None = None,
                 password: str | None = None, tls: TlsOptions | None = None, keepalive: int = 60,
                 will: tuple[str, Payload, bool] | None = None, birth: Payload = "online",
                 offline: Payload = "offline", reconnect_min: float = 1, reconnect_max: float = 60,
                 max_payload: int = 64 * 1024, max_queued: int = 1000, protocol: int | None = None,
                 session_expiry: int = 3600, on_reject: RejectHandler | None = None,
                 subscribe_qos: int = QOS, on_taken_over: Callable[[str], None] | None = None,
                 jitter: float = 0.0, rng: Callable[[], float] = random.random) -> None:
        if not client_id:
            raise ValueError("client_id is required: a persistent session is keyed by it")
        if protocol not in (None, 4, 5):
            raise ValueError("protocol must be 4 (MQTT 3.1.1), 5 (MQTT 5) or None (negotiate)")
        self.host, self.port, self.keepalive, self.client_id = host, port, keepalive, client_id
        self.max_payload, self.session_expiry = max_payload, session_expiry
        self.on_reject, self.subscribe_qos, self.on_taken_over = on_reject, subscribe_qos, on_taken_over
        self.negotiate, self.protocol = protocol is None, protocol or 5  # None: 5, else 3.1.1
        self.refused: str | None = None  # a refused login: retrying cannot help
        self._settled = threading.Event()  # connected, or refused
        self._answered = False  # a CONNACK came, whatever it said: the broker speaks this version
        self.connected = threading.Event()
        self._lock = threading.RLock()
        self._subs = Subscriptions()
        self._sticky: dict[str, tuple[bytes, bool]] = {}
        self._unsent: set[str] = set()  # sticky topics changed while disconnected
        self._will, self._offline, self._started = will, encode(offline), False
        self.last_failure: str | None = None  # logged at WARNING once per distinct reason
        self.jitter, self._rng = jitter, rng  # bound of the random delays, see timing.jitter
        self._lives = Lifetimes(f"{client_id!r} on {host}:{port}")
        self._client = self._new_paho(max_queued, reconnect_min, reconnect_max)
        if username is not None:
            self._client.username_pw_set(username, password)
        if tls is not None:
            configure_tls(self._client, tls)
        if will is not None:
            self._set_will(will[0], will[2], birth)

    def _set_will(self, topic: str, retain: bool, birth: Payload) -> None:
        """The will, and the birth as the first sticky message (re-sent first on connect)."""
        self._client.will_set(topic, self._offline, qos=QOS, retain=retain)
        self._sticky[topic] = (encode(birth), retain)

    def _new_paho(self, max_queued: int, reconnect_min: float, reconnect_max: float) -> paho.Client:
        """paho's client with our logging, offline queue, back-off and callbacks."""
        kwargs: dict[str, Any] = {"protocol": paho.MQTTv5 if self.protocol == 5 else paho.MQTTv311}
        if self.protocol == 4:
            kwargs["clean_session"] = self.session_expiry == 0  # 3.1.1 has no expiry: keep or not
        if tunable_loop(paho.Client):
            client: paho.Client = _Paho(CallbackAPIVersion.VERSION2, client_id=self.client_id, **kwargs)
        else:
            log.debug("paho-mqtt %s has no Client._loop(timeout) step: its network thread "
                      "wakes every second", paho_version)
            client = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, **kwargs)
        paho_log = logging.getLogger(__name__ + ".paho")
        if not_connected_noise not in paho_log.filters:
            paho_log.addFilter(not_connected_noise)
        client.enable_logger(paho_log)
        client.max_queued_messages_set(max_queued)
        client.reconnect_delay_set(reconnect_min, reconnect_max)  # type: ignore[arg-type]
        self._backoff = (reconnect_min, reconnect_max)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def start(self) -> None:
        """Connect in the background and keep reconnecting until stop()."""
        kwargs: dict[str, Any] = {}
        if self.protocol == 5:
            kwargs = {"clean_start": False}
            if self.session_expiry:  # absent means 0; a property-less CONNECT is one that even
                props = Properties(PacketTypes.CONNECT)  # amqtt answers "unsupported version"
                props.SessionExpiryInterval = self.session_expiry
                kwargs["properties"] = props
        self._client.connect_async(self.host, self.port, self.keepalive, **kwargs)
        self._client.loop_start()
        self._started = True
        log.info("MQTT connecting to %s:%d as %s", self.host, self.port, self.client_id)

    def stop(self, timeout: float = 5.0) -> None:
        """Publish `offline` on the will topic (if connected), disconnect cleanly, stop the loop."""
        if not self._started:
            return
        if self._will is not None and self.connected.is_set():
            info = self._client.publish(self._will[0], self._offline, qos=QOS, retain=self._will[2])
            try:
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError) as exc:
                log.warning("could not publish offline before disconnecting: %s", exc)
        self._started = False  # from here a disconnect is expected
        self._client.disconnect()
        self._client.loop_stop()
        self.connected.clear()

    def wait_connected(self, timeout: float | None = None) -> bool:
        """Wait until connected (and re-subscribed); False on timeout or a refused login."""
        self._settled.wait(timeout)
        return self.connected.is_set()

    # --- outbound -------------------------------------------------------------------------

    def publish(self, topic: str, payload: Payload, retain: bool = False) -> bool:
        """Queue a QoS 1 message; never blocks. Returns False if the offline queue is full
        and the message was dropped. While disconnected the message waits for the reconnect."""
        with self._lock:
            return self._send(topic, encode(payload), retain)

    def publish_wait(self, topic: str, payload: Payload, retain: bool = False,
                     timeout: float = 10.0, expiry: int | None = None) -> bool:
        """Publish and wait until the broker acknowledged it (for one-shot tools); True if it
        did. `expiry` s (MQTT 5): the broker drops it from a session still offline by then."""
        props = Properties(PacketTypes.PUBLISH) if expiry is not None and self.protocol == 5 else None
        if props is not None:
            props.MessageExpiryInterval = expiry
        with self._lock:
            info = self._client.publish(topic, encode(payload), qos=QOS, retain=retain,
                                        properties=props)
        try:
            info.wait_for_publish(timeout)
        except (RuntimeError, ValueError) as exc:
            log.warning("publish to %s not confirmed: %s", topic, exc)
            return False
        return info.is_published()

    def publish_sticky(self, topic: str, payload: Payload, retain: bool = True) -> None:
        """Publish a retained message and remember it as the latest for its topic: it is
        re-published on every reconnect and by republish_sticky(). Plain publish() calls to
        a sticky topic that were still queued at a reconnect are discarded as stale."""
        data = encode(payload)
        with self._lock:
            self._sticky[topic] = (data, retain)
            if self.connected.is_set():
                self._send(topic, data, retain)
            else:  # only the latest value matters; _on_connect sends it
                self._unsent.add(topic)

    def republish_sticky(self) -> None:
        """Send every sticky message again (e.g. after Home Assistant's birth message)."""
        with self._lock:
            if self.connected.is_set():
                for topic, (data, retain) in self._sticky.items():
                    self._send(topic, data, retain)

    def _send(self, topic: str, data: bytes, retain: bool) -> bool:
        """Queue one message with paho; False (and a log line) if it was dropped."""
        rc = self._client.publish(topic, data, qos=QOS, retain=retain).rc
        if rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            log.warning("MQTT offline queue full: dropped %d bytes for %s", len(data), topic)
        elif rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            log.warning("MQTT publish to %s failed: %s", topic, paho.error_string(rc))
        else:
            return True
        return False

    # --- inbound --------------------------------------------------------------------------

    def subscribe(self, topic_filter: str, handler: Handler, *,
                  retain_as_published: bool = False) -> None:
        """Call handler(topic, payload, retained) for every message matching topic_filter,
        now and after every reconnect. Runs on the network thread: parse and enqueue only.

        `retained` is set for a retained message the broker sends because we subscribed. With
        `retain_as_published` (MQTT 5 only, 3.3.1.2.2) it is also set for a message that
        arrives live but was published with the retain flag, which MQTT otherwise clears.
        """
        with self._lock:
            if self._subs.add(topic_filter, handler, retain_as_published) and self.connected.is_set():
                self._subscribe(topic_filter)

    def unsubscribe(self, topic_filter: str) -> None:
        """Forget every handler of topic_filter and unsubscribe."""
        with self._lock:
            if self._subs.remove(topic_filter) and self.connected.is_set():
                self._client.unsubscribe(topic_filter)

    def on_ha_birth(self, discovery_prefix: str = "homeassistant", callback: Callable[[], None] | None = None) -> None:
        """When Home Assistant announces `online` on `<discovery_prefix>/status`, call callback
        (network thread), or by default re-send every sticky message: discovery, then state."""
        action = callback if callback is not None else self.republish_sticky

        def birth(topic: str, payload: bytes, retained: bool) -> None:
            if payload.strip() == b"online":  # every gateway hears it at once: jitter
                delay = jitter(self.jitter, self._rng)
                log.info("Home Assistant is online: re-sending discovery and state in %.1f s", delay)
                timer = threading.Timer(delay, action)
                timer.daemon = True
                timer.start()

        self.subscribe(f"{discovery_prefix}/status", birth)

    def _subscribe(self, topic_filter: str) -> None:
        if self.protocol == 5:
            # retained messages only for a new subscription, not on every session resume
            opts = SubscribeOptions(qos=self.subscribe_qos, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB,
                                    retainAsPublished=topic_filter in self._subs.as_published)
            rc, _ = self._client.subscribe(topic_filter, options=opts)
        else:
            rc, _ = self._client.subscribe(topic_filter, qos=self.subscribe_qos)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            log.warning("MQTT subscribe to %s failed: %s", topic_filter, paho.error_string(rc))

    # --- paho callbacks (network thread) --------------------------------------------------

    def _failed(self, why: str) -> None:
        """Log a failed connection attempt: WARNING for a new reason, DEBUG for a repeat."""
        level = logging.DEBUG if why == self.last_failure else logging.WARNING
        self.last_failure = why
        log.log(level, "MQTT cannot connect to %s:%d: %s; retrying", self.host, self.port, why)

    def _on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        # paho calls this inside its `except OSError:` around the connect and drops the
        # exception (DEBUG "Connection failed, retrying"); it is still the one being handled
        self._failed(connect_failure(sys.exc_info()[1]))

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self._answered = True
        if reason.is_failure:
            if reason.value == 0x84 and self.negotiate and self.protocol == 5:  # 3.1.1 rc 1 too
                self._downgrade(client)
                return
            hint = ""
            if reason.value in (0x86, 0x87):  # bad user name or password, not authorized (3.1.1 rc 4, 5)
                hint = "; check the user name and password"
                self.refused = f"the broker refused the login: {reason}"
                self._settled.set()
            self._failed(f"the broker refused the connection: {reason}{hint}")
            return
        self.last_failure, self.refused = None, None
        self._lives.connected()
        with self._lock:
            # paho would re-send these after this callback returns, i.e. after our fresh sticky
            # values; take them back so the order is: sticky latest first, then the rest
            pending = client.drop_out_messages()
            for topic_filter in self._subs:
                self._subscribe(topic_filter)
            # a kept session means the broker kept our retained messages too: send only what
            # changed while away and the birth (the will replaced it), not all of them again
            kept = bool(flags.session_present)
            due = self._unsent | {m.topic for m in pending} | {self._will[0] if self._will else ""}
            for topic, (data, retain) in self._sticky.items():
                if not kept or topic in due:
                    self._send(topic, data, retain)
            self._unsent.clear()
            stale = 0
            for msg in pending:
                if msg.topic in self._sticky:
                    stale += 1
                    continue
                self._send(msg.topic, msg.payload, msg.retain)
            self.connected.set()
            self._settled.set()
        log.info("MQTT connected to %s:%d with MQTT %s (session present: %s); %d subscriptions, "
                 "%d sticky, %d queued re-sent", self.host, self.port, "5" if self.protocol == 5
                 else "3.1.1", kept, len(self._subs), len(self._sticky), len(pending) - stale)

    def _downgrade(self, client: paho.Client) -> None:
        """A 3.1.1-only broker: the next attempt uses 3.1.1 (as paho itself downgrades to 3.1)."""
        log.info("MQTT broker at %s:%d does not speak MQTT 5: using MQTT 3.1.1", self.host, self.port)
        self.protocol = 4
        client._protocol = paho.MQTTv311
        client._clean_session = self.session_expiry == 0

    def _upgrade(self, client: paho.Client) -> None:
        """3.1.1 got no answer either: the broker was not the problem, so MQTT 5 again."""
        self.protocol, client._protocol = 5, paho.MQTTv5

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        was_connected = self.connected.is_set()
        self.connected.clear()
        if self.refused is None:
            self._settled.clear()
        if getattr(reason, "value", None) == SESSION_TAKEN_OVER and self._started:
            self._taken_over(client)
            return
        if was_connected and self._started:
            self._lives.dropped()
            # the first retry waits reconnect_min + jitter: not every gateway in the same second
            client.reconnect_delay_set(self._backoff[0] + jitter(self.jitter, self._rng),
                                       self._backoff[1])  # type: ignore[arg-type]
        if not was_connected and not self._answered and self.negotiate and self._started:
            # no CONNACK at all (amqtt waits forever on an MQTT 5 CONNECT with properties, until
            # paho gives up after a keepalive): try the other version next time
            (self._downgrade if self.protocol == 5 else self._upgrade)(client)
        elif not was_connected:  # the end of a refused attempt, already logged with its reason
            log.debug("MQTT connection to %s:%d closed (%s)", self.host, self.port, reason)
        elif self._started:
            log.warning("MQTT disconnected from %s:%d (%s); reconnecting", self.host, self.port, reason)

    def _taken_over(self, client: paho.Client) -> None:
        """Another client took our client id: reconnecting would throw it out in turn, forever."""
        why = self._lives.duplicate("the broker says the session was taken over (MQTT reason 0x8E)")
        log.error("%s; not reconnecting", why)
        self._started = False
        client.disconnect()  # from the network thread: ends paho's reconnect loop
        if self.on_taken_over is not None:
            self._call(self.on_taken_over, why)

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        size = len(msg.payload)
        if size > self.max_payload:
            # checked before any parsing: a huge payload costs nothing but this line
            log.warning("MQTT dropped %d-byte message on %s (limit %d)", size, msg.topic, self.max_payload)
            if self.on_reject is not None:
                self._call(self.on_reject, msg.topic, size)
            return
        topic = msg.topic
        with self._lock:
            handlers = self._subs.handlers(topic)
        if not handlers:
            log.debug("MQTT message on %s matches no handler", topic)
        for handler in handlers:
            self._call(handler, topic, bytes(msg.payload), bool(msg.retain))

    @staticmethod
    def _call(fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:  # a handler bug must not kill paho's network thread
            log.exception("MQTT handler %r failed on %s", fn, args[0])
