"""Throwaway certificate authorities and certificates for 127.0.0.1, for the mutual-TLS tests."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass(frozen=True)
class Authority:
    """A certificate authority: its key signs the certificates it issues."""

    name: x509.Name
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @classmethod
    def new(cls, common_name: str = "dlaas test CA") -> Authority:
        now = datetime.datetime.now(datetime.UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        return cls(name, key, certificate)

    def issue(self, directory: Path, name: str = "dlaas-service", *, expired: bool = False) -> dict[str, Path]:
        """Writes ca.pem (this authority), cert.pem (for 127.0.0.1 and localhost, client and server
        use; `expired`: it stopped being valid an hour ago) and key.pem."""
        now = datetime.datetime.now(datetime.UTC)
        valid = (
            (now - datetime.timedelta(days=2), now - datetime.timedelta(hours=1))
            if expired
            else (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1))
        )
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(valid[0])
            .not_valid_after(valid[1])
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        directory.mkdir(parents=True, exist_ok=True)
        paths = {"ca": directory / "ca.pem", "cert": directory / "cert.pem", "key": directory / "key.pem"}
        paths["ca"].write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))
        paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        paths["key"].write_bytes(_pem_key(key))
        paths["key"].chmod(0o600)
        return paths


def make_ca_and_cert(directory: Path, name: str = "dlaas-service") -> dict[str, Path]:
    """A new authority and one certificate of it: ca.pem, cert.pem and key.pem in `directory`."""
    return Authority.new().issue(directory, name)
