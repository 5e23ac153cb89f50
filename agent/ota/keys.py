"""Release signing keys: make, load and use ed25519 key pairs; sign, build and verify manifests.

The only module that imports cryptography: the key id, signing and the signature check of a
parsed manifest (`verify_manifest`) all live here.

Files written by `keygen(NAME)`:

- `NAME.key`: the private key as unencrypted PKCS#8 PEM, mode 0600. Keep it off the gateways.
- `NAME.pub`: one line `ed25519 <base64 of the raw 32-byte key> <NAME>`, easy to paste into a
  chat or a config file. `load_public_key` also accepts a PEM "PUBLIC KEY" file.

The key id printed next to a key is the one manifests carry in `signature.key_id`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import stat
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Mapping, Union

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding, NoEncryption, PrivateFormat, PublicFormat, load_pem_private_key, load_pem_public_key)

from agent.errors import ImageRejected, KeyFileError, UsageError
from agent.ota.checks import check_expiry
from agent.ota.manifest import Manifest, canonical_bytes, parse_manifest

log = logging.getLogger(__name__)

PUB_PREFIX = "ed25519"
# file extension -> manifest format; the image module parses these three
FORMAT_BY_SUFFIX = {
    ".bin": "bin",
    ".hex": "hex", ".ihex": "hex", ".ihx": "hex",
    ".srec": "srec", ".s19": "srec", ".s28": "srec", ".s37": "srec", ".mot": "srec",
}
# RM0394 and every other STM32 reference manual: main flash starts at 0x08000000
DEFAULT_BIN_ADDRESS = 0x08000000

PathLike = Union[str, "os.PathLike[str]"]
TrustedKeys = Union[Mapping[str, Ed25519PublicKey], Iterable[Ed25519PublicKey]]


def key_id(public_key: Ed25519PublicKey) -> str:
    """First 16 hex digits of SHA-256 over the raw 32-byte public key."""
    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create `path` atomically with O_EXCL so an existing key is never overwritten."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have narrowed or the fs widened it
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def format_public_key(public_key: Ed25519PublicKey, comment: str = "") -> str:
    """The one-line text form of a public key (`ed25519 <base64> [comment]`)."""
    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    line = f"{PUB_PREFIX} {base64.b64encode(raw).decode()}"
    return f"{line} {comment}".rstrip() + "\n"


def keygen(name: PathLike = "release") -> tuple[Path, Path]:
    """Write a new key pair `NAME.key` (0600) and `NAME.pub`; refuse to overwrite either."""
    base = Path(name)
    key_path, pub_path = Path(f"{base}.key"), Path(f"{base}.pub")
    for p in (key_path, pub_path):
        if p.exists():
            raise KeyFileError(f"{p} already exists; refusing to overwrite a key "
                               "(choose another --out NAME or move the old one away)",
                               code="key_exists")
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    try:
        _write_new(key_path, pem, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{key_path} appeared while writing; refusing to overwrite it",
                           code="key_exists") from None
    try:
        _write_new(pub_path, format_public_key(private.public_key(), base.name).encode(), 0o644)
    except OSError:
        key_path.unlink()  # ours, created a moment ago: do not leave half a pair behind
        raise
    log.info("wrote %s and %s (key id %s)", key_path, pub_path, key_id(private.public_key()))
    return key_path, pub_path


def parse_public_key(text: str, source: str = "public key") -> Ed25519PublicKey:
    """Parse the one-line `ed25519 <base64>` form or a PEM public key."""
    text = text.strip()
    if text.startswith("-----BEGIN"):
        try:
            key = load_pem_public_key(text.encode())
        except ValueError as e:
            raise KeyFileError(f"{source}: not a valid PEM public key ({e})") from None
        if not isinstance(key, Ed25519PublicKey):
            raise KeyFileError(f"{source}: a {type(key).__name__}, but releases use ed25519 keys")
        return key
    parts = text.split()
    if len(parts) < 2 or parts[0] != PUB_PREFIX:
        raise KeyFileError(f"{source}: expected a line 'ed25519 <base64>' as written by "
                           "`stm32ota keygen`")
    try:
        raw = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        raise KeyFileError(f"{source}: the key is not valid base64") from None
    if len(raw) != 32:
        raise KeyFileError(f"{source}: an ed25519 public key is 32 bytes, this is {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def load_public_key(path: PathLike) -> Ed25519PublicKey:
    """Load a `.pub` file written by keygen (or a PEM public key)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise KeyFileError(f"cannot read public key {path}: {e}") from None
    return parse_public_key(text, str(path))


def load_private_key(path: PathLike) -> Ed25519PrivateKey:
    """Load a `.key` file; refuse one that group or others may read (like ssh does)."""
    p = Path(path)
    try:
        mode = p.stat().st_mode
        data = p.read_bytes()
    except OSError as e:
        raise KeyFileError(f"cannot read private key {p}: {e}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(f"private key {p} is accessible by other users (mode "
                           f"{stat.S_IMODE(mode):04o}); run `chmod 600 {p}`", code="key_permissions")
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise KeyFileError(f"{p} is not an unencrypted PEM private key: {e}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{p} holds a {type(key).__name__}, but releases use ed25519 keys")
    return key


def sign_manifest(fields: dict[str, Any], private_key: Ed25519PrivateKey | PathLike) -> dict[str, Any]:
    """Validate `fields` and return them with a fresh `signature` over the canonical encoding."""
    key = private_key if isinstance(private_key, Ed25519PrivateKey) else load_private_key(private_key)
    body = {k: v for k, v in fields.items() if k != "signature"}
    parse_manifest(body)  # refuse to sign something agents would reject anyway
    sig = key.sign(canonical_bytes(body))
    return {**body, "signature": {"key_id": key_id(key.public_key()),
                                  "ed25519": base64.b64encode(sig).decode()}}


def _file_digest(path: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 16), b""):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


def build_manifest(file: PathLike, *, key: Ed25519PrivateKey | PathLike, product: str,
                   version: str, url: str, address: int | None = None, chip: int | None = None,
                   **extra: Any) -> dict[str, Any]:
    """Describe `file` (format from its extension, size, sha256) as a signed manifest dict."""
    path = Path(file)
    fmt = FORMAT_BY_SUFFIX.get(path.suffix.lower())
    if fmt is None:
        raise UsageError(f"{path.name}: cannot tell the image format from the extension; use "
                         f"one of {', '.join(sorted(FORMAT_BY_SUFFIX))}")
    if fmt != "bin" and address is not None:
        raise UsageError(f"--address is only for .bin images; {path.name} carries its own addresses")
    try:
        size, digest = _file_digest(path)
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e}") from None
    fields: dict[str, Any] = {"product": product, "version": version, "url": url,
                              "size": size, "sha256": digest, "format": fmt}
    if fmt == "bin":
        fields["address"] = DEFAULT_BIN_ADDRESS if address is None else address
    if chip is not None:
        fields["chip"] = chip
    fields.update({k: v for k, v in extra.items() if v is not None})
    return sign_manifest(fields, key)


def _keys_by_id(trusted_keys: TrustedKeys) -> dict[str, Ed25519PublicKey]:
    if isinstance(trusted_keys, Mapping):
        return dict(trusted_keys)
    return {key_id(k): k for k in trusted_keys}


def verify_manifest(m: Manifest, trusted_keys: TrustedKeys, *, allow_unsigned: bool = False,
                    now: datetime | None = None) -> None:
    """Check the signature against the trusted keys and the expiry; raise ImageRejected."""
    check_expiry(m, now)
    if m.signature is None:
        if allow_unsigned:
            log.warning("accepting UNSIGNED manifest %s %s (trust.allow_unsigned)",
                        m.product, m.version)
            return
        raise ImageRejected(f"manifest {m.product} {m.version} is not signed; sign it with "
                            "`stm32ota sign` or allow unsigned releases in trust", code="unsigned")
    key = _keys_by_id(trusted_keys).get(m.signature.key_id)
    if key is None:
        raise ImageRejected(f"manifest is signed by key {m.signature.key_id}, which is not in "
                            "the trusted keys; add its .pub file to trust.keys", code="untrusted_key")
    try:
        key.verify(m.signature.value, m.canonical)
    except InvalidSignature:
        raise ImageRejected(f"signature of {m.product} {m.version} does not match its contents "
                            f"(key {m.signature.key_id}); the manifest was altered or signed "
                            "wrongly", code="bad_signature") from None
