"""TLS for the MQTT connection: the options, loading them into the client, and saying why a
TLS connection failed in words a person can act on.

No paho import here (agent.mqtt.client is its only importer): `configure_tls` only calls the
`tls_set`/`tls_insecure_set` methods of the client it is handed.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from typing import Any, Optional

from agent.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TlsOptions:
    """TLS settings: `ca` file (None = system CAs), client `cert`/`key` (+ `key_password`),
    `insecure` = skip the host name check only (the certificate chain is still verified)."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    key_password: str | None = None
    insecure: bool = False


def _unusable(tls: TlsOptions, exc: BaseException) -> ConfigError:
    files = ", ".join(f"{n} {v}" for n, v in (("ca", tls.ca), ("cert", tls.cert),
                                              ("key", tls.key)) if v) or "system CAs"
    return ConfigError(f"MQTT TLS files could not be loaded ({files}): {exc}; check that "
                       "they are PEM files, that the key belongs to the certificate and "
                       "that its password is right")


def check_tls_files(tls: TlsOptions) -> None:
    """Load the CA, certificate and key into a throwaway context: ConfigError if they do not
    load (what `configure_tls` would raise at start), without a client or a connection."""
    try:
        context = ssl.create_default_context(cafile=tls.ca)
        if tls.cert:
            context.load_cert_chain(tls.cert, tls.key, password=tls.key_password)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise _unusable(tls, exc) from exc


def configure_tls(client: Any, tls: TlsOptions) -> None:
    """Load the CA, certificate and key into a paho client now, so a bad file is a
    ConfigError at start rather than a failure at the first connect."""
    try:
        client.tls_set(
            ca_certs=tls.ca, certfile=tls.cert, keyfile=tls.key, cert_reqs=ssl.CERT_REQUIRED,
            keyfile_password=tls.key_password,
        )
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise _unusable(tls, exc) from exc
    client.tls_insecure_set(tls.insecure)


def connect_failure(exc: Optional[BaseException]) -> str:
    """Why a connection attempt failed, with a hint where TLS is the cause."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"the broker's TLS certificate was not accepted ({exc.verify_message or exc}); " \
               "check the CA file and the host name the certificate names"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed ({exc}); is this a TLS port, and does the broker " \
               "want a client certificate?"
    return str(exc) if exc is not None else "connection failed"
