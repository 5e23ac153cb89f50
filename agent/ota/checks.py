"""Whether a well-formed release may be installed: SemVer order, rollback, expiry, rollout.

Pure rules over a parsed `Manifest` (no keys, no I/O); the signature is checked in `keys.py`.
Every refusal raises `agent.errors.ImageRejected` with a reason `code`.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import datetime, timezone

from agent.errors import ImageRejected
from agent.ota.manifest import SEMVER_RE, Manifest

log = logging.getLogger(__name__)


def _version_key(v: str) -> tuple[tuple[int, int, int], tuple[tuple[int, int | str], ...] | None]:
    m = SEMVER_RE.fullmatch(v)
    if not m:
        raise ImageRejected(f"{v!r} is not a semantic version like 1.2.0", code="bad_version")
    core = (int(m.group(1)), int(m.group(2)), int(m.group(3)))
    if m.group(4) is None:
        return core, None
    # semver 11.4: numeric identifiers sort below alphanumeric ones
    pre = tuple((0, int(p)) if p.isdigit() else (1, p) for p in m.group(4).split("."))
    return core, pre


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as `a` is lower, equal or higher than `b` by SemVer precedence."""
    (ca, pa), (cb, pb) = _version_key(a), _version_key(b)
    if ca != cb:
        return -1 if ca < cb else 1
    if pa == pb:
        return 0
    if pa is None or pb is None:  # a pre-release is lower than its release
        return 1 if pa is None else -1
    return -1 if pa < pb else 1  # shorter prefix is lower: tuple order does exactly that


def check_expiry(m: Manifest, now: datetime | None = None) -> None:
    """Refuse a manifest whose `expires` has passed (`now` defaults to the current UTC time)."""
    exp = m.expires_at
    now = now or datetime.now(timezone.utc)
    if exp is not None and now >= exp:
        raise ImageRejected(f"manifest {m.product} {m.version} expired at {m.expires}",
                            code="expired")


def check_install(m: Manifest, installed_version: str | None, *, allow_downgrade: bool = False,
                  now: datetime | None = None) -> None:
    """Refuse expired manifests, rollbacks (<= installed) and unmet `min_version`.

    With `installed_version` None (unknown, e.g. a fresh board) there is nothing to compare,
    so only the expiry is checked.
    """
    check_expiry(m, now)
    if installed_version is None or allow_downgrade:
        return
    order = compare_versions(m.version, installed_version)
    if order == 0:
        raise ImageRejected(f"{m.product} {m.version} is already installed", code="already_installed")
    if order < 0:
        raise ImageRejected(f"{m.product} {m.version} is older than the installed "
                            f"{installed_version}; refusing a rollback (allow it explicitly "
                            "to downgrade)", code="downgrade")
    if m.min_version is not None and compare_versions(installed_version, m.min_version) < 0:
        raise ImageRejected(f"{m.product} {m.version} needs at least {m.min_version} installed, "
                            f"found {installed_version}; install an intermediate release first",
                            code="min_version")


def rollout_selected(manifest: Manifest, agent_id: str, target: str) -> bool:
    """Whether this target is in the manifest's rollout percentage (stable per release)."""
    if manifest.rollout is None or manifest.rollout >= 100:
        return True
    seed = "\0".join((manifest.product, manifest.version, agent_id, target)).encode("utf-8")
    bucket = int.from_bytes(hashlib.sha256(seed).digest()[:8], "big") % 100
    return bucket < manifest.rollout
