"""What `stm32ota run` needs from the machine before it connects anywhere, checked in one place.

`check-config` and `run` both call `startup_checks`, so whatever would stop the agent at start
(a trust key that cannot be read or parsed, a password file or variable that is missing, TLS
files that do not load, a state or cache folder that is a file or cannot be written) is an
error with its key and line in both, never a warning that `run` later turns into a crash.
It reads files and the environment but writes nothing.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from agent.config.model import Config, Secret
from agent.config.values import Context
from agent.errors import ConfigError, KeyFileError
from agent.mqtt.tls import TlsOptions, check_tls_files
from agent.ota.keys import load_public_key

log = logging.getLogger(__name__)


def _check_keys(cfg: Config, ctx: Context) -> None:
    for i, path in enumerate(cfg.trust.keys):
        try:
            load_public_key(path)
        except KeyFileError as err:
            ctx.add(f"trust.keys[{i}]", str(err), "list the .pub file written by "
                    "`stm32ota keygen`, readable by the agent's user")


def _secrets(cfg: Config) -> list[Secret]:
    out = [cfg.mqtt.password]
    if cfg.mqtt.tls is not None:
        out.append(cfg.mqtt.tls.key_password)
    return out


def _check_secrets(cfg: Config, ctx: Context) -> None:
    for secret in _secrets(cfg):
        try:
            secret.resolve()
        except ConfigError as err:
            # Secret.resolve says "<where>_file: ..." or "<where>_env: ..."
            where, _, message = str(err).partition(": ")
            ctx.add(where, message)


def _check_tls(cfg: Config, ctx: Context) -> None:
    tls = cfg.mqtt.tls
    if tls is None:
        return
    missing = False
    for name in ("ca", "cert", "key"):
        path = getattr(tls, name)
        if path is not None and not os.access(path, os.R_OK):
            ctx.add(f"mqtt.tls.{name}", f"cannot read {path}", "check the path and that the "
                    "agent's user may read it")
            missing = True
    if missing:
        return
    try:
        password = tls.key_password.resolve()
    except ConfigError:
        return  # already reported by _check_secrets
    try:
        check_tls_files(TlsOptions(ca=_str(tls.ca), cert=_str(tls.cert), key=_str(tls.key),
                                   key_password=password, insecure=tls.insecure))
    except ConfigError as err:
        ctx.add("mqtt.tls", str(err))


def _str(path: Path | None) -> str | None:
    return str(path) if path is not None else None


def _check_dir(path: Path, where: str, ctx: Context) -> None:
    """An existing folder the agent may write, or one it can create under a writable parent."""
    if path.exists():
        if not path.is_dir():
            ctx.add(where, f"{path} is a file, not a folder", "point it at a folder, or move "
                    "the file away")
        elif not os.access(path, os.W_OK | os.X_OK):
            ctx.add(where, f"{path} is not writable by this user (uid {os.getuid()})",
                    "give the agent's user write access (systemd: StateDirectory=, "
                    "CacheDirectory=)")
        return
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        ctx.add(where, f"{path} cannot be created: {parent} is a file", "choose another folder")
    elif not os.access(parent, os.W_OK | os.X_OK):
        ctx.add(where, f"{path} does not exist and cannot be created: {parent} is not writable "
                f"by this user (uid {os.getuid()})", "create it for the agent's user (systemd: "
                "StateDirectory=, CacheDirectory=)")


def startup_checks(cfg: Config, ctx: Context) -> None:
    """Record as errors in `ctx` everything that would stop `run` at start (writes nothing)."""
    _check_keys(cfg, ctx)
    _check_secrets(cfg, ctx)
    _check_tls(cfg, ctx)
    _check_dir(cfg.agent.state_dir, "agent.state_dir", ctx)
    _check_dir(cfg.agent.cache_dir, "agent.cache_dir", ctx)
