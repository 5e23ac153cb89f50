"""Key files and signing: keygen, loading (with permission checks), sign and build manifests."""

from __future__ import annotations

import hashlib
import json
import os
import stat

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from agent.errors import ImageRejected, KeyFileError, UsageError
from agent.ota.keys import (build_manifest, key_id, keygen, load_private_key, load_public_key,
                            parse_public_key, sign_manifest, verify_manifest)
from agent.ota.manifest import parse_manifest


@pytest.fixture
def pair(tmp_path):
    return keygen(tmp_path / "release")


def test_keygen_writes_a_private_0600_key_and_a_one_line_public_key(pair, tmp_path):
    key_path, pub_path = pair
    assert (key_path.name, pub_path.name) == ("release.key", "release.pub")
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    line = pub_path.read_text()
    assert line.count("\n") == 1 and line.startswith("ed25519 ") and line.rstrip().endswith(" release")
    private, public = load_private_key(key_path), load_public_key(pub_path)
    assert key_id(private.public_key()) == key_id(public)


def test_keygen_is_private_even_under_a_permissive_umask(tmp_path):
    old = os.umask(0)
    try:
        key_path, _ = keygen(tmp_path / "k")
    finally:
        os.umask(old)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600


@pytest.mark.parametrize("existing", ["release.key", "release.pub"])
def test_keygen_never_overwrites(tmp_path, existing):
    (tmp_path / existing).write_text("precious")
    with pytest.raises(KeyFileError) as e:
        keygen(tmp_path / "release")
    assert e.value.code == "key_exists" and isinstance(e.value, UsageError)
    assert (tmp_path / existing).read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == [existing]


def test_private_key_readable_by_others_is_refused_with_the_fix(pair):
    key_path, _ = pair
    key_path.chmod(0o644)
    with pytest.raises(KeyFileError) as e:
        load_private_key(key_path)
    assert e.value.code == "key_permissions" and "chmod 600" in str(e.value)


@pytest.mark.parametrize("text", ["", "ed25519", "rsa AAAA", "ed25519 !!!!", "ed25519 AAAA",
                                  "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"])
def test_malformed_public_keys_are_refused(text):
    with pytest.raises(KeyFileError):
        parse_public_key(text)


def test_pem_public_key_is_accepted_too(pair):
    _, pub_path = pair
    public = load_public_key(pub_path)
    pem = public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()
    assert key_id(parse_public_key(pem)) == key_id(public)


def test_missing_or_garbage_key_files_give_bad_key(tmp_path):
    with pytest.raises(KeyFileError):
        load_public_key(tmp_path / "nope.pub")
    junk = tmp_path / "junk.key"
    junk.write_text("not a key")
    junk.chmod(0o600)
    with pytest.raises(KeyFileError) as e:
        load_private_key(junk)
    assert e.value.code == "bad_key"


def test_sign_manifest_replaces_an_old_signature_and_refuses_bad_fields(pair):
    key_path, pub_path = pair
    f = {"product": "p", "version": "1.0.0", "url": "http://h/p.hex", "size": 10,
         "sha256": "0" * 64, "format": "hex",
         "signature": {"key_id": "0" * 16, "ed25519": "A" * 86 + "=="}}
    d = sign_manifest(f, key_path)
    verify_manifest(parse_manifest(d), [load_public_key(pub_path)])
    with pytest.raises(ImageRejected):
        sign_manifest({**f, "url": "file:///etc/passwd"}, key_path)


def test_build_manifest_describes_a_bin_file_and_signs_it(pair, tmp_path):
    key_path, pub_path = pair
    fw = tmp_path / "pump-1.5.0.bin"
    fw.write_bytes(b"\x00\x50\x00\x20" * 300)
    d = build_manifest(fw, key=key_path, product="pump-ctrl", version="1.5.0",
                       url="https://fw.example.com/pump-1.5.0.bin", chip=0x435,
                       title="Pump", release_summary=None)
    m = parse_manifest(json.dumps(d))
    verify_manifest(m, [load_public_key(pub_path)])
    assert (m.size, m.sha256) == (1200, hashlib.sha256(fw.read_bytes()).hexdigest())
    assert (m.format, m.address, m.chip, m.title) == ("bin", 0x08000000, 0x435, "Pump")
    assert "release_summary" not in d


@pytest.mark.parametrize("suffix,fmt", [(".hex", "hex"), (".ihx", "hex"), (".s19", "srec"),
                                        (".SREC", "srec")])
def test_build_manifest_takes_the_format_from_the_extension(pair, tmp_path, suffix, fmt):
    fw = tmp_path / f"fw{suffix}"
    fw.write_text(":00000001FF\n")
    d = build_manifest(fw, key=pair[0], product="p", version="1.0.0", url="http://h/f")
    assert d["format"] == fmt and "address" not in d
    with pytest.raises(UsageError, match="only for .bin"):
        build_manifest(fw, key=pair[0], product="p", version="1.0.0", url="http://h/f",
                       address=0x08000000)


def test_build_manifest_refuses_an_unknown_extension_and_a_missing_file(pair, tmp_path):
    (tmp_path / "fw.elf").write_bytes(b"\x7fELF")
    with pytest.raises(UsageError, match="extension"):
        build_manifest(tmp_path / "fw.elf", key=pair[0], product="p", version="1.0.0", url="http://h/f")
    with pytest.raises(UsageError, match="cannot read"):
        build_manifest(tmp_path / "gone.bin", key=pair[0], product="p", version="1.0.0",
                       url="http://h/f")
