"""Release manifests: strict parsing, canonical encoding, signatures, versions, rollout."""

from __future__ import annotations

import base64
import json
import random
from datetime import datetime, timezone

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.errors import ImageRejected
from agent.ota.checks import check_install, compare_versions, rollout_selected
from agent.ota.keys import key_id, sign_manifest, verify_manifest
from agent.ota.manifest import MAX_MANIFEST_BYTES, canonical_bytes, parse_manifest

SHA = "ab" * 32
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))


def fields(**over):
    base = {"product": "pump-ctrl", "version": "1.5.0", "url": "https://fw.example.com/p.bin",
            "size": 4096, "sha256": SHA, "format": "bin", "address": 0x08000000}
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def signed(**over):
    return sign_manifest(fields(**over), KEY)


def rejected(raw, code):
    with pytest.raises(ImageRejected) as e:
        parse_manifest(raw)
    assert e.value.code == code, str(e.value)
    return str(e.value)


def test_valid_manifest_parses_the_same_from_bytes_str_and_dict():
    d = signed(chip=0x435, title="Pump", rollout=30, expires="2099-01-01T00:00:00Z")
    m = parse_manifest(json.dumps(d).encode())
    assert m == parse_manifest(json.dumps(d)) == parse_manifest(d)
    assert (m.product, m.version, m.size, m.chip, m.rollout) == ("pump-ctrl", "1.5.0", 4096, 0x435, 30)
    assert m.expires_at == datetime(2099, 1, 1, tzinfo=timezone.utc)
    assert parse_manifest(m.to_dict()) == m


def test_canonical_encoding_is_exactly_what_the_docstring_says():
    d = fields(title="Pömpe \"1\"", release_summary="a\nb")
    want = ('{"address":134217728,"format":"bin","product":"pump-ctrl","release_summary":"a\\nb",'
            f'"sha256":"{SHA}","size":4096,"title":"Pömpe \\"1\\"",'
            '"url":"https://fw.example.com/p.bin","version":"1.5.0"}').encode("utf-8")
    assert canonical_bytes(d) == want
    assert parse_manifest(d).canonical == want
    # an independent check: the signature is plain Ed25519 over those bytes
    sig = base64.b64decode(sign_manifest(d, KEY)["signature"]["ed25519"])
    KEY.public_key().verify(sig, want)


def test_key_id_is_sha256_prefix_of_raw_public_key():
    import hashlib
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
    raw = KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    assert key_id(KEY.public_key()) == hashlib.sha256(raw).hexdigest()[:16]
    assert signed()["signature"]["key_id"] == key_id(KEY.public_key())


def test_whitespace_and_key_order_of_the_wire_form_do_not_matter():
    d = signed()
    wire = json.dumps(dict(reversed(list(d.items()))), indent=4)
    verify_manifest(parse_manifest(wire), [KEY.public_key()])


@pytest.mark.parametrize("raw,code", [
    (b"\xff\xfe{}", "bad_json"),
    ("[1, 2]", "bad_json"),
    ("{", "bad_json"),
    ('{"size": NaN}', "bad_json"),
    ('{"size": Infinity}', "bad_json"),
    ('{"size": -Infinity}', "bad_json"),
    ("[" * 5000 + "]" * 5000, "bad_json"),
    ('{"size": 1' + "0" * 5000 + "}", "bad_json"),
    ('{"product": "a", "product": "b"}', "duplicate_key"),
    ("{" + " " * MAX_MANIFEST_BYTES + "}", "too_large"),
])
def test_malformed_json_is_rejected(raw, code):
    rejected(raw, code)


def test_unknown_field_gets_a_did_you_mean_hint():
    assert "did you mean 'sha256'" in rejected(fields(sha265=SHA), "unknown_field")


def test_missing_required_field_is_named():
    assert "sha256" in rejected({k: v for k, v in fields().items() if k != "sha256"}, "missing_field")


@pytest.mark.parametrize("over", [
    {"size": True}, {"size": 1.5}, {"size": "4096"}, {"size": 0}, {"size": -1}, {"size": 10 ** 30},
    {"product": ""}, {"product": "../etc"}, {"product": "a b"}, {"product": ".hidden"},
    {"product": "x" * 65}, {"product": 7},
    {"sha256": SHA.upper()}, {"sha256": SHA[:-1]}, {"sha256": "zz" * 32},
    {"format": "elf"}, {"format": "BIN"},
    {"address": None}, {"format": "hex", "address": 0}, {"address": -4}, {"address": 2 ** 32},
    {"version": "1.2"}, {"version": "01.2.3"}, {"version": "v1.2.3"}, {"version": 1},
    {"min_version": "latest"},
    {"expires": "2030-01-01"}, {"expires": "2030-02-30T00:00:00Z"}, {"expires": "2030-01-01T00:00:00+01:00"},
    {"rollout": 101}, {"rollout": 50.5}, {"rollout": -1},
    {"chip": "0x435"}, {"chip": 0x1000},
    {"title": "a\x1b[31mred"}, {"title": "x" * 129}, {"release_summary": "y" * 256},
    {"release_summary": "bad\ud800"},
])
def test_wrong_types_and_hostile_values_are_bad_fields(over):
    rejected(fields(**over), "bad_field")


def test_explicit_null_for_an_optional_field_is_refused():
    d = fields()
    d["title"] = None
    assert "leave the field out" in rejected(d, "bad_field")


@pytest.mark.parametrize("url", [
    "file:///etc/passwd", "ftp://h/x", "javascript:alert(1)", "http://user:pw@h/x", "http://user@h/x",
    "http:///nohost", "https://h:99999/x", "http://h/a b", "http://h/\nx", "", "//h/x",
    # found by the live fuzz: http.client cannot send these (UnicodeEncodeError, internal_error)
    "http://127.0.0.1/\u202egnp.bin", "http://h/\ud800", "http://bücher.example/x",
])
def test_only_plain_http_urls_are_accepted(url):
    rejected(fields(url=url), "bad_url")
    rejected(fields(release_url=url or "x"), "bad_url")


@pytest.mark.parametrize("sig", [
    "not a dict", {"key_id": "0" * 16}, {"key_id": "0" * 16, "ed25519": "A" * 88, "x": 1},
    {"key_id": "XYZ", "ed25519": "A" * 86 + "=="}, {"key_id": "0" * 16, "ed25519": "A" * 44},
    {"key_id": "0" * 16, "ed25519": "!" * 88},
])
def test_malformed_signature_objects(sig):
    rejected(fields(signature=sig), "bad_signature")


def test_random_corruption_never_escapes_as_anything_but_image_rejected():
    good = json.dumps(signed(title="T", chip=1077)).encode()
    rng = random.Random(1234)
    for _ in range(3000):
        b = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            op = rng.randrange(3)
            i = rng.randrange(len(b))
            if op == 0:
                b[i] = rng.randrange(256)
            elif op == 1:
                del b[i]
            else:
                b.insert(i, rng.choice(b'{}[]",:0123456789eE.-\\ntruefalsenull'))
        try:
            m = parse_manifest(bytes(b))
        except ImageRejected:
            continue
        try:
            verify_manifest(m, [KEY.public_key()])
        except ImageRejected as e:
            assert e.code in {"bad_signature", "untrusted_key", "unsigned"}


# ---------------------------------------------------------------- signatures


def test_signed_manifest_verifies_with_a_list_or_a_map_of_keys():
    m = parse_manifest(signed())
    verify_manifest(m, [OTHER.public_key(), KEY.public_key()])
    verify_manifest(m, {key_id(KEY.public_key()): KEY.public_key()})


@pytest.mark.parametrize("over", [
    {"version": "1.5.1"}, {"url": "https://evil.example.com/p.bin"}, {"size": 4097},
    {"sha256": "cd" * 32}, {"address": 0x08004000}, {"title": "added later"}, {"rollout": 100},
])
def test_any_change_after_signing_breaks_the_signature(over):
    d = signed()
    d.update(over)
    with pytest.raises(ImageRejected) as e:
        verify_manifest(parse_manifest(d), [KEY.public_key()])
    assert e.value.code == "bad_signature"


def test_signature_by_an_untrusted_key_is_refused_with_its_id():
    m = parse_manifest(sign_manifest(fields(), OTHER))
    with pytest.raises(ImageRejected) as e:
        verify_manifest(m, [KEY.public_key()])
    assert e.value.code == "untrusted_key" and key_id(OTHER.public_key()) in str(e.value)


def test_forged_key_id_does_not_help_an_attacker():
    d = sign_manifest(fields(), OTHER)
    d["signature"]["key_id"] = key_id(KEY.public_key())
    with pytest.raises(ImageRejected) as e:
        verify_manifest(parse_manifest(d), [KEY.public_key()])
    assert e.value.code == "bad_signature"


def test_unsigned_is_refused_unless_explicitly_allowed():
    m = parse_manifest(fields())
    with pytest.raises(ImageRejected) as e:
        verify_manifest(m, [KEY.public_key()])
    assert e.value.code == "unsigned"
    verify_manifest(m, [], allow_unsigned=True)


def test_expired_manifest_is_refused_even_when_correctly_signed():
    m = parse_manifest(signed(expires="2030-01-01T00:00:00Z"))
    verify_manifest(m, [KEY.public_key()], now=datetime(2029, 12, 31, 23, 59, tzinfo=timezone.utc))
    late = datetime(2030, 1, 1, tzinfo=timezone.utc)
    for check in (lambda: verify_manifest(m, [KEY.public_key()], now=late),
                  lambda: check_install(m, "1.0.0", now=late)):
        with pytest.raises(ImageRejected) as e:
            check()
        assert e.value.code == "expired"


# ---------------------------------------------------------------- versions and install


SEMVER_ORDER = ["1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta", "1.0.0-beta.2",
                "1.0.0-beta.11", "1.0.0-rc.1", "1.0.0", "1.0.1", "1.9.0", "1.10.0", "2.0.0"]


def test_compare_versions_follows_semver_precedence():
    for i, a in enumerate(SEMVER_ORDER):
        for j, b in enumerate(SEMVER_ORDER):
            assert compare_versions(a, b) == (i > j) - (i < j), (a, b)
    assert compare_versions("1.0.0+build.1", "1.0.0+build.2") == 0
    with pytest.raises(ImageRejected):
        compare_versions("1.0", "1.0.0")


def test_rollback_and_reinstall_are_refused_unless_allowed():
    m = parse_manifest(signed(version="1.5.0"))
    check_install(m, "1.4.9")
    check_install(m, "1.5.0-rc.1")
    check_install(m, None)
    for installed, code in (("1.5.0", "already_installed"), ("1.6.0", "downgrade")):
        with pytest.raises(ImageRejected) as e:
            check_install(m, installed)
        assert e.value.code == code
        check_install(m, installed, allow_downgrade=True)


def test_min_version_requires_an_intermediate_release():
    m = parse_manifest(signed(version="3.0.0", min_version="2.0.0"))
    check_install(m, "2.1.0")
    with pytest.raises(ImageRejected) as e:
        check_install(m, "1.9.0")
    assert e.value.code == "min_version" and "2.0.0" in str(e.value)


# ---------------------------------------------------------------- rollout


TARGETS = [(f"gw-{i // 10}", f"t{i % 10}") for i in range(1000)]


def chosen(percent):
    m = parse_manifest(fields(rollout=percent))
    return {t for t in TARGETS if rollout_selected(m, *t)}


def test_rollout_is_deterministic_and_raising_it_only_adds_targets():
    previous: set = set()
    for pct in (0, 1, 10, 25, 50, 90, 100):
        now = chosen(pct)
        assert now == chosen(pct)
        assert previous <= now
        assert abs(len(now) - pct * 10) <= 60  # roughly the percentage of 1000 targets
        previous = now
    assert chosen(0) == set() and len(chosen(100)) == 1000
    m = parse_manifest(fields())
    assert all(rollout_selected(m, *t) for t in TARGETS[:50])  # no rollout field: everyone
