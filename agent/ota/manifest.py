"""Release manifests: the fields, strict parsing and the canonical encoding a signature covers.

Checking a signature needs cryptography, so it lives in `keys.py` (`verify_manifest`); the
version, rollback, expiry and rollout rules are in `checks.py`.

A release manifest is one JSON object announcing one firmware image:

    {"product": "pump-ctrl", "version": "1.5.0", "format": "bin", "address": 134217728,
     "url": "https://fw.example.com/pump-ctrl-1.5.0.bin", "size": 41236,
     "sha256": "<64 lowercase hex>", "chip": 1077, "title": "Pump controller",
     "signature": {"key_id": "<16 hex>", "ed25519": "<base64>"}}

Fields (anything else is rejected as `unknown_field`):

- required: `product` (`[A-Za-z0-9][A-Za-z0-9_.-]*`, at most 64 characters), `version`
  (Semantic Versioning 2.0, e.g. `1.2.0`, `1.2.0-rc.1`), `url` (http or https, no user or
  password in it), `size` (bytes, 1 .. 64 MiB), `sha256` (64 lowercase hex digits), `format`
  (`bin`, `hex` or `srec`).
- `address`: the load address, an integer; required for `bin` and not allowed for `hex`/`srec`
  (those files carry their own addresses).
- optional: `chip` (the STM32 product id from GET_ID, an integer such as 1077 = 0x435),
  `min_version` (the installed version must be at least this), `title`, `release_summary`
  (at most 255 characters, Home Assistant cuts the rest), `release_url` (http/https),
  `expires` (RFC 3339 UTC, exactly `YYYY-MM-DDTHH:MM:SSZ`), `rollout` (an integer percentage
  0..100), `signature`.

Numbers are JSON integers only: no fractions, no exponents, no booleans. That is why `rollout`
is an integer percentage: floats have no single canonical spelling across languages.
Strings may not contain control characters, except a line feed in `release_summary`.

Canonical encoding (what the signature covers):

    1. Take every field of the manifest except `signature`.
    2. Serialise it as JSON with the keys sorted by code point, no whitespace at all (item
       separator `,`, key separator `:`), strings written as literal UTF-8 (no `\\uXXXX`
       escapes; only `"` and `\\` are escaped as `\\"` and `\\\\`, and a line feed as `\\n`),
       integers in plain decimal. In Python:
       `json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")`
    3. Sign those bytes with Ed25519 (RFC 8032, pure, no pre-hash).

`signature.ed25519` is the 64-byte signature in standard base64 with padding (88 characters);
`signature.key_id` is the first 16 hex digits of the SHA-256 of the signer's raw 32-byte public
key. The encoding is recomputed from the parsed values, so the whitespace and key order of the
file as sent do not matter, but every value does.

Every rejection raises `agent.errors.ImageRejected` with a reason `code`.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import difflib
import json
import logging
import re
from datetime import datetime, timezone
from typing import Any, Mapping, Union
from urllib.parse import urlsplit, urlunsplit

from agent.errors import ImageRejected

log = logging.getLogger(__name__)

MAX_MANIFEST_BYTES = 16 * 1024
MAX_IMAGE_SIZE = 64 * 1024 * 1024  # far above any STM32 flash, even as Intel HEX text
FORMATS = ("bin", "hex", "srec")
REQUIRED = ("product", "version", "url", "size", "sha256", "format")
OPTIONAL = ("address", "chip", "min_version", "title", "release_summary", "release_url",
            "expires", "rollout", "signature")
FIELDS = REQUIRED + OPTIONAL

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
SHA256_RE = re.compile(r"[0-9a-f]{64}")
KEY_ID_RE = re.compile(r"[0-9a-f]{16}")
EXPIRES_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
# semver.org 2.0.0: numeric identifiers have no leading zeros
_NUM = r"0|[1-9]\d*"
_PRE_ID = r"(?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*)"
SEMVER_RE = re.compile(
    rf"({_NUM})\.({_NUM})\.({_NUM})"
    rf"(?:-({_PRE_ID}(?:\.{_PRE_ID})*))?"
    r"(?:\+([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?"
)
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_TEXT_LIMITS = {"title": 128, "release_summary": 255}
_MAX_URL = 2048
_MAX_VERSION = 64

Raw = Union[bytes, bytearray, str, Mapping[str, Any]]


@dataclasses.dataclass(frozen=True)
class Signature:
    """Who signed (`key_id`) and the raw 64-byte Ed25519 signature."""

    key_id: str
    value: bytes


@dataclasses.dataclass(frozen=True)
class Manifest:
    """A parsed, well-formed release manifest (not yet known to be trusted)."""

    product: str
    version: str
    url: str
    size: int
    sha256: str
    format: str
    canonical: bytes  # the signed bytes, see the module docstring
    address: int | None = None
    chip: int | None = None
    min_version: str | None = None
    title: str | None = None
    release_summary: str | None = None
    release_url: str | None = None
    expires: str | None = None
    rollout: int | None = None
    signature: Signature | None = None

    @property
    def expires_at(self) -> datetime | None:
        """`expires` as an aware UTC datetime, or None."""
        return parse_expires(self.expires) if self.expires else None

    def to_dict(self) -> dict[str, Any]:
        """The manifest as JSON-ready fields, signature included (round-trips through parse)."""
        out: dict[str, Any] = json.loads(self.canonical)
        if self.signature is not None:
            out["signature"] = {"key_id": self.signature.key_id,
                                "ed25519": base64.b64encode(self.signature.value).decode()}
        return out


# ---------------------------------------------------------------- canonical form


def canonical_bytes(fields: Mapping[str, Any]) -> bytes:
    """The exact bytes a signature covers: all fields but `signature`, canonical JSON, UTF-8."""
    body = {k: v for k, v in fields.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False, allow_nan=False).encode("utf-8")


# ---------------------------------------------------------------- parsing


def parse_manifest(raw: Raw) -> Manifest:
    """Parse and validate a manifest strictly; raise ImageRejected naming what is wrong."""
    fields = _decode(raw) if isinstance(raw, (bytes, bytearray, str)) else raw
    if not isinstance(fields, Mapping):
        raise ImageRejected("a release manifest must be a JSON object {...}", code="bad_json")
    _check_keys(fields)
    values = _validate(fields)
    canonical = canonical_bytes({k: fields[k] for k in fields})
    if len(canonical) > MAX_MANIFEST_BYTES:
        raise ImageRejected(f"manifest is larger than {MAX_MANIFEST_BYTES} bytes", code="too_large")
    return Manifest(canonical=canonical, **values)


def _decode(raw: bytes | bytearray | str) -> Any:
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else bytes(raw)
    if len(data) > MAX_MANIFEST_BYTES:
        raise ImageRejected(f"manifest is {len(data)} bytes; the limit is {MAX_MANIFEST_BYTES}",
                            code="too_large")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ImageRejected(f"manifest is not valid UTF-8 (byte {e.start})", code="bad_json") from None
    try:
        return strict_json(text, "manifest")
    except ImageRejected:
        raise
    except ValueError as e:
        raise ImageRejected(f"manifest is not valid JSON: {e}", code="bad_json") from None


def strict_json(text: str, what: str) -> Any:
    """json.loads that refuses duplicate keys and NaN/Infinity (ImageRejected naming `what`);
    other syntax errors, and nesting too deep to parse, stay ValueError for the caller to word."""

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in pairs:
            if k in out:
                raise ImageRejected(f"key {k!r} appears twice in the {what}", code="duplicate_key")
            out[k] = v
        return out

    def no_constant(name: str) -> Any:
        raise ImageRejected(f"{name} is not allowed in a {what} (numbers must be integers)",
                            code="bad_json")

    try:
        return json.loads(text, object_pairs_hook=no_duplicates, parse_constant=no_constant)
    except RecursionError:  # ~1000 nested brackets exhaust the parser's stack: say so plainly
        raise ValueError(f"the {what} is nested too deeply") from None


def _check_keys(fields: Mapping[str, Any]) -> None:
    for k in fields:
        if k not in FIELDS:
            hint = difflib.get_close_matches(str(k), FIELDS, n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ImageRejected(f"unknown manifest field {str(k)[:40]!r}{extra}", code="unknown_field")
    missing = [k for k in REQUIRED if k not in fields]
    if missing:
        raise ImageRejected(f"manifest lacks required field(s): {', '.join(missing)}",
                            code="missing_field")


def _bad(field: str, why: str) -> ImageRejected:
    return ImageRejected(f"manifest field {field!r}: {why}", code="bad_field")


def _text(fields: Mapping[str, Any], name: str, *, limit: int = 256,
          allow_newline: bool = False) -> str | None:
    v = fields.get(name)
    if v is None and name not in REQUIRED and name in fields:
        raise _bad(name, "null is not allowed; leave the field out instead")
    if v is None:
        return None
    if not isinstance(v, str):
        raise _bad(name, f"must be a string, not {type(v).__name__}")
    if len(v) > limit:
        raise _bad(name, f"longer than {limit} characters")
    bad = _CONTROL_RE.search(v.replace("\n", "") if allow_newline else v)
    if bad:
        raise _bad(name, f"contains control character {bad.group()!r}")
    if any(0xD800 <= ord(c) <= 0xDFFF for c in v):
        raise _bad(name, "contains an unpaired UTF-16 surrogate")
    return v


def _int(fields: Mapping[str, Any], name: str, lo: int, hi: int) -> int | None:
    if name not in fields:
        return None
    v = fields[name]
    # bool is a subclass of int in Python; a manifest saying "size": true is a mistake
    if isinstance(v, bool) or not isinstance(v, int):
        raise _bad(name, f"must be an integer, not {type(v).__name__}")
    if not lo <= v <= hi:
        shown = v if v.bit_length() <= 64 else "a huge number"
        raise _bad(name, f"{shown} is outside {lo}..{hi}")
    return v


def redact_url(url: str) -> str:
    """`url` fit for a log or a message: user, password, query and fragment become `***`.

    The one way a download URL is shown: a URL may carry a token (in its query string, say),
    and job messages are published retained.
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except (ValueError, TypeError, AttributeError):
        return "<unparsable URL>"
    netloc = parts.netloc.rpartition("@")[2]
    if "@" in parts.netloc:
        netloc = "***@" + netloc
    return urlunsplit((parts.scheme, netloc, parts.path, "***" if parts.query else "",
                       "***" if parts.fragment else ""))


def check_url(url: str, field: str = "url") -> str:
    """Refuse anything but a plain http(s) URL with a host and no credentials."""
    if not isinstance(url, str) or not url:
        raise ImageRejected(f"{field} must be a non-empty string", code="bad_url")
    if not url.isascii():  # http.client sends ASCII only; RFC 3986 URLs are ASCII
        raise ImageRejected(f"{field} has characters outside ASCII (an unpaired surrogate, a "
                            "direction mark, ...): percent-encode them, and use the punycode "
                            "form of an international host name", code="bad_url")
    if len(url) > _MAX_URL or _CONTROL_RE.search(url) or " " in url:
        raise ImageRejected(f"{field} is too long or contains spaces/control characters",
                            code="bad_url")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as e:
        raise ImageRejected(f"{field} is not a valid URL: {e}", code="bad_url") from None
    if parts.scheme not in ("http", "https"):
        raise ImageRejected(f"{field} must be http:// or https://, not {parts.scheme or 'none'}",
                            code="bad_url")
    if not parts.hostname:
        raise ImageRejected(f"{field} {redact_url(url)[:80]!r} has no host", code="bad_url")
    if parts.username is not None or parts.password is not None:
        raise ImageRejected(f"{field} must not carry a user name or password; use a token in "
                            "the query string (never shown in logs or messages) or server-side "
                            "access control", code="bad_url")
    return url


def _validate(f: Mapping[str, Any]) -> dict[str, Any]:
    product = _text(f, "product", limit=64)
    if not product or not NAME_RE.fullmatch(product):
        raise _bad("product", "must be 1-64 of [A-Za-z0-9_.-], starting with a letter or digit")
    version = _version_field(f, "version")
    min_version = _version_field(f, "min_version") if "min_version" in f else None
    sha = _text(f, "sha256", limit=64)
    if not sha or not SHA256_RE.fullmatch(sha):
        raise _bad("sha256", "must be 64 lowercase hex digits")
    fmt = _text(f, "format", limit=8)
    if fmt not in FORMATS:
        raise _bad("format", f"must be one of {', '.join(FORMATS)}, not {fmt!r}")
    address = _int(f, "address", 0, 0xFFFFFFFF)
    if fmt == "bin" and address is None:
        raise _bad("address", "is required for a bin image (where it goes in flash)")
    if fmt != "bin" and address is not None:
        raise _bad("address", f"is only for bin images; a {fmt} file carries its own addresses")
    expires = _text(f, "expires", limit=20)
    if expires is not None:
        parse_expires(expires)
    release_url = check_url(f["release_url"], "release_url") if "release_url" in f else None
    return {
        "product": product, "version": version, "min_version": min_version,
        "url": check_url(f["url"], "url"),
        "size": _int(f, "size", 1, MAX_IMAGE_SIZE), "sha256": sha, "format": fmt,
        "address": address, "chip": _int(f, "chip", 0, 0xFFF),
        "title": _text(f, "title", limit=_TEXT_LIMITS["title"]),
        "release_summary": _text(f, "release_summary", limit=_TEXT_LIMITS["release_summary"],
                                 allow_newline=True),
        "release_url": release_url, "expires": expires,
        "rollout": _int(f, "rollout", 0, 100), "signature": _signature_field(f),
    }


def _version_field(f: Mapping[str, Any], name: str) -> str:
    v = _text(f, name, limit=_MAX_VERSION)
    if v is None or not SEMVER_RE.fullmatch(v):
        raise _bad(name, f"{v!r} is not a semantic version like 1.2.0 or 1.2.0-rc.1")
    return v


def parse_expires(s: str) -> datetime:
    """`expires` (RFC 3339 UTC, `YYYY-MM-DDTHH:MM:SSZ`) as an aware datetime; ImageRejected if not."""
    if not EXPIRES_RE.fullmatch(s):
        raise _bad("expires", f"{s!r} must be RFC 3339 UTC like 2030-01-31T12:00:00Z")
    try:
        return datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    except ValueError as e:
        raise _bad("expires", f"{s!r}: {e}") from None


def _signature_field(f: Mapping[str, Any]) -> Signature | None:
    if "signature" not in f:
        return None
    sig = f["signature"]
    if not isinstance(sig, Mapping) or set(sig) != {"key_id", "ed25519"}:
        raise ImageRejected('signature must be {"key_id": "<16 hex>", "ed25519": "<base64>"}',
                            code="bad_signature")
    kid, val = sig["key_id"], sig["ed25519"]
    if not isinstance(kid, str) or not KEY_ID_RE.fullmatch(kid):
        raise ImageRejected("signature.key_id must be 16 lowercase hex digits", code="bad_signature")
    if not isinstance(val, str) or len(val) != 88:
        raise ImageRejected("signature.ed25519 must be 88 characters of base64", code="bad_signature")
    try:
        raw = base64.b64decode(val, validate=True)
    except (binascii.Error, ValueError):
        raise ImageRejected("signature.ed25519 is not valid base64", code="bad_signature") from None
    if len(raw) != 64:
        raise ImageRejected("signature.ed25519 must decode to 64 bytes", code="bad_signature")
    return Signature(kid, raw)
