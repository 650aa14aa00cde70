"""A real S3 server for tests: OpenStack Swift (Debian's swift-proxy, swift-account,
swift-container, swift-object, 2.30 on bookworm) with its s3api middleware and tempauth, as a
single node on 127.0.0.1, from a directory of its own.

What runs, each under `timeout` (servers.bounded), in the foreground with `workers = 0` (one
process each, no forks), logging to the console (-v) into a log file beside its config:
memcached (tempauth keeps its tokens there: "Memcache required"), the account, container and
object servers, and the proxy with the pipeline `... cache s3api tempauth ... proxy-server`.
Rings: one replica, one device `d1` (a directory under the server's directory, on the host's
/tmp: ext4 with user xattrs, which the object server needs; `mount_check = false`), built with
swift's RingBuilder, the class `swift-ring-builder` drives, by the proxy's launcher before it
loads them (the command takes a second per call, nine calls; in the proxy, milliseconds).
The proxy's tempauth user `test:tester` with key `testing` is an S3 access key "test:tester"
and secret "testing" (s3api hands tempauth the access key as ACCOUNT:USER); its account is
created on first use (`account_autocreate`); the bucket `rescue` is created by an S3 PUT.

/etc/swift is not used. The servers take their config file as an argument and `swift_dir`
in it names our directory for the rings, but swift.conf (the hash path prefix and suffix, the
storage policies) is read from /etc/swift/swift.conf, a constant in swift.common.utils. So the
servers are started through a few lines of Python (LAUNCHER) that call
`swift.common.utils.set_swift_dir(OUR_DIR)` (what swift-recon's --swiftdir uses) and reload
the storage policies and constraints from there, then run swift's own `run_wsgi` exactly as
/usr/bin/swift-*-server do. (Importing swift.common.utils still opens /etc/swift/swift.conf
once, if there is one, to read the hash settings; set_swift_dir discards them, and strace
shows no other access. Without the file, nothing changes.)

Process groups: swift's run_wsgi calls setsid() ("daemon hygiene"), so a server leaves the
`timeout` wrapper's process group. `timeout` still ends it: it sends its signals (the lifetime's
SIGTERM, then SIGKILL; the SIGTERM that Process.stop sends it) to its own child first, and with
`workers = 0` that child is the whole server. stop() also sends SIGCONT first, for a proxy a
test left stopped.

Not a mock: s3api is the S3 API of Swift clusters in production. Its differences from AWS that
matter here: a PUT with If-None-Match is refused with 501 NotImplemented ("Conditional object
PUTs are not supported"), and x-amz-content-sha256 is checked against the body."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from rescue.repo import retry
from rescue.repo.s3 import Credentials, Endpoint, S3Storage
from rescue.repo.storage import Storage
from servers.bounded import DEFAULT_LIFETIME, Process, ServerError, free_port, start, tail

HOST = "127.0.0.1"
ACCESS_KEY = "test:tester"
SECRET_KEY = "testing"
REGION = "us-east-1"
BUCKET = "rescue"
PYTHON = "/usr/bin/python3"  # Debian's, which has python3-swift (PATH may find another first)
READY_WITHIN = 60.0  # seconds: four Python servers importing eventlet on a busy machine

LAUNCHER = """
import sys
from swift.common import utils
etc, conf, section, ring_ports = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
utils.set_swift_dir(etc)  # swift.conf from here, not /etc/swift
from swift.common import constraints, storage_policy
storage_policy.reload_storage_policies()
constraints.reload_constraints()
if ring_ports:  # the proxy builds the rings before it loads them: what swift-ring-builder's
    from swift.common.ring import RingBuilder  # create, add and rebalance do, in this process
    for name, port in zip(("account", "container", "object"), ring_ports):
        builder = RingBuilder(6, 1, 1)  # 2**6 partitions, 1 replica, 1 hour between moves
        builder.add_dev({"region": 1, "zone": 1, "ip": "127.0.0.1", "port": int(port), "device": "d1",
                         "weight": 100.0, "meta": ""})
        builder.rebalance()
        builder.save(f"{etc}/{name}.builder")
        builder.get_ring().save(f"{etc}/{name}.ring.gz")
from swift.common.wsgi import run_wsgi
sys.exit(run_wsgi(conf, section, verbose=True))
"""

SWIFT_CONF = """[swift-hash]
swift_hash_path_suffix = rescue-test-suffix
swift_hash_path_prefix = rescue-test-prefix

[storage-policy:0]
name = Policy-0
default = yes

[swift-constraints]
"""

COMMON = """[DEFAULT]
bind_ip = {host}
bind_port = {port}
workers = 0
user = root
swift_dir = {etc}
devices = {srv}
mount_check = false
log_name = {name}
log_level = INFO
"""

BACKEND = (
    COMMON
    + """
[pipeline:main]
pipeline = {name}

[app:{name}]
use = egg:swift#{kind}
"""
)

PROXY = (
    COMMON
    + """
[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats s3api tempauth copy slo dlo \
versioned_writes proxy-logging proxy-server

[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true
node_timeout = 10
conn_timeout = 2

[filter:catch_errors]
use = egg:swift#catch_errors

[filter:gatekeeper]
use = egg:swift#gatekeeper

[filter:healthcheck]
use = egg:swift#healthcheck

[filter:proxy-logging]
use = egg:swift#proxy_logging

[filter:cache]
use = egg:swift#memcache
memcache_servers = {host}:{memcached}

[filter:listing_formats]
use = egg:swift#listing_formats

[filter:s3api]
use = egg:swift#s3api
location = {region}

[filter:tempauth]
use = egg:swift#tempauth
user_test_tester = {secret} .admin

[filter:copy]
use = egg:swift#copy

[filter:slo]
use = egg:swift#slo

[filter:dlo]
use = egg:swift#dlo

[filter:versioned_writes]
use = egg:swift#versioned_writes
"""
)

BACKENDS = (("account-server", "account"), ("container-server", "container"), ("object-server", "object"))


def say(text: str) -> None:
    """What the server is doing, on stderr (shown by pytest -s, or with a failing test)."""
    print(f"== swift: {text}", file=sys.stderr, flush=True)


@dataclass
class SwiftServer:
    """A running single-node Swift with s3api, and how to reach it."""

    root: Path
    host: str
    port: int  # the proxy's: the S3 endpoint
    processes: dict[str, Process]
    bucket: str = BUCKET
    access_key: str = ACCESS_KEY
    secret_key: str = field(default=SECRET_KEY, repr=False)
    region: str = REGION

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def proxy(self) -> Process:
        return self.processes["proxy-server"]

    def environ(self, **more: str) -> dict[str, str]:
        """An environment naming this server, its region and its credentials the AWS way,
        and no AWS files (HOME and the file variables point into the server's directory)."""
        return {
            "HOME": str(self.root / "home"),
            "AWS_SHARED_CREDENTIALS_FILE": str(self.root / "home" / "no-credentials"),
            "AWS_CONFIG_FILE": str(self.root / "home" / "no-config"),
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": self.region,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            **more,
        }

    def storage(
        self,
        prefix: str = "",
        *,
        secret: str | None = None,
        patience: retry.Patience = retry.DEFAULT,
        clock: Callable[[], float] = time.time,
    ) -> S3Storage:
        """An S3Storage on this server's bucket under `prefix` (with another secret, to be
        refused; with a wrong clock, to be corrected)."""
        credentials = Credentials(self.access_key, self.secret_key if secret is None else secret, None, "the test")
        endpoint = Endpoint("http", self.host, self.port)
        return S3Storage(endpoint, self.bucket, prefix, credentials, region=self.region, patience=patience, clock=clock)

    def proxy_pid(self) -> int:
        """The proxy server's own process (the child of its `timeout` wrapper)."""
        wrapper = self.proxy.proc.pid
        children = Path(f"/proc/{wrapper}/task/{wrapper}/children").read_text().split()
        if not children:
            raise ServerError(f"the Swift proxy has exited: {tail(self.proxy.log)}")
        return int(children[0])

    def pause_proxy(self) -> None:
        """SIGSTOP the proxy: connections are still accepted by the kernel, nothing answers."""
        os.kill(self.proxy_pid(), signal.SIGSTOP)

    def resume_proxy(self) -> None:
        os.kill(self.proxy_pid(), signal.SIGCONT)

    @contextlib.contextmanager
    def proxy_paused(self) -> Iterator[None]:
        self.pause_proxy()
        try:
            yield
        finally:
            self.resume_proxy()

    def stop(self) -> None:
        with contextlib.suppress(OSError, ServerError):
            self.resume_proxy()
        for process in reversed(list(self.processes.values())):
            process.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def start_swift(
    *, host: str = HOST, lifetime: float = DEFAULT_LIFETIME, ready_within: float = READY_WITHIN
) -> SwiftServer:
    """Start memcached and Swift's four servers on free ports of `host`, with the S3 bucket
    BUCKET; ServerError (one line with a log's tail) when something does not come up within
    `ready_within` seconds. Stopped by stop(), or by itself after `lifetime` seconds."""
    began = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="rescue-swift-"))
    processes: dict[str, Process] = {}
    server = SwiftServer(root, host, 0, processes)
    try:
        etc, srv = root / "etc", root / "srv"
        for d in (etc, srv / "d1", root / "home", root / "log"):
            d.mkdir(parents=True)
        ports = {name: free_port(host) for name in ("proxy-server", "memcached", *(b for b, _ in BACKENDS))}
        server.port = ports["proxy-server"]
        say(f"starting a single-node Swift with s3api in {root}: proxy on {host}:{server.port}")
        (etc / "swift.conf").write_text(SWIFT_CONF)
        common = {"host": host, "etc": etc, "srv": srv}
        for name, kind in BACKENDS:
            (etc / f"{name}.conf").write_text(BACKEND.format(**common, port=ports[name], name=name, kind=kind))
        (etc / "proxy-server.conf").write_text(
            PROXY.format(
                **common,
                port=ports["proxy-server"],
                name="proxy-server",
                memcached=ports["memcached"],
                region=REGION,
                secret=SECRET_KEY,
            )
        )
        memcached = ["memcached", "-l", host, "-p", str(ports["memcached"]), "-U", "0", "-m", "16", "-u", "nobody"]
        processes["memcached"] = start("memcached", memcached, root / "log" / "memcached.log", lifetime=lifetime)
        say("starting memcached, the account, container and object servers, and the proxy (s3api, tempauth)")
        for name, _ in BACKENDS:
            argv = [PYTHON, "-c", LAUNCHER, str(etc), str(etc / f"{name}.conf"), name]
            processes[name] = start(f"swift {name}", argv, root / "log" / f"{name}.log", lifetime=lifetime)
        ring_ports = [str(ports[b]) for b, _ in BACKENDS]
        argv = [PYTHON, "-c", LAUNCHER, str(etc), str(etc / "proxy-server.conf"), "proxy-server", *ring_ports]
        processes["proxy-server"] = start(
            "swift proxy-server", argv, root / "log" / "proxy-server.log", lifetime=lifetime
        )
        deadline = time.monotonic() + ready_within
        for name, process in processes.items():
            process.ready(host, ports[name], within=max(1.0, deadline - time.monotonic()))
        say(f"creating the bucket {BUCKET} through S3 (as {ACCESS_KEY})")
        patience = retry.Patience(
            timeout=10, give_up=max(1.0, deadline - time.monotonic()), first_pause=0.2, max_pause=1
        )
        storage = server.storage(patience=patience)
        try:
            storage.create_bucket()
        finally:
            storage.close()
        say(f"ready in {time.monotonic() - began:.1f} s: {server.endpoint}, bucket {BUCKET}")
        return server
    except BaseException as e:
        logs = " / ".join(f"{n}: {tail(p.log, 3)}" for n, p in processes.items() if not p.alive())
        server.stop()
        if isinstance(e, Exception) and not isinstance(e, ServerError):
            raise ServerError(f"Swift did not start: {e}" + (f" ({logs})" if logs else "")) from None
        raise


_shared: list[SwiftServer] = []
_shared_lock = threading.Lock()


def shared_server() -> SwiftServer:
    """The session's server, started on first use and stopped when the Python process exits
    (or by its lifetime, when the process is killed)."""
    with _shared_lock:
        if _shared and _shared[0].proxy.alive():
            return _shared[0]
        if _shared:
            _shared.pop().stop()
        server = start_swift()
        atexit.register(server.stop)
        _shared.append(server)
        return server


@contextlib.contextmanager
def storage_backend(root: Path) -> Iterator[tuple[Storage, Storage]]:
    """(reader, writer) over an empty prefix in a bucket on a real Swift s3api server; both
    the same S3Storage. The server is the session's (shared_server); each call gets a fresh
    prefix named after `root` (the test's directory, which the server does not use)."""
    server = shared_server()
    storage = server.storage(f"{root.name[:40]}-{uuid.uuid4().hex[:8]}")
    try:
        yield storage, storage
    finally:
        storage.close()
