"""The keys and certificates of a deployment that lets no outsider in (README, "Across
machines").

Flower's deployment engine, without ``--insecure``, serves its one port over TLS and, with
``--enable-supernode-auth``, admits only SuperNodes whose public keys were registered through
its Control API (``flwr supernode register``); every Fleet request a SuperNode sends is signed
with its private key. Made here with ``cryptography`` (installed with Flower), for one run:

- a certificate authority and the SuperLink's certificate, signed by it, valid for the
  addresses the SuperNodes and the SuperLink's own SuperExec dial (SuperNodes check it
  against the CA, which is all they receive);
- one key pair per organization: EC P-384, the private key in OpenSSH format (what
  ``flower-supernode --auth-supernode-private-key`` reads; ``ssh-keygen -t ecdsa -b 384``
  makes the same), the public key in OpenSSH format (what ``flwr supernode register`` reads).

In a real deployment each organization makes its own key pair on its own machine and sends
only the public key to the SuperLink's operator.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

DAYS = 30  # a run's certificates expire after a month


@dataclass(frozen=True)
class Tls:
    """The files of a TLS SuperLink: the CA certificate (every client gets it), the SuperLink's
    certificate and its private key (the SuperLink's machine only)."""

    ca: Path
    cert: Path
    key: Path


def _private(path: Path, data: bytes) -> Path:
    """Write a secret readable by its owner only (never world-readable, not even briefly;
    an older file of that name is replaced, not rewritten with its old mode)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return path


def existing(out: Path, host: str, organizations: list[str]) -> tuple[Tls, dict] | None:
    """The run's certificates and keys made before for the same host and organizations, so
    that setting a run up again keeps the keys already given out and registered (None: make
    new ones, also when the certificate has a day or less left)."""
    tls = Tls(out / "ca.crt", out / "superlink.crt", out / "superlink.key")
    keys = {o: (out / o, out / f"{o}.pub") for o in organizations}
    files = [tls.ca, tls.cert, tls.key, *(p for pair in keys.values() for p in pair)]
    made_for = out / "host"
    ready = all(f.is_file() for f in [*files, made_for])
    if not ready or made_for.read_text().strip() != host:
        return None
    return (tls, keys) if _days_left(tls.cert) > 1 else None  # an old one is made anew


def _days_left(cert: Path) -> float:
    from cryptography import x509

    end = x509.load_pem_x509_certificate(cert.read_bytes()).not_valid_after_utc
    return (end - datetime.datetime.now(datetime.UTC)).total_seconds() / 86400


def write_tls(out: Path, host: str = "127.0.0.1") -> Tls:
    """A CA and a SuperLink certificate for ``host`` (and the loopback names), in ``out``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    out.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=DAYS)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "collab_lib run CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP384R1())
    names = _alt_names(host)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    (out / "ca.crt").write_bytes(ca.public_bytes(pem))
    (out / "superlink.crt").write_bytes(cert.public_bytes(pem))
    secret = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (out / "host").write_text(host + "\n")
    # the CA's key is not kept: nothing else is ever signed for this run
    return Tls(out / "ca.crt", out / "superlink.crt", _private(out / "superlink.key", secret))


def _alt_names(host: str) -> list:
    """The names the certificate is valid for: ``host`` and the loopback addresses."""
    from cryptography import x509

    out, seen = [], set()
    for name in (host, "localhost", "127.0.0.1", "::1"):
        if name in seen:
            continue
        seen.add(name)
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
    return out


def write_node_key(out: Path, organization: str) -> tuple[Path, Path]:
    """An organization's SuperNode key pair: the private key (its machine only) and the
    public key (for the SuperLink's operator to register)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    out.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    path = _private(out / organization, private)
    (out / f"{organization}.pub").write_bytes(public + b"\n")
    return path, out / f"{organization}.pub"
