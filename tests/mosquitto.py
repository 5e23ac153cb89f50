"""A real mosquitto broker for tests: free loopback port, temp config, stop and restart on the same port.

Usage (tests/ is on sys.path when pytest runs):

    from mosquitto import Mosquitto

    @pytest.fixture
    def broker():
        with Mosquitto() as b:
            yield b

    broker.port; broker.stop(); broker.start()   # same port again; persistence is off

TLS and passwords (certificates are made here with `cryptography`, all throwaway):

    with Mosquitto(tls=True, users={"agent": "s3cret"}) as b:       # anonymous refused
        b.ca                                   # the CA file (PEM) a client must trust
        cert, key = b.authority.issue("client", client=True, password="kp")  # for mutual TLS
    Mosquitto(tls=True, require_certificate=True)   # clients must show a cert from b.authority
    Mosquitto(tls=True, server_names=("broker.example",))   # a cert that does not name 127.0.0.1

`port` is then the TLS listener; there is no plain one. `users` needs `mosquitto_passwd`
(`MissingTool` if it is not installed, so a test can skip and say why).
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Iterable, Mapping

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# One definition of "a free loopback port that is not a real broker's": the demo's.
from agent.demo.parts import HOST, RESERVED_PORTS, free_port

log = logging.getLogger(__name__)

class MissingTool(FileNotFoundError):
    """A binary the requested broker set-up needs is not installed (tests skip on it)."""


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san(names: Iterable[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for n in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            entries.append(x509.DNSName(n))
    return x509.SubjectAlternativeName(entries)


class CertAuthority:
    """A throwaway CA (EC P-256) that writes PEM files into `folder` and issues certificates."""

    def __init__(self, folder: Path, name: str = "stm32ota test CA") -> None:
        self.folder = Path(folder)
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._name = _name(name)
        now = datetime.datetime.now(datetime.timezone.utc)
        self._ski = x509.SubjectKeyIdentifier.from_public_key(self._key.public_key())
        self._cert = (
            x509.CertificateBuilder().subject_name(self._name).issuer_name(self._name)
            .public_key(self._key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False), critical=True)
            .add_extension(self._ski, critical=False)
            .sign(self._key, hashes.SHA256())
        )
        stem = "".join(c if c.isalnum() else "-" for c in name)
        self.cert = self.folder / f"{stem}.pem"
        self.cert.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, stem: str, *, names: Iterable[str] = (), client: bool = False,
              password: str | None = None) -> tuple[Path, Path]:
        """Write STEM.crt and STEM.key (encrypted with `password` if given) and return their
        paths: a server certificate for `names` (IP or DNS), or a client certificate."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = (
            x509.CertificateBuilder().subject_name(_name(stem)).issuer_name(self._name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(self._ski),
                           critical=False)
        )
        names = list(names)
        if names:
            builder = builder.add_extension(_san(names), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        crt_path, key_path = self.folder / f"{stem}.crt", self.folder / f"{stem}.key"
        crt_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        enc: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(password.encode()) if password is not None
            else serialization.NoEncryption())
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8, enc))
        key_path.chmod(0o600)
        return crt_path, key_path


def _password_file(path: Path, users: Mapping[str, str]) -> None:
    """Write a mosquitto password file with the broker's own tool (its hash format is its own)."""
    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        raise MissingTool("mosquitto_passwd not found on PATH (Debian package 'mosquitto'); "
                          "cannot make a password file")
    for i, (user, password) in enumerate(users.items()):
        args = [tool, "-b"] + (["-c"] if i == 0 else []) + [str(path), user, password]
        done = subprocess.run(args, capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise RuntimeError(f"mosquitto_passwd failed for {user!r}: {done.stderr or done.stdout}")
    path.chmod(0o600)


def _listening(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.2):
            return True
    except OSError:
        return False


class Mosquitto:
    """One mosquitto process on HOST:port, no persistence, restartable on the same port;
    anonymous and plain by default, or with a TLS listener and/or a password file."""

    def __init__(self, port: int | None = None, *, binary: str = "mosquitto", extra_config: str = "",
                 tls: bool = False, server_names: Iterable[str] = (HOST, "localhost"),
                 require_certificate: bool = False, users: Mapping[str, str] | None = None) -> None:
        path = shutil.which(binary)
        if path is None:
            raise FileNotFoundError(f"{binary} not found on PATH; install the Debian package 'mosquitto'")
        self.binary = path
        self.host = HOST
        self.port = port if port is not None else free_port()
        if self.port in RESERVED_PORTS:
            raise ValueError(f"port {self.port} belongs to the machine's own broker")
        self._dir = tempfile.TemporaryDirectory(prefix="mosquitto-test-")
        self.config = Path(self._dir.name) / "mosquitto.conf"
        self.log_file = Path(self._dir.name) / "mosquitto.log"
        self.authority: CertAuthority | None = None
        self.ca: Path | None = None
        listener = self._tls_config(server_names, require_certificate) if tls else ""
        auth = "allow_anonymous true\n"
        if users is not None:
            _password_file(Path(self._dir.name) / "passwd", users)
            auth = f"allow_anonymous false\npassword_file {Path(self._dir.name) / 'passwd'}\n"
        self.config.write_text(
            f"listener {self.port} {HOST}\n"
            f"{listener}{auth}"
            # as root mosquitto would drop to user 'mosquitto', who cannot read this 0700 directory
            f"user {pwd.getpwuid(os.getuid()).pw_name}\n"
            "persistence false\n"
            f"log_dest file {self.log_file}\n"
            "log_type all\n"
            f"{extra_config}\n"
        )
        self._proc: subprocess.Popen[bytes] | None = None

    def _tls_config(self, server_names: Iterable[str], require_certificate: bool) -> str:
        """Make the CA and the server certificate; the listener lines that use them."""
        names = tuple(server_names)
        if not names:
            raise ValueError("a TLS broker needs at least one server name for its certificate")
        self.authority = CertAuthority(Path(self._dir.name))
        self.ca = self.authority.cert
        cert, key = self.authority.issue("server", names=names)
        return (f"cafile {self.ca}\ncertfile {cert}\nkeyfile {key}\n"
                f"require_certificate {'true' if require_certificate else 'false'}\n")

    @property
    def running(self) -> bool:
        """True while the broker process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        """Start the broker and wait until it accepts connections."""
        if self.running:
            return
        self._proc = subprocess.Popen(
            [self.binary, "-c", str(self.config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                raise RuntimeError(f"mosquitto exited with {self._proc.returncode}: {err}{self.log()}")
            if _listening(self.port):
                log.debug("mosquitto pid %d listening on %s:%d", self._proc.pid, HOST, self.port)
                return
            time.sleep(0.02)
        self.stop()
        raise TimeoutError(f"mosquitto did not listen on port {self.port} within {timeout}s:\n{self.log()}")

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the broker (SIGTERM, then SIGKILL) and wait until the port is closed."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        if proc.stderr:
            proc.stderr.close()
        deadline = time.monotonic() + timeout
        while _listening(self.port) and time.monotonic() < deadline:
            time.sleep(0.02)

    def restart(self) -> None:
        """Stop and start again on the same port (all sessions and retained messages are gone)."""
        self.stop()
        self.start()

    def log(self) -> str:
        """The broker's log so far, for failure messages."""
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def close(self) -> None:
        """Stop the broker and remove its temporary directory."""
        self.stop()
        self._dir.cleanup()

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
