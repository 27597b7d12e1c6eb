"""Certificates, the ServiceAccount signing key and kubeconfigs for the local cluster.

One CA signs the API server's serving certificate and a client certificate per identity;
the API server trusts that CA for client authentication, so each component authenticates
as itself and RBAC applies to it. Everything is written once into the state directory.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import yaml

from breaker_tooling.localcluster.errors import ClusterError

try:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import NameOID
except ModuleNotFoundError as missing:  # the operator's image installs no developer tooling
    raise ClusterError(
        "local cluster",
        f"needs the developer tooling's dependencies ({missing.name} is not installed): "
        "`pip install -e . -e ./tooling` from a clone (`make deps` does)",
    ) from missing

VALIDITY = dt.timedelta(days=365)


@dataclass(frozen=True)
class Identity:
    """A client of the API server: its file name, user name and groups."""

    name: str
    user: str
    groups: tuple[str, ...] = ()


ADMIN = Identity("admin", "breaker-admin", ("system:masters",))
CONTROLLER_MANAGER = Identity("kube-controller-manager", "system:kube-controller-manager")
SCHEDULER = Identity("kube-scheduler", "system:kube-scheduler")
# kwok plays every kubelet at once: it writes node and pod status for all of them.
KWOK = Identity("kwok", "kwok", ("system:masters",))
# The real node's: its kubelet (the Node authorizer and NodeRestriction apply to it),
# kube-proxy (bound by the built-in system:node-proxier), kube-router (bound at the
# node's start to a ClusterRole that reads pods, namespaces, nodes and policies), and
# the API server's own identity when it calls a kubelet (logs, exec, port-forward).
REAL_NODE = "real-node-0"
KUBELET = Identity("kubelet", f"system:node:{REAL_NODE}", ("system:nodes",))
KUBE_PROXY = Identity("kube-proxy", "system:kube-proxy")
KUBE_ROUTER = Identity("kube-router", "breaker:kube-router")
# kube-state-metrics: lists and watches pods, nodes and Jobs (its ClusterRole is applied at
# the cluster's start), as a cluster's monitoring stack runs it.
KUBE_STATE_METRICS = Identity("kube-state-metrics", "breaker:kube-state-metrics")
# The local Prometheus, scraping the real kubelet's cAdvisor (nodes/metrics only).
PROMETHEUS = Identity("prometheus", "breaker:prometheus")
# Kueue's controller manager: bound to Kueue's own manager ClusterRole (localcluster/kueue.py).
KUEUE = Identity("kueue", "breaker:kueue")
# KubeRay's operator: bound to KubeRay's own operator ClusterRole (localcluster/kuberay.py).
KUBERAY = Identity("kuberay", "breaker:kuberay")
KUBELET_CLIENT = Identity(
    "apiserver-kubelet-client", "kube-apiserver-kubelet-client", ("system:masters",)
)
IDENTITIES = (
    ADMIN,
    CONTROLLER_MANAGER,
    SCHEDULER,
    KWOK,
    KUBELET,
    KUBE_PROXY,
    KUBE_ROUTER,
    KUBELET_CLIENT,
    KUBE_STATE_METRICS,
    PROMETHEUS,
    KUEUE,
    KUBERAY,
)

SERVICE_IP = "10.96.0.1"  # the first address of the service range the API server is given


@dataclass(frozen=True)
class Pki:
    directory: Path

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def serving_cert(self) -> Path:
        return self.directory / "apiserver.crt"

    @property
    def serving_key(self) -> Path:
        return self.directory / "apiserver.key"

    @property
    def sa_key(self) -> Path:
        return self.directory / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.directory / "sa.pub"

    def client_cert(self, identity: Identity) -> Path:
        return self.directory / f"{identity.name}.crt"

    def client_key(self, identity: Identity) -> Path:
        return self.directory / f"{identity.name}.key"

    def ensure(self) -> None:
        """Write whatever is missing; never replace what a running cluster already uses."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if not self.ca_cert.exists():
            ca_key = ec.generate_private_key(ec.SECP256R1())
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "breaker-local-ca")])
            ca = (
                _builder(name, name, ca_key.public_key())
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(_key_usage(cert_sign=True), critical=True)
                .sign(ca_key, hashes.SHA256())
            )
            _write_key(self.ca_key, ca_key)
            self.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        ca_cert = x509.load_pem_x509_certificate(self.ca_cert.read_bytes())
        ca_private = serialization.load_pem_private_key(self.ca_key.read_bytes(), password=None)
        assert isinstance(ca_private, ec.EllipticCurvePrivateKey)

        if not self.serving_cert.exists():
            names: list[x509.GeneralName] = [
                x509.DNSName(dns)
                for dns in (
                    "localhost",
                    "kubernetes",
                    "kubernetes.default",
                    "kubernetes.default.svc",
                    "kubernetes.default.svc.cluster.local",
                )
            ]
            names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ("127.0.0.1", SERVICE_IP)]
            self._issue(
                ca_cert,
                ca_private,
                self.serving_cert,
                self.serving_key,
                x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]),
                usage=x509.oid.ExtendedKeyUsageOID.SERVER_AUTH,
                san=names,
            )
        for identity in IDENTITIES:
            if self.client_cert(identity).exists():
                continue
            attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in identity.groups]
            attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, identity.user))
            self._issue(
                ca_cert,
                ca_private,
                self.client_cert(identity),
                self.client_key(identity),
                x509.Name(attributes),
                usage=x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH,
            )
        if not self.sa_key.exists():
            # ServiceAccount tokens are signed RS256, which every client library verifies.
            sa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            _write_key(self.sa_key, sa)
            self.sa_pub.write_bytes(
                sa.public_key().public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            )

    def issue_loopback_serving(self, cert: Path, key: Path, name: str) -> None:
        """A serving certificate for https://127.0.0.1 only (a webhook the API server calls
        by address), from the cluster CA; kept while it exists."""
        if cert.exists() and key.exists():
            return
        cert.parent.mkdir(parents=True, exist_ok=True)
        ca_cert = x509.load_pem_x509_certificate(self.ca_cert.read_bytes())
        ca_private = serialization.load_pem_private_key(self.ca_key.read_bytes(), password=None)
        assert isinstance(ca_private, ec.EllipticCurvePrivateKey)
        self._issue(
            ca_cert,
            ca_private,
            cert,
            key,
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]),
            usage=x509.oid.ExtendedKeyUsageOID.SERVER_AUTH,
            san=[x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
        )

    @staticmethod
    def _issue(
        ca_cert: x509.Certificate,
        ca_key: ec.EllipticCurvePrivateKey,
        cert_path: Path,
        key_path: Path,
        subject: x509.Name,
        usage: x509.ObjectIdentifier,
        san: list[x509.GeneralName] | None = None,
    ) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            _builder(subject, ca_cert.subject, key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        _write_key(key_path, key)
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def kubeconfig(self, identity: Identity, server: str) -> dict[str, object]:
        """A self-contained kubeconfig (certificates inline) for one identity."""

        def b64(path: Path) -> str:
            return base64.b64encode(path.read_bytes()).decode()

        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "breaker-local",
                    "cluster": {"server": server, "certificate-authority-data": b64(self.ca_cert)},
                }
            ],
            "users": [
                {
                    "name": identity.user,
                    "user": {
                        "client-certificate-data": b64(self.client_cert(identity)),
                        "client-key-data": b64(self.client_key(identity)),
                    },
                }
            ],
            "contexts": [
                {
                    "name": "breaker-local",
                    "context": {"cluster": "breaker-local", "user": identity.user},
                }
            ],
            "current-context": "breaker-local",
        }

    def write_kubeconfig(self, identity: Identity, server: str, path: Path) -> Path:
        path.write_text(yaml.safe_dump(self.kubeconfig(identity, server), sort_keys=False))
        path.chmod(0o600)
        return path


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
    )


def _key_usage(cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,  # EC keys sign; they never encipher
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
