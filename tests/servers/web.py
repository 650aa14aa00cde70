"""A static web server (Debian's nginx) for tests: a directory served over http or https on
127.0.0.1, with directory listings (autoindex), optionally basic auth and a rate limit, from a
directory of its own.

Everything nginx keeps is under that directory's nginx/ folder: its configuration, pid and
lock files, the access log, and the five temporary directories nginx creates at start whether
or not it proxies anything (client body, proxy, fastcgi, uwsgi, scgi; compiled in as
/var/lib/nginx/*). nginx runs with `-p nginx/ -c nginx/nginx.conf -e stderr -g 'daemon off;'`:
the error log goes to stderr (nginx.log), before the configuration is read too, and
/etc/nginx, /var/log/nginx, /var/lib/nginx and /run/nginx.pid are never read or written (no
`include` of Debian's modules or mime types either: nothing here needs them).

Debian's nginx package enables nginx.service and starts it on port 80 when it is installed
(unless a policy-rc.d forbids it, as in containers). These servers neither need nor disturb
that one: they listen on a free port of 127.0.0.1 with their own configuration.

Workers run as root (`user root`): the served directory is a test's tmp_path, under a 0700
directory, and files put through rescue.repo.local are created 0600; a real server would run
as www-data over world-readable files.

https: `tls=True` makes a CA and a server certificate for 127.0.0.1 and localhost with openssl
in nginx/pki/; `server.ca` is the CA's certificate, what a client gets through SSL_CERT_FILE.
Basic auth: `user=` and `password=` make an htpasswd file with `openssl passwd -apr1`.

`pause()` and `resume()` SIGSTOP and SIGCONT nginx's processes (master and workers): a server
that stops answering without closing anything, as a hung NAS does."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from rescue.repo import retry
from rescue.repo.http import HttpStorage
from rescue.repo.local import LocalStorage
from rescue.repo.storage import Storage
from servers.bounded import (
    DEFAULT_LIFETIME,
    READY_WITHIN,
    Process,
    ServerError,
    factory,
    free_port,
    ready_or_stopped,
    start,
)

TEMP_PATHS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
REPO = "repo"  # the repository's folder under the document root: <url>/repo


@dataclass(frozen=True)
class Request:
    """One line of the access log."""

    method: str
    uri: str  # as the client sent it, %-encoded
    status: int
    sent: int  # bytes of the body nginx sent (before the client hung up, if it did)
    connection: int  # nginx's serial number of the TCP connection: equal for kept-alive requests


@dataclass
class WebServer:
    """A running nginx and how to reach it."""

    root: Path  # the test's directory: nginx/ (config, logs, temp) and www/ (what is served)
    host: str
    port: int
    scheme: str
    process: Process
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    owns_root: bool = False

    @property
    def state(self) -> Path:
        return self.root / "nginx"

    @property
    def www(self) -> Path:
        """The document root: a file www/a/b is <url>/a/b."""
        return self.root / "www"

    @property
    def ca(self) -> Path:
        """The test CA's certificate (https only): SSL_CERT_FILE for a client."""
        return self.state / "pki" / "ca.pem"

    @property
    def access_log(self) -> Path:
        """One line per finished request: METHOD URI STATUS BODY_BYTES_SENT CONNECTION."""
        return self.state / "access.log"

    @property
    def log(self) -> Path:
        return self.process.log

    def url(self, path: str = REPO, *, credentials: bool = False) -> str:
        """scheme://host:port/path, with user:password@ when asked (and configured)."""
        auth = f"{self.user}:{self.password}@" if credentials and self.user else ""
        return f"{self.scheme}://{auth}{self.host}:{self.port}/{path.lstrip('/')}"

    def storage(
        self, path: str = REPO, *, credentials: bool = True, patience: retry.Patience = retry.DEFAULT
    ) -> HttpStorage:
        return HttpStorage.from_url(self.url(path, credentials=credentials), patience=patience)

    def requests(self) -> list[Request]:
        """The access log so far, one Request per finished request."""
        out = []
        for line in self.access_log.read_text().splitlines():
            method, uri, status, sent, connection = line.split()
            out.append(Request(method, uri, int(status), int(sent), int(connection)))
        return out

    def pids(self) -> list[int]:
        """nginx's master and its workers (the processes this server started)."""
        master = int((self.state / "nginx.pid").read_text())
        pids = [master]
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                # "pid (comm) state ppid ...": comm may hold spaces, so split after its ')'
                if int(stat.read_text().rpartition(")")[2].split()[1]) == master:
                    pids.append(int(stat.parent.name))
        return pids

    def pause(self) -> None:
        for pid in self.pids():
            os.kill(pid, signal.SIGSTOP)

    def resume(self) -> None:
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def stop(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.resume()  # a stopped process would ignore SIGTERM until SIGKILL
        self.process.stop()
        if self.owns_root:
            shutil.rmtree(self.root, ignore_errors=True)


def nginx_conf(
    state: Path,
    www: Path,
    *,
    host: str,
    port: int,
    tls: bool,
    htpasswd: Path | None,
    limit_rate: str | None,
    autoindex: bool,
    keepalive: str,
) -> str:
    temp = "\n".join(f"    {name}_temp_path {state / 'tmp' / name};" for name in TEMP_PATHS)
    server = [
        f"        listen {host}:{port}{' ssl' if tls else ''};",
        "        server_name localhost;",
        f"        root {www};",
        f"        autoindex {'on' if autoindex else 'off'};",
    ]
    if tls:
        server += [f"        ssl_certificate {state / 'pki' / 'server.pem'};"]
        server += [f"        ssl_certificate_key {state / 'pki' / 'server.key'};"]
    if htpasswd:
        server += ['        auth_basic "rescue test";', f"        auth_basic_user_file {htpasswd};"]
    if limit_rate:
        server += [f"        limit_rate {limit_rate};"]
    user = "user root root;\n" if os.geteuid() == 0 else ""
    body = "\n".join(server)
    return f"""{user}worker_processes 2;
pid {state / "nginx.pid"};
lock_file {state / "nginx.lock"};
error_log stderr notice;

events {{
    worker_connections 256;
}}

http {{
    types {{
        text/html html;
        application/json json;
    }}
    default_type application/octet-stream;
    log_format rescue '$request_method $request_uri $status $body_bytes_sent $connection';
    access_log {state / "access.log"} rescue;
{temp}
    sendfile on;
    keepalive_timeout {keepalive};
    server {{
{body}
    }}
}}
"""


def openssl(*args: str, input: bytes | None = None) -> bytes:
    done = subprocess.run(["openssl", *args], input=input, capture_output=True, timeout=60)
    if done.returncode != 0:
        said = done.stderr.decode(errors="replace").strip().splitlines()
        raise ServerError(f"openssl {args[0]} failed: {said[-1] if said else done.returncode}")
    return done.stdout


def make_certificates(pki: Path, host: str) -> None:
    """A CA (ca.pem, ca.key) and a server certificate it signed for `host` and localhost
    (server.pem, server.key), valid two days. P-256 keys: made in milliseconds."""
    pki.mkdir(mode=0o700)
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    ca, ca_key = str(pki / "ca.pem"), str(pki / "ca.key")
    ca_ext = ("-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    openssl("req", "-x509", *ec, *ca_ext, "-keyout", ca_key, "-out", ca, "-days", "2", "-subj", "/CN=rescue test CA")
    csr = str(pki / "server.csr")
    openssl("req", "-new", *ec, "-keyout", str(pki / "server.key"), "-out", csr, "-subj", f"/CN={host}")
    ext = pki / "server.ext"
    ext.write_text(
        f"subjectAltName=IP:{host},DNS:localhost\nbasicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
    )
    signed = ("-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-days", "2", "-extfile", str(ext))
    openssl("x509", "-req", "-in", csr, *signed, "-out", str(pki / "server.pem"))


def start_nginx(
    *,
    root: Path | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
    tls: bool = False,
    user: str | None = None,
    password: str | None = None,
    limit_rate: str | None = None,
    autoindex: bool = True,
    keepalive: str = "65s",
    lifetime: float = DEFAULT_LIFETIME,
    ready_within: float = READY_WITHIN,
) -> WebServer:
    """Start nginx serving `root`/www (made empty, with a repo/ folder) on host:port (a free
    port by default), over https when `tls`, asking for `user`/`password` when given,
    sending at most `limit_rate` per connection (nginx's syntax: "16m" bytes a second) when
    given, closing a kept-alive connection after `keepalive` idle (nginx's syntax: "1s").
    Listings (autoindex) unless `autoindex` is False. `root` defaults to a new directory,
    deleted at stop(). ServerError (one line, with the log's tail) when it does not listen
    within `ready_within` seconds. Stopped by stop(), or by itself after `lifetime` seconds."""
    nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
    if nginx is None:
        raise ServerError("nginx is not installed (config/apt-test.txt: nginx)")
    owns_root = root is None
    root = Path(tempfile.mkdtemp(prefix="rescue-nginx-")) if root is None else root
    state = root / "nginx"
    try:
        state.mkdir(mode=0o700)
        (state / "tmp").mkdir()
        (root / "www" / REPO).mkdir(parents=True)
        port = port or free_port(host)
        if tls:
            make_certificates(state / "pki", host)
        htpasswd = None
        if user is not None:
            hashed = openssl("passwd", "-apr1", "-stdin", input=f"{password or ''}\n".encode()).decode().strip()
            htpasswd = state / "htpasswd"
            htpasswd.write_text(f"{user}:{hashed}\n")
        conf = state / "nginx.conf"
        conf.write_text(
            nginx_conf(
                state,
                root / "www",
                host=host,
                port=port,
                tls=tls,
                htpasswd=htpasswd,
                limit_rate=limit_rate,
                autoindex=autoindex,
                keepalive=keepalive,
            )
        )
        argv = [nginx, "-p", f"{state}/", "-c", str(conf), "-e", "stderr", "-g", "daemon off;"]
        process = start("nginx", argv, state / "nginx.log", lifetime=lifetime)
        server = WebServer(root, host, port, "https" if tls else "http", process, user, password, owns_root=owns_root)
        return ready_or_stopped(server, host, port, within=ready_within)
    except BaseException:
        if owns_root:
            shutil.rmtree(root, ignore_errors=True)
        raise


def servers() -> contextlib.AbstractContextManager[Callable[..., WebServer]]:
    """A factory for a test's fixture: make(**options of start_nginx) starts a server; all are
    stopped when the block ends, whether the test passed or not."""
    return factory(start_nginx)


@contextlib.contextmanager
def storage_backend(root: Path) -> Iterator[tuple[Storage, Storage]]:
    """(reader, writer): reader an HttpStorage over an empty directory served by nginx, writer a
    rescue.repo.local.LocalStorage of that same directory (the way a user fills a web
    server)."""
    server = start_nginx(root=root)
    reader = server.storage()
    try:
        yield reader, LocalStorage(server.www / REPO)
    finally:
        reader.close()
        server.stop()
