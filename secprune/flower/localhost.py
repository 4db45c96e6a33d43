"""A real Flower deployment on this machine: one ``flower-superlink`` and one ``flower-supernode`` per client,
each a process of its own (started through ``secprune client``), optionally with TLS and SuperNode
authentication. Used by the deployment tests and benchmarks; the commands are the ones README gives.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from secprune.outdir import write_private


def write_connection(home: Path, name: str, conn: dict) -> None:
    """The Flower CLI's ``config.toml`` in FLWR_HOME ``home``: one SuperLink connection ``name``, the default."""
    import tomli_w

    (home / "config.toml").write_text(tomli_w.dumps({"superlink": {"default": name, name: conn}}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_superlinks(home: Path) -> list[int]:
    """PIDs of the local SuperLinks that ``flwr run`` started with ``FLWR_HOME=home`` (Flower 1.41 gives each
    a ``--log-file`` under ``<home>/local-superlink``; Linux ``/proc``)."""
    marker = str(Path(home).resolve() / "local-superlink") + os.sep
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            argv = [a.decode(errors="replace") for a in (proc / "cmdline").read_bytes().split(b"\0")]
        except OSError:
            continue
        if any(a.endswith("flower-superlink") for a in argv[:2]) and any(a.startswith(marker) for a in argv):
            found.append(int(proc.name))
    return found


def stop_local_superlinks(home: Path, *, grace: float = 5.0) -> list[int]:
    """Stop every local SuperLink of ``home`` and its process group (the SuperExec workers it spawned)."""
    pids = local_superlinks(home)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.killpg(pid, sig)  # Flower starts it detached, as the leader of its own group
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in pids):
            time.sleep(0.1)
    return pids


def make_tls(folder: Path) -> dict[str, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1/localhost (PEM files in ``folder``)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "secprune test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False).sign(ca_key, hashes.SHA256()))
    files = {"ca": folder / "ca.pem", "cert": folder / "server.pem", "key": folder / "server-key.pem"}
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return files


def make_node_key(path: Path) -> Path:
    """A SuperNode authentication key (EC P-384, OpenSSH format) and its public key (``path.pub``)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    write_private(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                          serialization.NoEncryption()))
    path.with_suffix(".pub").write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                                      serialization.PublicFormat.OpenSSH))
    return path


@dataclass
class Deployment:
    """SuperLink + SuperNodes on localhost; ``clients[i]`` are the ``secprune client`` flags of node i."""

    folder: Path
    clients: list[list[str]]
    tls: bool = False
    auth: bool = False
    port: int = field(default_factory=free_port)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def env(self) -> dict:
        return dict(os.environ, FLWR_HOME=str(self.folder / "flwr"))

    def _spawn(self, name: str, cmd: list[str]) -> None:
        with open(self.folder / f"{name}.log", "wb") as log:  # the child keeps its own copy of the handle
            self.procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                                start_new_session=True)  # own group: kill takes its children too

    def start(self, *, wait: float = 5.0) -> Deployment:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "flwr").mkdir(exist_ok=True)
        link = ["flower-superlink", "--port", str(self.port)]
        client_tls: list[str] = []
        if self.tls or self.auth:
            self.certs = make_tls(self.folder / "tls")
            link += ["--ssl-certfile", str(self.certs["cert"]), "--ssl-keyfile", str(self.certs["key"]),
                     "--ssl-ca-certfile", str(self.certs["ca"])]
            client_tls = ["--root-certificates", str(self.certs["ca"])]
        else:
            link += ["--insecure"]
        if self.auth:
            link += ["--enable-supernode-auth", "--fleet-api-type", "grpc-rere"]
        self._write_connection()
        self._spawn("superlink", link)
        time.sleep(wait)
        for i, flags in enumerate(self.clients):
            extra = list(client_tls)
            if self.auth:
                key = make_node_key(self.folder / f"node{i}.key")
                subprocess.run(["flwr", "supernode", "register", str(key.with_suffix(".pub")), "dep"], env=self.env,
                               check=True, capture_output=True)
                extra += ["--auth-key", str(key)]
            self._spawn(f"node{i}", [sys.executable, "-m", "secprune", "client", "--superlink", self.address,
                                     "--port", str(free_port()), *flags, *extra])
        return self

    def _write_connection(self) -> None:
        conn: dict = {"address": self.address}
        conn |= {"root-certificates": str(self.certs["ca"])} if (self.tls or self.auth) else {"insecure": True}
        write_connection(self.folder / "flwr", "dep", conn)

    def serve(self, args: list[str], *, timeout: float = 900) -> subprocess.CompletedProcess:
        """``secprune serve --superlink`` against this deployment (its JSON result on stdout)."""
        flags = ["--root-certificates", str(self.certs["ca"])] if (self.tls or self.auth) else []
        return subprocess.run([sys.executable, "-m", "secprune", "serve", "--superlink", self.address, *flags,
                               "--flower-home", str(self.folder / "serve-home"), *args],
                              capture_output=True, text=True, timeout=timeout, env=self.env)

    def kill(self, name: str) -> None:
        proc = self.procs.get(name)
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def stop(self) -> None:
        for name in list(self.procs):
            self.kill(name)
