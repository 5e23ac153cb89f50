"""Names vulture cannot see being used because a library calls them, not code in agent/.

tests/test_layers.py hands this file to vulture beside agent/ (it is parsed, never imported);
vulture counts every attribute read below as a use of that name anywhere. Keep it short: an
entry is for a name a library calls or reads. Code that only tests call is dead code: delete it.
Handlers registered through a decorator are exempt in test_layers.py (VULTURE_DECORATORS).
"""

from types import SimpleNamespace

_ = SimpleNamespace()

# paho-mqtt calls the callbacks agent/mqtt/client.py assigns, with (client, userdata, ...)
_.on_connect
_.on_connect_fail
_.on_disconnect
_.on_message
_.userdata
# an MQTT 5 CONNECT property: paho's Properties.pack() reads it
_.SessionExpiryInterval
# an MQTT 5 PUBLISH property (publish_wait's expiry): packed the same way
_.MessageExpiryInterval
# paho builds each CONNECT from these (agent/mqtt/client.py switches MQTT versions with them,
# as paho's own 3.1.1 -> 3.1 downgrade does)
_._protocol
_._clean_session
# http.server calls log_message on the handler and socketserver reads daemon_threads
_.log_message
_.daemon_threads
# pyserial's baudrate setter reconfigures the open port (agent/link/uart.py set_baud)
_.baudrate
