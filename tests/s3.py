"""A real S3 server for the tests: Ceph RGW from Debian packages (see ../shared/notes/real-s3.md).

One monitor, one memstore OSD and radosgw (beast frontend) on 127.0.0.1, every file under one
temporary directory, STS enabled. Started once per test session by the `s3_server` fixture and
stopped with kill -9 (its data is throw-away). In CI (CI set) missing packages fail the tests;
elsewhere they skip with the reason.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

PROGRAMS = ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "monmaptool", "ceph")
PACKAGES = "ceph-mon ceph-osd radosgw ceph-common"
RGW_POOLS = (
    ".rgw.root",
    "default.rgw.log",
    "default.rgw.control",
    "default.rgw.meta",
    "default.rgw.buckets.index",
    "default.rgw.buckets.data",
    "default.rgw.buckets.non-ec",
)
REGION = "default"


class S3Unavailable(Exception):
    """The packages are missing; the message says which and how to install them."""


@dataclass
class S3User:
    uid: str
    access_key: str
    secret_key: str = field(repr=False)


@dataclass
class S3Server:
    endpoint: str  # host:port
    root: Path
    admin: S3User
    pids: list[int]

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"

    def radosgw_admin(self, *args: str) -> str:
        return _run(["radosgw-admin", "-c", str(self.root / "ceph.conf"), "-n", "client.admin", *args])

    def create_user(self, uid: str, *, caps: str = "roles=*", secret: str = "") -> S3User:
        """A user; by default it may manage roles, as a connection's user must for STS grants."""
        access = uuid.uuid4().hex[:20].upper()
        secret = secret or uuid.uuid4().hex + uuid.uuid4().hex[:8]
        self.radosgw_admin(
            "user", "create", f"--uid={uid}", f"--display-name={uid}", f"--access-key={access}", f"--secret={secret}"
        )
        if caps:
            self.radosgw_admin("caps", "add", f"--uid={uid}", f"--caps={caps}")
        return S3User(uid, access, secret)

    def grant_roles(self) -> list[str]:
        """Names of the per-grant roles that exist now."""
        try:
            listed = json.loads(self.radosgw_admin("role", "list") or "[]")
        except RuntimeError as exc:
            if "No such file or directory" in str(exc):
                return []  # no role was ever made
            raise
        return sorted(str(role.get("RoleName", "")) for role in listed if "dlaas-grant-" in str(role.get("RoleName")))

    def stop(self) -> None:
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)


def missing_programs() -> list[str]:
    return [program for program in PROGRAMS if shutil.which(program) is None]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run(args: list[str], timeout: float = 60) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:4])} … failed ({done.returncode}): {done.stderr[-2000:]}")
    return done.stdout


def _ceph_conf(root: Path, fsid: str, mon_port: int) -> str:
    return f"""[global]
fsid = {fsid}
mon host = v2:127.0.0.1:{mon_port}
public addr = 127.0.0.1
auth cluster required = none
auth service required = none
auth client required = none
ms mon client mode = crc
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
mon allow pool size one = true
mon allow pool delete = true
osd crush chooseleaf type = 0
paxos propose interval = 0.05
run dir = {root}/run
admin socket = {root}/run/$name.asok
log file = {root}/log/$name.log
pid file = {root}/run/$name.pid
mon data = {root}/mon/$name
osd data = {root}/osd/$name
osd objectstore = memstore
memstore device bytes = {os.environ.get("DLAAS_RGW_MEMSTORE_BYTES", 2147483648)}
osd max object name len = 460
osd max object namespace len = 64
mon warn on pool no redundancy = false

[client.rgw]
rgw frontends = beast endpoint=127.0.0.1:{{rgw_port}}
rgw sts key = {uuid.uuid4().hex[:16]}
rgw s3 auth use sts = true
rgw dns name = 127.0.0.1
rgw thread pool size = 64
rgw data = {root}/rgw
"""


def _pid(root: Path, name: str, timeout: float = 20) -> int:
    path = root / "run" / f"{name}.pid"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return int(path.read_text().strip())
        except (FileNotFoundError, ValueError):
            time.sleep(0.05)
    raise RuntimeError(f"{name} wrote no pid file; see {root}/log")


def start_rgw() -> S3Server:
    missing = missing_programs()
    if missing:
        raise S3Unavailable(
            f"Ceph RGW is not installed (missing {', '.join(missing)}): "
            f"apt-get install -y --no-install-recommends {PACKAGES}"
        )
    root = Path(tempfile.mkdtemp(prefix="dlaas-rgw-"))
    pids: list[int] = []
    try:
        for sub in ("run", "log", "mon", "osd", "rgw"):
            (root / sub).mkdir()
        fsid = str(uuid.uuid4())
        mon_port, rgw_port = _free_port(), _free_port()
        conf = root / "ceph.conf"
        conf.write_text(_ceph_conf(root, fsid, mon_port).replace("{rgw_port}", str(rgw_port)))
        c = ["-c", str(conf)]
        _run(
            [
                "monmaptool",
                "--create",
                "--addv",
                "a",
                f"[v2:127.0.0.1:{mon_port}]",
                "--fsid",
                fsid,
                str(root / "monmap"),
            ]
        )
        _run(["ceph-mon", *c, "--mkfs", "-i", "a", "--monmap", str(root / "monmap")])
        _run(["ceph-mon", *c, "-i", "a"])
        pids.append(_pid(root, "mon.a"))
        osd_uuid = str(uuid.uuid4())
        osd_id = _run(["ceph", *c, "osd", "new", osd_uuid]).strip()
        (root / "osd" / f"osd.{osd_id}").mkdir()
        _run(["ceph-osd", *c, "-i", osd_id, "--mkfs", "--osd-uuid", osd_uuid])
        _run(["ceph-osd", *c, "-i", osd_id])
        pids.append(_pid(root, f"osd.{osd_id}"))
        _run(["ceph", *c, "osd", "crush", "add-bucket", "node0", "host"])
        _run(["ceph", *c, "osd", "crush", "move", "node0", "root=default"])
        _run(["ceph", *c, "osd", "crush", "add", f"osd.{osd_id}", "1.0", "host=node0"])
        for pool in RGW_POOLS:
            _run(["ceph", *c, "osd", "pool", "create", pool, "8"])
            _run(["ceph", *c, "osd", "pool", "application", "enable", pool, "rgw"])
        _run(["radosgw", *c, "-n", "client.rgw"])
        pids.append(_pid(root, "client.rgw"))
        _wait_http(f"http://127.0.0.1:{rgw_port}", root)
        server = S3Server(f"127.0.0.1:{rgw_port}", root, S3User("", "", ""), pids)
        # The platform's user: it may create roles (for per-grant STS roles) and buckets.
        server.admin = server.create_user("dlaas-admin", caps="roles=*;users=*")
        return server
    except BaseException:
        S3Server("", root, S3User("", "", ""), pids).stop()
        raise


def _wait_http(url: str, root: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1).close()  # noqa: S310 - our own http URL
            return
        except urllib.error.HTTPError:
            return  # an S3 error answer: it is serving
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"radosgw did not answer on {url}; see {root}/log")


def s3_server_or_skip() -> Iterator[S3Server]:
    """Body of the session fixture: fails in CI when the packages are missing, skips elsewhere."""
    import pytest

    try:
        server = start_rgw()
    except S3Unavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    try:
        yield server
    finally:
        server.stop()


def session_policy(statements: list[dict[str, object]]) -> str:
    # RGW refuses a policy with spaces.
    return json.dumps({"Version": "2012-10-17", "Statement": statements}, separators=(",", ":"))
