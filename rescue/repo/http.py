"""A repository on any static web server, read-only: `rescue restore https://images.lan/repo
web01 /dev/sda` from nginx, Apache, lighttpd, a NAS's web share or `python3 -m http.server`.

Why read-only: plain HTTP has no portable way to write (WebDAV is rare and differs per server);
a user fills the web server's directory with rescue on a local path, rsync or a share, and
every machine restores from the URL. Standard library only (http.client, ssl, netrc): the ISO
needs no other HTTP library.

Objects are `GET <base>/<key>`; a size is `HEAD`. Listings: a static web server has no
listing API, so `list` reads the directory index page the server generates (nginx
`autoindex on`, Apache mod_autoindex, lighttpd `dir-listing.activate`, Python's http.server)
and takes the links of its `<a>` elements that name one entry of that folder. A server that
gives no index (403 or 404 for the folder, the default of nginx and many NAS boxes) lists as
empty: then images can only be opened by name (images/<name>/manifest.json is read
directly), not browsed.

Connections: one keep-alive connection per thread and server, so restore threads download in
parallel, each over its own socket. Every request has the patience's timeout and goes through
rescue.repo.retry.attempt: refused or dropped connections, timeouts, a body cut short, 5xx and
429 answers are retried; 401 and 403 end at once with one line naming the URL. A body is
never returned unless it arrived whole.

Credentials: `https://user:password@host/repo`, or from ~/.netrc (`machine host login user
password secret`) when the URL names no password. They are sent as HTTP basic auth, only to
the repository's host (never to another host a redirect points at), and appear in no
message: `where` is the URL without the password.

https: the certificate is verified against the system's CAs (ca-certificates). A private CA,
the usual case for a server in a LAN, is trusted with OpenSSL's own environment variable:
`SSL_CERT_FILE=/path/to/ca.pem rescue restore https://...` (that file then replaces the
system bundle; SSL_CERT_DIR names a hashed directory the same way). There is no switch that
turns verification off."""

from __future__ import annotations

import base64
import http.client
import netrc
import socket
import ssl
import threading
import weakref
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import quote, unquote, urljoin, urlsplit

from rescue.errors import UsageError
from rescue.repo import retry
from rescue.repo.storage import (
    FOLDER,
    OBJECT,
    Entry,
    ObjectMissing,
    ObjectProblem,
    ReadsOnly,
    StorageUnavailable,
    check_key,
)

MAX_REDIRECTS = 5
LISTING_LIMIT = 64 << 20  # bytes of one directory index page (a chunks/xx/ folder of ~100 000 chunks)
SMALL_BODY = 64 << 10  # bytes of an error or redirect page read to keep the connection; more: hang up
READ_BLOCK = 1 << 20
USER_AGENT = "rescue"


@dataclass(frozen=True)
class Origin:
    """Where a connection goes: scheme, host, port."""

    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


@dataclass(frozen=True)
class _Answer:
    """A response whose status is known and whose body is still unread, with the URL it came
    from after redirects."""

    response: http.client.HTTPResponse
    conn: http.client.HTTPConnection
    origin: Origin
    path: str

    @property
    def url(self) -> str:
        return f"{self.origin.scheme}://{self.origin}{self.path}"


class _NotAnObject(Exception):
    """The key names a folder: the server redirected KEY to KEY/."""


class _Connections(threading.local):
    def __init__(self) -> None:
        self.generation = -1
        self.by_origin: dict[Origin, http.client.HTTPConnection] = {}


class HttpStorage(ReadsOnly):
    """The objects of a repository under `base` on a web server, read-only (see the module's
    docstring)."""

    exclusive_create = True  # nothing is ever created

    def __init__(
        self,
        origin: Origin,
        path: str,
        *,
        user: str | None = None,
        password: str | None = None,
        patience: retry.Patience = retry.DEFAULT,
    ):
        self.origin = origin
        self.base = path.rstrip("/")  # percent-encoded, '' for the server's top
        self.patience = patience
        self.server = str(origin)
        self.where = f"{origin.scheme}://{quote(user, safe='') + '@' if user else ''}{origin}{self.base}"
        self._auth = None
        if user is not None:
            token = base64.b64encode(f"{user}:{password or ''}".encode()).decode("ascii")
            self._auth = f"Basic {token}"
        # Read once, here: SSL_CERT_FILE / SSL_CERT_DIR through OpenSSL's default paths.
        self._tls = ssl.create_default_context() if origin.scheme == "https" else None
        self._local = _Connections()
        self._lock = threading.Lock()
        self._generation = 0
        # every thread's connections, to close them all; a thread's own go with the thread
        self._all: weakref.WeakSet[http.client.HTTPConnection] = weakref.WeakSet()

    @classmethod
    def from_url(
        cls, url: str, *, patience: retry.Patience = retry.DEFAULT, netrc_file: Path | None = None
    ) -> HttpStorage:
        """The storage for http(s)://[user[:password]@]host[:port]/path; UsageError for
        anything else. Without a password in the URL, ~/.netrc (or `netrc_file`) is asked for
        the host's login and password."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as e:
            raise UsageError(f"{_without_password(url)} is not a web address rescue can read: {e}") from None
        scheme = parts.scheme.lower()
        shown = _without_password(url)
        if scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(f"{shown} is not a web address rescue can read (http://host/path or https://host/path)")
        if parts.query or parts.fragment:
            raise UsageError(f"{shown}: a repository's address has no '?' or '#' part")
        origin = Origin(scheme, parts.hostname, port or (443 if scheme == "https" else 80))
        user = unquote(parts.username) if parts.username is not None else None
        password = unquote(parts.password) if parts.password is not None else None
        if password is None:
            found = _from_netrc(parts.hostname, user, netrc_file)
            if found is not None:
                user, password = found
        # keep what is already %-encoded, encode what is not (spaces, non-ASCII)
        path = quote(parts.path, safe="/%:@!$&'()*+,;=~")
        return cls(origin, path, user=user, password=password, patience=patience)

    # ------------------------------------------------------------------ the Storage protocol

    def get(self, key: str, limit: int) -> bytes:
        path = self._path(check_key(key))

        def once() -> bytes:
            try:
                answer = self._ask("GET", path)
            except _NotAnObject:
                raise ObjectMissing(key) from None
            return self._body(answer, key, limit)

        return retry.attempt(self.server, f"read {key}", once, self.patience)

    def size(self, key: str) -> int | None:
        path = self._path(check_key(key))

        def once() -> int | None:
            try:
                answer = self._ask("HEAD", path)
            except _NotAnObject:
                return None
            status = answer.response.status
            if status in (404, 410):
                self._finish(answer)
                return None
            self._refuse_unless_ok(answer)
            length = _content_length(answer.response)
            self._finish(answer)
            if length is not None:
                return length
            return self._count(path)  # a server that does not say: count the bytes

        return retry.attempt(self.server, f"ask the size of {key}", once, self.patience)

    def list(self, prefix: str) -> list[Entry]:
        """The entries of the folder's index page, sorted by name; objects have size 0 (an
        index page shows sizes rounded, or not at all). [] when the server gives no index
        (403 or 404 for the folder): a caller can then only open objects by name."""
        folder = self._path(check_key(prefix)) + "/" if prefix else self.base + "/"

        def once() -> list[Entry]:
            answer = self._ask("GET", folder)
            if answer.response.status in (403, 404, 410):
                self._finish(answer)
                return []
            page = self._body(answer, prefix or "the repository's index", LISTING_LIMIT)
            content_type = answer.response.getheader("Content-Type", "text/html")
            if "html" not in content_type.lower():
                return []
            charset = answer.response.headers.get_content_charset() or "utf-8"
            return parse_listing(page.decode(charset, errors="replace"), answer.path)

        return retry.attempt(self.server, f"list {prefix or 'the repository'}", once, self.patience)

    def close(self) -> None:
        with self._lock:
            self._generation += 1
            conns = list(self._all)
            self._all.clear()
        for conn in conns:
            conn.close()

    # ------------------------------------------------------------------ requests

    def read_only_why(self) -> str:
        return f"{self.where} is a web server: rescue only reads from it"

    def _path(self, key: str) -> str:
        return f"{self.base}/{quote(key, safe='/')}"

    def _conn(self, origin: Origin) -> http.client.HTTPConnection:
        local = self._local
        with self._lock:
            generation = self._generation
        if local.generation != generation:
            local.generation, local.by_origin = generation, {}
        conn = local.by_origin.get(origin)
        if conn is None:
            timeout = self.patience.timeout
            if origin.scheme == "https":
                tls = self._tls or ssl.create_default_context()  # a redirect from http to https
                conn = http.client.HTTPSConnection(origin.host, origin.port, timeout=timeout, context=tls)
            else:
                conn = http.client.HTTPConnection(origin.host, origin.port, timeout=timeout)
            local.by_origin[origin] = conn
            with self._lock:
                self._all.add(conn)
        return conn

    def _send(
        self, method: str, origin: Origin, path: str
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """One request and its status line and headers. A kept-alive connection the server
        has meanwhile closed (its idle timeout) is reopened once at once, without counting as
        a failure; any other failure is Transient, or StorageUnavailable when retrying cannot
        help (a certificate that is not trusted)."""
        headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
        if self._auth and origin.host.lower() == self.origin.host.lower():
            headers["Authorization"] = self._auth
        conn = self._conn(origin)
        for reused in (conn.sock is not None, False):
            try:
                conn.request(method, path, headers=headers)
                return conn, conn.getresponse()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
                conn.close()
                if reused:
                    continue
                raise self._failure(e, origin) from None
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                raise self._failure(e, origin) from None
        raise AssertionError("unreachable")

    def _ask(self, method: str, path: str) -> _Answer:
        """The answer to METHOD path after following redirects (at most MAX_REDIRECTS, to the
        same scheme or from http to https); _NotAnObject when one adds a '/' to the path (the
        key is a folder). 5xx and 429 are Transient; 401 is StorageUnavailable. Other
        statuses are the caller's to judge."""
        origin = self.origin
        for _ in range(MAX_REDIRECTS + 1):
            conn, response = self._send(method, origin, path)
            answer = _Answer(response, conn, origin, path)
            status = response.status
            if status >= 500 or status == 429:
                self._finish(answer)
                raise retry.Transient(f"HTTP {status} {response.reason}".strip())
            if status == 401:
                self._finish(answer)
                said = (
                    "does not accept the user name and password" if self._auth else "asks for a user name and password"
                )
                raise StorageUnavailable(
                    f"{self._shown(answer)}: the web server {said} (HTTP 401; give them in the address or in ~/.netrc)"
                )
            if status not in (301, 302, 303, 307, 308):
                return answer
            location = response.getheader("Location")
            self._finish(answer)
            if not location:
                raise StorageUnavailable(f"{self._shown(answer)}: HTTP {status} without a Location to go to")
            target = urlsplit(urljoin(answer.url, location))
            scheme = target.scheme.lower()
            if scheme not in ("http", "https") or (origin.scheme == "https" and scheme == "http"):
                raise StorageUnavailable(
                    f"{self._shown(answer)} redirects to a {scheme}:// address; rescue follows redirects only "
                    "to the same scheme or from http to https"
                )
            try:
                port = target.port or (443 if scheme == "https" else 80)
            except ValueError:
                raise StorageUnavailable(f"{self._shown(answer)} redirects to an address with a bad port") from None
            new_path = target.path or "/"
            if target.query:
                new_path += "?" + target.query
            if new_path.endswith("/") and not path.endswith("/"):
                raise _NotAnObject()
            origin, path = Origin(scheme, target.hostname or origin.host, port), new_path
        raise StorageUnavailable(f"{self._shown_path(origin, path)}: more than {MAX_REDIRECTS} redirects")

    def _refuse_unless_ok(self, answer: _Answer) -> None:
        status = answer.response.status
        if status == 200:
            return
        self._finish(answer)
        if status == 403:
            raise StorageUnavailable(f"{self._shown(answer)}: the web server refuses access (HTTP 403 Forbidden)")
        raise StorageUnavailable(
            f"{self._shown(answer)}: the web server answers HTTP {status} {answer.response.reason}"
        )

    def _body(self, answer: _Answer, key: str, limit: int) -> bytes:
        """The whole body of a 200 answer, at most `limit` bytes: ObjectMissing for 404/410,
        ObjectProblem when it is larger (refused from Content-Length before any byte is read),
        Transient when the connection ends before the body does."""
        response = answer.response
        if response.status in (404, 410):
            self._finish(answer)
            raise ObjectMissing(key)
        self._refuse_unless_ok(answer)
        length = _content_length(response)
        if length is not None and length > limit:
            answer.conn.close()  # hang up rather than read what will be thrown away
            raise ObjectProblem(f"is {length} bytes, more than the {limit} it can be")
        try:
            if length is not None:
                data = response.read()  # IncompleteRead when it ends early
                if len(data) != length:
                    raise http.client.IncompleteRead(data, length - len(data))
            else:
                data = response.read(limit + 1)
                if len(data) > limit or response.read():  # the second read finds the end
                    answer.conn.close()
                    raise ObjectProblem(f"is more than the {limit} bytes it can be")
        except (OSError, http.client.HTTPException) as e:
            answer.conn.close()
            raise self._failure(e, answer.origin) from None
        return data

    def _count(self, path: str) -> int | None:
        """The bytes of a GET's body, counted without keeping them (a server whose HEAD gives
        no Content-Length)."""
        try:
            answer = self._ask("GET", path)
        except _NotAnObject:
            return None
        if answer.response.status in (404, 410):
            self._finish(answer)
            return None
        self._refuse_unless_ok(answer)
        total = 0
        try:
            while block := answer.response.read(READ_BLOCK):
                total += len(block)
        except (OSError, http.client.HTTPException) as e:
            answer.conn.close()
            raise self._failure(e, answer.origin) from None
        return total

    def _finish(self, answer: _Answer) -> None:
        """Done with an answer whose body does not matter: read a small one, so the
        connection can be kept, else hang up."""
        response = answer.response
        left = response.length  # what http.client will read: 0 after HEAD, None when chunked or unknown
        if response.will_close or left is None or left > SMALL_BODY:
            answer.conn.close()
            return
        try:
            response.read()
        except (OSError, http.client.HTTPException):
            answer.conn.close()

    def _failure(self, e: BaseException, origin: Origin) -> Exception:
        """What a failed request raises: Transient with a plain reason, or StorageUnavailable
        when retrying cannot help."""
        if isinstance(e, ssl.SSLCertVerificationError):
            return StorageUnavailable(
                f"{origin.scheme}://{origin}: the web server's certificate is not trusted ({e.verify_message}); "
                "for a private CA: SSL_CERT_FILE=/path/to/ca.pem"
            )
        if isinstance(e, ssl.SSLError) and e.reason in ("WRONG_VERSION_NUMBER", "UNSUPPORTED_PROTOCOL"):
            return StorageUnavailable(f"{origin.scheme}://{origin} does not speak https ({e.reason})")
        return retry.Transient(_reason(e, self.patience.timeout))

    def _shown(self, answer: _Answer) -> str:
        return self._shown_path(answer.origin, answer.path)

    def _shown_path(self, origin: Origin, path: str) -> str:
        if origin == self.origin and path.startswith(self.base + "/"):
            return self.where + unquote(path[len(self.base) :])
        return f"{origin.scheme}://{origin}{unquote(path)}"


def _content_length(response: http.client.HTTPResponse) -> int | None:
    value = response.getheader("Content-Length")
    if value is None or response.getheader("Transfer-Encoding"):
        return None
    try:
        length = int(value.split(",")[0].strip())
    except ValueError:
        return None
    return length if length >= 0 else None


def _reason(e: BaseException, timeout: float) -> str:
    """A failure in a few words, without addresses or secrets (the server is named around it)."""
    if isinstance(e, TimeoutError | socket.timeout):
        return f"no answer within {timeout:g} s"
    if isinstance(e, http.client.IncompleteRead):
        got = len(e.partial)
        return (
            f"the connection closed after {got} of {got + e.expected} bytes" if e.expected else "the body was cut short"
        )
    if isinstance(e, http.client.RemoteDisconnected):
        return "the server closed the connection without an answer"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, ConnectionResetError):
        return "connection reset"
    if isinstance(e, socket.gaierror):
        return f"cannot resolve the name ({e.strerror})"
    if isinstance(e, ssl.SSLError):
        return f"TLS error ({e.reason or e})"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror[0].lower() + e.strerror[1:]
    return type(e).__name__


def _without_password(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    netloc, slash, path = rest.partition("/")
    userinfo, at, hostport = netloc.rpartition("@")
    if at:
        netloc = userinfo.partition(":")[0] + "@" + hostport
    return f"{scheme}{sep}{netloc}{slash}{path}"


def _from_netrc(host: str, user: str | None, path: Path | None) -> tuple[str, str] | None:
    """(login, password) for the host in the netrc file (~/.netrc by default), None when there
    is none or it names another login than `user`. A netrc file that cannot be parsed is a
    UsageError naming its line (never its text: it holds passwords)."""
    try:
        rc = netrc.netrc(str(path) if path is not None else None)
    except FileNotFoundError:
        return None
    except netrc.NetrcParseError as e:
        raise UsageError(
            f"{e.filename or path or '~/.netrc'} line {e.lineno} cannot be read: {_netrc_reason(e)}"
        ) from None
    except OSError as e:
        raise UsageError(f"{path or '~/.netrc'} cannot be read: {e.strerror}") from None
    found = rc.authenticators(host)
    if found is None:
        return None
    login, _, password = found
    if user is not None and login and login != user:
        return None
    return (login or user or "", password or "")


def _netrc_reason(e: netrc.NetrcParseError) -> str:
    # the ownership and mode checks say so in plain words; parse errors quote a token (maybe a password)
    return e.msg if "access" in e.msg or "owner" in e.msg else "not a netrc line"


# ---------------------------------------------------------------------------------- listings


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            for name, value in attrs:
                if name == "href" and value:
                    self.hrefs.append(value)


def parse_listing(page: str, folder: str) -> list[Entry]:
    """The entries a directory index page links to, for the folder at URL path `folder` (which
    ends with '/'): each `<a href>` that resolves to one name directly inside the folder,
    percent-decoded; a trailing '/' makes it a folder. Parent, sort ('?C=N;O=D') and other
    links are left out; a name linked twice (Apache's icon and name) counts once. Pure: the
    unit tests feed it the pages of nginx, Apache, lighttpd and Python's http.server."""
    parser = _Links()
    parser.feed(page)
    parser.close()
    base = "http://listing.invalid" + (folder if folder.endswith("/") else folder + "/")
    own = urlsplit(base)
    found: dict[str, Entry] = {}
    for href in parser.hrefs:
        target = urlsplit(urljoin(base, href.strip()))
        if target.query or target.fragment or (target.scheme, target.netloc) != (own.scheme, own.netloc):
            continue
        if not target.path.startswith(own.path):
            continue
        rest = target.path[len(own.path) :]
        is_folder = rest.endswith("/")
        raw = rest[:-1] if is_folder else rest
        if not raw or "/" in raw:
            continue
        name = unquote(raw)
        if not name or "/" in name or name in (".", ".."):
            continue
        found.setdefault(name, Entry(name, FOLDER if is_folder else OBJECT))
    return [found[name] for name in sorted(found)]
