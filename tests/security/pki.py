"""A throw-away PKI made in the test: a CA, the node's server certificate, client certificates.

Built with ``cryptography`` (no openssl CLI, no files shipped): EC P-256 keys, which
BCP 195 (the default dcmtk TLS profile) accepts.  A second, untrusted CA signs the
"rogue" client, and one client certificate has already expired.
"""
from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Identity:
    """A PEM key and certificate on disk."""

    key: Path
    cert: Path


@dataclass(frozen=True)
class Pki:
    ca: Path
    server: Identity
    client: Identity
    rogue_client: Identity
    expired_client: Identity


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "dicomnode tests"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def _ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def _leaf(directory: Path, name: str, cn: str, ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
          server: bool, expired: bool = False) -> Identity:
    ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    start, end = ((now - dt.timedelta(days=10), now - dt.timedelta(days=1)) if expired
                  else (now - dt.timedelta(days=1), now + dt.timedelta(days=30)))
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca_cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(start).not_valid_after(end)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    identity = Identity(directory / f"{name}.key", directory / f"{name}.pem")
    _write_key(key, identity.key)
    identity.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return identity


def make_pki(directory: Path) -> Pki:
    """Write the test PKI under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = _ca("dicomnode test CA")
    rogue = _ca("somebody else's CA")
    ca_path = directory / "ca.pem"
    ca_path.write_bytes(ca[1].public_bytes(serialization.Encoding.PEM))
    return Pki(
        ca=ca_path,
        server=_leaf(directory, "server", "dicomnode.test", ca, server=True),
        client=_leaf(directory, "client", "MODALITY1", ca, server=False),
        rogue_client=_leaf(directory, "rogue", "MODALITY1", rogue, server=False),
        expired_client=_leaf(directory, "expired", "MODALITY1", ca, server=False, expired=True),
    )
