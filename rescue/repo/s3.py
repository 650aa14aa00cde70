"""A repository in an S3-compatible object store: AWS S3, MinIO, Ceph's radosgw, OpenStack
Swift's s3api, Backblaze B2, Wasabi. `rescue capture /dev/sda s3://bucket/prefix`.

Standard library only (http.client, ssl, hmac, hashlib): the rescue ISO needs no boto3.
Requests are signed with AWS Signature Version 4 and address the bucket path-style
(`https://endpoint/bucket/key`) by default, which every self-hosted store understands;
`addressing_style = virtual` in the profile's `s3` section of ~/.aws/config asks for
`https://bucket.endpoint/key` instead.

Keys map one to one: the object of key K is PREFIX/K, so a bucket copied with `aws s3 sync`
or `rclone` is a valid repository where it lands. Every `put` is one PUT, which S3 stores
atomically, with Content-MD5 and the body's SHA-256 signed in x-amz-content-sha256: a body
damaged on the way is refused by the server (BadDigest) and sent again. `put_new` is a PUT
with `If-None-Match: *` where the server supports it (see there for the servers that do not).

Where the settings come from, in the order the AWS CLI and boto3 read them:
- the endpoint: the `endpoint` argument (`--s3-endpoint`), AWS_ENDPOINT_URL_S3,
  AWS_ENDPOINT_URL, the profile's `endpoint_url` (its `s3` section first), else AWS itself
  (https://s3.REGION.amazonaws.com);
- the credentials: AWS_ACCESS_KEY_ID + AWS_SECRET_ACCESS_KEY (+ AWS_SESSION_TOKEN), else the
  profile (AWS_PROFILE, else "default") in the credentials file (AWS_SHARED_CREDENTIALS_FILE,
  else ~/.aws/credentials), else in the config file (AWS_CONFIG_FILE, else ~/.aws/config,
  where it is `[profile NAME]`);
- the region: AWS_REGION, AWS_DEFAULT_REGION, the profile's `region`, else us-east-1 (what
  MinIO, Ceph and Swift answer to unless configured otherwise);
- https: the certificate is verified, against AWS_CA_BUNDLE or the profile's `ca_bundle` when
  set, else the system's CAs.
Credentials appear in no message, log line or repr: `where` is "s3://bucket/prefix at
ENDPOINT", and a refusal names the S3 error code and where the credentials came from.

Connections: a pool of keep-alive connections, one taken per request, so capture and restore
threads upload and download in parallel. Every request has the patience's timeout and goes
through rescue.repo.retry.attempt: refused, dropped or timed-out connections, 5xx, 429,
SlowDown, a damaged upload and a clock the server finds skewed (then requests are signed with
the server's time from its Date header) are retried; anything else ends at once with one line.
"""

from __future__ import annotations

import base64
import calendar
import configparser
import datetime
import email.utils
import hashlib
import hmac
import http.client
import logging
import os
import re
import select
import ssl
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit

from rescue.errors import UsageError
from rescue.repo import retry
from rescue.repo.storage import FOLDER, OBJECT, Entry, ObjectMissing, ObjectProblem, StorageUnavailable, check_key

log = logging.getLogger("rescue.repo")

DEFAULT_REGION = "us-east-1"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
SMALL_BODY = 1 << 20  # an error answer or a listing page larger than this is not read
MAX_IDLE = 32  # keep-alive connections kept for reuse
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "InternalError",
        "ServiceUnavailable",
        "RequestTimeout",
        "BadDigest",  # the body was damaged on the way: send it again
        "XAmzContentSHA256Mismatch",
        "IncompleteBody",
        "ConditionalRequestConflict",  # AWS: another conditional write to the key is under way
    }
)
BUCKET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class Credentials:
    """An access key, its secret, an optional session token, and where they were found (for
    messages). The repr shows only where they came from."""

    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)
    source: str = "the environment"


@dataclass(frozen=True)
class Endpoint:
    scheme: str  # "http" or "https"
    host: str
    port: int

    def __str__(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}" + ("" if self.port == default else f":{self.port}")

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        """http(s)://host[:port][/]; UsageError for anything else."""
        try:
            parts = urlsplit(url.strip())
            port = parts.port
        except ValueError as e:
            raise UsageError(f"{url!r} is not an S3 endpoint: {e}") from None
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
            raise UsageError(f"{_shown_url(url)} is not an S3 endpoint (http://host:port or https://host)")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise UsageError(f"{_shown_url(url)}: an S3 endpoint is a server, without a path")
        return cls(scheme, parts.hostname, port or (443 if scheme == "https" else 80))


def _shown_url(url: str) -> str:
    """A URL without any user:password part."""
    return re.sub(r"//[^/@]*@", "//", url)


# ---------------------------------------------------------------------------- Signature V4


def _uri_encode(text: str, *, slash: bool) -> str:
    """S3's URI encoding: everything but A-Z a-z 0-9 - _ . ~ (and '/' in a path) %-encoded."""
    return quote(text, safe="-_.~/" if slash else "-_.~")


def canonical_query(query: Sequence[tuple[str, str]]) -> str:
    return "&".join(
        f"{k}={v}" for k, v in sorted((_uri_encode(k, slash=False), _uri_encode(v, slash=False)) for k, v in query)
    )


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def sign(
    method: str,
    path: str,
    query: Sequence[tuple[str, str]],
    headers: Mapping[str, str],
    payload_sha256: str,
    credentials: Credentials,
    region: str,
    when: float,
) -> dict[str, str]:
    """`headers` plus x-amz-date, x-amz-content-sha256, the session token if any, and the
    Authorization of AWS Signature Version 4 over all of them. `path` is already encoded (as
    sent); `headers` must hold Host."""
    amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(when))
    out = dict(headers)
    out["x-amz-date"] = amz_date
    out["x-amz-content-sha256"] = payload_sha256
    if credentials.session_token:
        out["x-amz-security-token"] = credentials.session_token
    lowered = sorted((k.lower(), " ".join(str(v).split())) for k, v in out.items())
    signed = ";".join(k for k, _ in lowered)
    canonical = "\n".join(
        [method, path, canonical_query(query), "".join(f"{k}:{v}\n" for k, v in lowered), signed, payload_sha256]
    )
    scope = f"{amz_date[:8]}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = _hmac(("AWS4" + credentials.secret_key).encode(), amz_date[:8])
    for part in (region, "s3", "aws4_request"):
        key = _hmac(key, part)
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    out["Authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={credentials.access_key}/{scope}, SignedHeaders={signed}, Signature={signature}"
    )
    return out


# ---------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Settings:
    """What from_url found: where each came from is said in messages, never the values."""

    endpoint: Endpoint
    region: str
    credentials: Credentials
    ca_bundle: str | None
    addressing: str  # "path" or "virtual"


def _read_ini(path: Path) -> configparser.RawConfigParser | None:
    """The parsed file, None when there is none; UsageError naming the file and line (never
    the line itself: it may hold a secret) when it is not an INI file."""
    parser = configparser.RawConfigParser(strict=False)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None
    try:
        parser.read_string(text, source=str(path))
    except configparser.Error as e:
        line = getattr(e, "lineno", None) or next((n for n, _ in getattr(e, "errors", [])), "?")
        raise UsageError(f"{path} is not an AWS configuration file (line {line})") from None
    return parser


def _nested(value: str) -> dict[str, str]:
    """The `key = value` lines of a nested section (`s3 =` then indented lines)."""
    out = {}
    for line in value.splitlines():
        k, sep, v = line.partition("=")
        if sep:
            out[k.strip()] = v.strip()
    return out


def settings(endpoint: str | None, environ: Mapping[str, str]) -> Settings:
    """The endpoint, region, credentials and CA bundle, read as the module docstring says."""
    home = Path(environ.get("HOME") or os.path.expanduser("~"))
    named_profile = environ.get("AWS_PROFILE") or environ.get("AWS_DEFAULT_PROFILE")
    profile = named_profile or "default"
    cred_path = Path(environ.get("AWS_SHARED_CREDENTIALS_FILE") or home / ".aws" / "credentials").expanduser()
    conf_path = Path(environ.get("AWS_CONFIG_FILE") or home / ".aws" / "config").expanduser()
    cred_file, conf_file = _read_ini(cred_path), _read_ini(conf_path)
    in_creds: Mapping[str, str] = {}
    if cred_file is not None and cred_file.has_section(profile):
        in_creds = dict(cred_file.items(profile))
    conf_section = profile if profile == "default" else f"profile {profile}"
    in_conf: Mapping[str, str] = {}
    if conf_file is not None and conf_file.has_section(conf_section):
        in_conf = dict(conf_file.items(conf_section))
    s3_conf = _nested(in_conf.get("s3", ""))

    key, secret = environ.get("AWS_ACCESS_KEY_ID"), environ.get("AWS_SECRET_ACCESS_KEY")
    if key and secret:
        token = environ.get("AWS_SESSION_TOKEN") or environ.get("AWS_SECURITY_TOKEN") or None
        credentials = Credentials(key, secret, token, "the environment (AWS_ACCESS_KEY_ID)")
    elif key or secret:
        have, lack = (
            ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY") if key else ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID")
        )
        raise UsageError(f"{have} is set but {lack} is not: S3 needs both")
    else:
        found = None
        for where, section in ((f"{cred_path} [{profile}]", in_creds), (f"{conf_path} [{conf_section}]", in_conf)):
            k, s = section.get("aws_access_key_id"), section.get("aws_secret_access_key")
            if k and s:
                found = Credentials(k, s, section.get("aws_session_token") or None, where)
                break
            if k or s:
                raise UsageError(f"{where} has only one of aws_access_key_id and aws_secret_access_key")
        if found is None:
            if named_profile and not in_creds and not in_conf:
                raise UsageError(f"the AWS profile {named_profile!r} is in neither {cred_path} nor {conf_path}")
            raise UsageError(
                "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                f"or write them in {cred_path} under [{profile}]"
            )
        credentials = found

    region = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or in_conf.get("region") or DEFAULT_REGION
    url = (
        endpoint
        or environ.get("AWS_ENDPOINT_URL_S3")
        or environ.get("AWS_ENDPOINT_URL")
        or s3_conf.get("endpoint_url")
        or in_conf.get("endpoint_url")
        or f"https://s3.{region}.amazonaws.com"
    )
    ca_bundle = environ.get("AWS_CA_BUNDLE") or in_conf.get("ca_bundle") or None
    if ca_bundle is not None and not Path(ca_bundle).expanduser().is_file():
        raise UsageError(f"the CA bundle {ca_bundle} (AWS_CA_BUNDLE or ca_bundle) is not a file")
    addressing = s3_conf.get("addressing_style", "path")
    if addressing not in ("path", "virtual", "auto"):
        raise UsageError(f"{conf_path}: addressing_style is {addressing!r}, not path or virtual")
    return Settings(
        Endpoint.parse(url),
        region,
        credentials,
        str(Path(ca_bundle).expanduser()) if ca_bundle else None,
        "virtual" if addressing == "virtual" else "path",
    )


# ---------------------------------------------------------------------------- connections


def _dropped(conn: http.client.HTTPConnection) -> bool:
    """Whether an idle keep-alive connection was closed by the server meanwhile (its socket is
    readable: EOF, or bytes nobody asked for). Using it would fail the next request."""
    sock = conn.sock
    if sock is None:
        return False  # not connected yet: http.client connects on the next request
    try:
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True


class _Pool:
    """Idle keep-alive connections to one server; a request takes one (or a new one) and
    gives it back once its answer was read whole."""

    def __init__(self, endpoint: Endpoint, timeout: float, tls: ssl.SSLContext | None, host: str):
        self.endpoint, self.timeout, self.tls, self.host = endpoint, timeout, tls, host
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._closed = False

    def take(self) -> http.client.HTTPConnection:
        with self._lock:
            while self._idle:
                conn = self._idle.pop()
                if not _dropped(conn):
                    return conn
                conn.close()
        if self.tls is not None:
            return http.client.HTTPSConnection(self.host, self.endpoint.port, timeout=self.timeout, context=self.tls)
        return http.client.HTTPConnection(self.host, self.endpoint.port, timeout=self.timeout)

    def give(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < MAX_IDLE:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


@dataclass
class _Answer:
    status: int
    reason: str
    headers: http.client.HTTPMessage
    body: bytes | None  # None: a GET's body longer than its limit, not read
    length: int | None  # Content-Length
    code: str = ""  # the S3 error code of an error answer
    message: str = ""


def _error_of(body: bytes) -> tuple[str, str]:
    """(Code, Message) of an S3 error document; ('', '') for anything else."""
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return "", ""
    code = root.findtext("Code") or ""
    message = " ".join((root.findtext("Message") or "").split())
    return code, message[:200]


def _text(node: ET.Element, tag: str) -> str:
    """The text of the child `tag` in any namespace (AWS uses one, some servers none)."""
    for child in node:
        if child.tag == tag or child.tag.endswith("}" + tag):
            return child.text or ""
    return ""


def _children(node: ET.Element, tag: str) -> list[ET.Element]:
    return [c for c in node if c.tag == tag or c.tag.endswith("}" + tag)]


# ---------------------------------------------------------------------------- the backend


class S3Storage:
    """The objects of a repository under `prefix` in one bucket of an S3-compatible store
    (see the module's docstring). Thread-safe."""

    writable = True

    @property
    def exclusive_create(self) -> bool:
        """False once the server refused a conditional PUT (put_new is HEAD then PUT there)."""
        return self._conditional is not False

    def __init__(
        self,
        endpoint: Endpoint,
        bucket: str,
        prefix: str,
        credentials: Credentials,
        *,
        region: str = DEFAULT_REGION,
        ca_bundle: str | None = None,
        addressing: str = "path",
        patience: retry.Patience = retry.DEFAULT,
        clock: Callable[[], float] = time.time,
    ):
        if not BUCKET_RE.match(bucket):
            raise UsageError(f"{bucket!r} is not an S3 bucket name")
        self.endpoint, self.bucket, self.prefix = endpoint, bucket, prefix.strip("/")
        self.region, self.patience, self.addressing = region, patience, addressing
        self._credentials = credentials
        self.where = f"s3://{bucket}" + (f"/{self.prefix}" if self.prefix else "") + f" at {endpoint}"
        if addressing == "virtual":
            self._host, self._base = f"{bucket}.{endpoint.host}", ""
        else:
            self._host, self._base = endpoint.host, "/" + _uri_encode(bucket, slash=False)
        default_port = 443 if endpoint.scheme == "https" else 80
        self._host_header = self._host if endpoint.port == default_port else f"{self._host}:{endpoint.port}"
        tls = None
        if endpoint.scheme == "https":
            tls = ssl.create_default_context(cafile=ca_bundle) if ca_bundle else ssl.create_default_context()
        self._pool = _Pool(endpoint, patience.timeout, tls, self._host)
        self._clock = clock  # this machine's time (a test gives a wrong one)
        self._clock_offset = 0.0  # server time - our time, learnt from a RequestTimeTooSkewed answer
        self._conditional: bool | None = None  # whether the server does If-None-Match on PUT

    def __repr__(self) -> str:
        return f"S3Storage({self.where!r}, credentials from {self._credentials.source})"

    @classmethod
    def from_url(
        cls,
        url: str,
        endpoint: str | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        patience: retry.Patience = retry.DEFAULT,
    ) -> S3Storage:
        """The storage for s3://bucket[/prefix]; the endpoint, credentials and region from
        `endpoint`, `environ` (os.environ by default) and the AWS files it names. UsageError
        for a malformed URL or missing credentials."""
        scheme, sep, rest = url.partition("://")
        if scheme.lower() != "s3" or not sep:
            raise UsageError(f"{_shown_url(url)} is not an S3 location (s3://bucket/prefix)")
        bucket, _, prefix = rest.partition("/")
        if "@" in bucket:
            raise UsageError("an s3:// location holds no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
        if not BUCKET_RE.match(bucket):
            raise UsageError(f"s3://{bucket}: not a bucket name (s3://bucket/prefix)")
        prefix = prefix.strip("/")
        parts = prefix.split("/") if prefix else []
        if any(p in ("", ".", "..") or not p.isprintable() for p in parts):
            raise UsageError(f"s3://{bucket}/{prefix}: the prefix has an empty, '.' or '..' part")
        found = settings(endpoint, os.environ if environ is None else environ)
        return cls(
            found.endpoint,
            bucket,
            prefix,
            found.credentials,
            region=found.region,
            ca_bundle=found.ca_bundle,
            addressing=found.addressing,
            patience=patience,
        )

    # ------------------------------------------------------------------ the Storage protocol

    def get(self, key: str, limit: int) -> bytes:
        name = self._name(check_key(key))
        what = f"read {key}"

        def once() -> bytes:
            answer = self._send("GET", name, limit=limit)
            if answer.status == 200:
                if answer.body is None:
                    raise ObjectProblem(f"is {answer.length} bytes, more than the {limit} it can be")
                return answer.body
            if answer.status == 404 and answer.code in ("NoSuchKey", ""):
                raise ObjectMissing(key)
            raise self._refusal(answer, what)

        return retry.attempt(self.where, what, once, self.patience)

    def size(self, key: str) -> int | None:
        name = self._name(check_key(key))
        what = f"ask the size of {key}"

        def once() -> int | None:
            answer = self._send("HEAD", name)
            if answer.status == 200 and answer.length is not None:
                return answer.length
            if answer.status == 404:
                return None
            raise self._refusal(answer, what)

        return retry.attempt(self.where, what, once, self.patience)

    def put(self, key: str, data: bytes) -> None:
        name = self._name(check_key(key))
        body = _Body.of(data)
        what = f"write {key}"

        def once() -> None:
            answer = self._send("PUT", name, body=body)
            if answer.status != 200:
                raise self._refusal(answer, what)

        retry.attempt(self.where, what, once, self.patience)

    def put_new(self, key: str, data: bytes) -> bool:
        """Create the object only if it does not exist: a PUT with `If-None-Match: *`, which
        AWS S3 (since 2024), MinIO and Ceph radosgw honour atomically (412 when the object
        exists: False).

        A server that refuses conditional PUTs with 501 NotImplemented (OpenStack Swift's
        s3api, 2.30 at least) gets HEAD, then PUT when the HEAD found nothing (the 501 is
        remembered: later calls send no conditional PUT). There a race remains: writers
        whose HEADs all come before the first of their PUTs all return True, and the last
        PUT to arrive decides the bytes (on Swift, the newest X-Timestamp); the others' bytes
        are gone. What still holds: the object is whole and holds the bytes of one caller that
        returned True, and a put_new after the first PUT has landed returns False and changes
        nothing. Reading the object back narrows the window but cannot close it (a writer may
        read its own bytes just before a later PUT lands); exactly one winner needs a server
        that does conditional PUTs. A server that silently ignores the header cannot be told
        from one that honours it: there the PUT replaces an existing object and says True.

        A conditional PUT whose answer was lost and that is sent again meets its own object
        (412): when the object's ETag is the MD5 of our bytes, the call says True."""
        name = self._name(check_key(key))
        body = _Body.of(data)
        if self._conditional is not False:
            tries = 0
            what = f"create {key}"

            def once() -> bool | None:
                nonlocal tries
                tries += 1
                answer = self._send("PUT", name, body=body, headers={"If-None-Match": "*"})
                if answer.status == 200:
                    self._conditional = True
                    return True
                if answer.status == 412:
                    self._conditional = True
                    if tries > 1:  # perhaps an earlier try of ours created it
                        return self._etag(name) == body.md5.hex()
                    return False
                if answer.status == 501 or answer.code == "NotImplemented":
                    return None
                raise self._refusal(answer, what)

            created = retry.attempt(self.where, what, once, self.patience)
            if created is not None:
                return created
            if self._conditional is None:
                log.info("%s: the server refuses conditional PUTs; creating objects with HEAD, then PUT", self.where)
            self._conditional = False
        if self.size(key) is not None:
            return False
        self.put(key, data)
        return True

    def delete(self, key: str) -> None:
        name = self._name(check_key(key))
        what = f"delete {key}"

        def once() -> None:
            answer = self._send("DELETE", name)
            if answer.status in (200, 204) or (answer.status == 404 and answer.code in ("NoSuchKey", "")):
                return
            raise self._refusal(answer, what)

        retry.attempt(self.where, what, once, self.patience)

    def list(self, prefix: str) -> list[Entry]:
        """ListObjectsV2 with delimiter '/', page after page (continuation tokens)."""
        listed = self._name(check_key(prefix)) + "/" if prefix else (self.prefix + "/" if self.prefix else "")
        what = f"list {prefix or 'the repository'}"
        entries: list[Entry] = []
        token: str | None = None
        while True:
            query = [("list-type", "2"), ("delimiter", "/"), ("prefix", listed)]
            if token is not None:
                query.append(("continuation-token", token))

            def once(query: list[tuple[str, str]] = query) -> bytes:
                answer = self._send("GET", None, query=query, limit=16 * SMALL_BODY)
                if answer.status == 200 and answer.body is not None:
                    return answer.body
                if answer.status == 200:
                    raise StorageUnavailable(f"{self.where}: cannot {what}: a listing page of {answer.length} bytes")
                raise self._refusal(answer, what)

            page = retry.attempt(self.where, what, once, self.patience)
            try:
                root = ET.fromstring(page)
            except ET.ParseError:
                raise StorageUnavailable(f"{self.where}: cannot {what}: the answer is not an S3 listing") from None
            for item in _children(root, "Contents"):
                name = _text(item, "Key")[len(listed) :]
                if name and "/" not in name:
                    entries.append(Entry(name, OBJECT, int(_text(item, "Size") or 0)))
            for item in _children(root, "CommonPrefixes"):
                name = _text(item, "Prefix")[len(listed) :].rstrip("/")
                if name and "/" not in name:
                    entries.append(Entry(name, FOLDER))
            token = _text(root, "NextContinuationToken") or None
            if _text(root, "IsTruncated").lower() != "true" or token is None:
                break
        return sorted(entries, key=lambda e: (e.name, e.kind))

    def flush(self) -> None:
        """Nothing: S3 has stored an object durably before it answers the PUT."""

    def free_bytes(self) -> int | None:
        return None

    def close(self) -> None:
        self._pool.close()

    # ------------------------------------------------------------------ beyond the protocol

    def create_bucket(self) -> bool:
        """Create the bucket (for tools and tests that set up a store; a repository never
        creates buckets). True when created, False when it was already ours."""
        what = f"create the bucket {self.bucket}"

        def once() -> bool:
            answer = self._send("PUT", None)
            if answer.status == 200:
                return True
            if answer.status == 409 and answer.code == "BucketAlreadyOwnedByYou":
                return False
            raise self._refusal(answer, what)

        return retry.attempt(self.where, what, once, self.patience)

    # ------------------------------------------------------------------ requests

    def _name(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _path(self, name: str | None) -> str:
        """The request's path, encoded: the bucket's (None), or an object's."""
        if name is None:
            return self._base or "/"
        return f"{self._base}/{_uri_encode(name, slash=True)}"

    def _etag(self, name: str) -> str | None:
        answer = self._send("HEAD", name)
        if answer.status != 200:
            return None
        return (answer.headers.get("ETag") or "").strip('"') or None

    def _send(
        self,
        method: str,
        name: str | None,
        *,
        query: Sequence[tuple[str, str]] = (),
        body: _Body | None = None,
        headers: Mapping[str, str] | None = None,
        limit: int | None = None,
    ) -> _Answer:
        """One signed request and its answer, read whole (a 2xx GET's body only when it has at
        most `limit` bytes). Raises Transient for what may pass: no connection, a timeout, a
        body cut short, a 5xx or 429 answer, the S3 codes of TRANSIENT_CODES."""
        path = self._path(name)
        sent = {"Host": self._host_header, **(headers or {})}
        if body is not None:
            sent.update(body.headers())
        payload = body.sha256 if body is not None else EMPTY_SHA256
        when = self._clock() + self._clock_offset
        signed = sign(method, path, query, sent, payload, self._credentials, self.region, when)
        target = path + ("?" + canonical_query(query) if query else "")
        conn = self._pool.take()
        try:
            conn.request(method, target, body=body.data if body is not None else None, headers=signed)
            response = conn.getresponse()
            status = response.status
            length = _length(response)
            data: bytes | None
            if method == "HEAD":
                data = response.read()
            elif limit is not None and 200 <= status < 300:
                if length is not None and length > limit:
                    data = None  # not read: the connection goes
                else:
                    data = response.read() if length is not None else response.read(limit + 1)
                    if len(data) > limit:
                        length, data = len(data), None
            elif length is not None and length <= SMALL_BODY:
                data = response.read()
            else:  # an unexpected large or endless answer: what says why is at its start
                data = response.read(SMALL_BODY)
        except ssl.SSLCertVerificationError as e:
            conn.close()
            raise StorageUnavailable(
                f"{self.where}: the server's certificate is not trusted ({e.verify_message}); "
                "for a private CA: AWS_CA_BUNDLE=/path/to/ca.pem"
            ) from None
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise retry.Transient(_reason(e, self.patience.timeout)) from None
        if response.will_close or not response.isclosed():
            conn.close()  # the server hangs up, or there are bytes left unread
        else:
            self._pool.give(conn)
        answer = _Answer(status, response.reason, response.headers, data, length)
        if status >= 300:
            answer.code, answer.message = _error_of(data or b"")
        if status in TRANSIENT_STATUS or answer.code in TRANSIENT_CODES:
            raise retry.Transient(f"HTTP {status} {answer.code or answer.reason}".strip())
        if answer.code == "RequestTimeTooSkewed":
            self._learn_clock(answer)
        return answer

    def _learn_clock(self, answer: _Answer) -> None:
        """Sign with the server's time from now on: a rescue machine's clock is often wrong,
        and S3 refuses a signature more than 15 minutes off."""
        said = answer.headers.get("Date")
        try:
            server = email.utils.parsedate_to_datetime(said) if said else None
        except (TypeError, ValueError):
            server = None
        if server is None:
            return
        if server.tzinfo is None:
            server = server.replace(tzinfo=datetime.UTC)
        offset = calendar.timegm(server.utctimetuple()) - self._clock()
        if abs(offset - self._clock_offset) > 60:
            self._clock_offset = offset
            log.warning(
                "%s: this machine's clock is %+.0f s off the server's; signing with the server's", self.where, offset
            )
            raise retry.Transient("the request's time was refused as skewed")

    def _refusal(self, answer: _Answer, what: str) -> StorageUnavailable:
        """The one line for an answer that retrying cannot change."""
        code = answer.code or answer.reason
        said = f"HTTP {answer.status} {code}".strip()
        if answer.message:
            said += f" ({self._scrub(answer.message)})"
        if answer.code == "NoSuchBucket":
            said = f"there is no bucket {self.bucket} at {self.endpoint} (HTTP 404 NoSuchBucket)"
        elif answer.status == 403 or answer.code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied"):
            said += f"; the credentials came from {self._credentials.source}"
        return StorageUnavailable(f"{self.where}: cannot {what}: {said}")

    def _scrub(self, text: str) -> str:
        for secret in (self._credentials.secret_key, self._credentials.session_token, self._credentials.access_key):
            if secret:
                text = text.replace(secret, "***")
        return text


@dataclass(frozen=True)
class _Body:
    """The bytes of a PUT and their digests, computed once for all its tries: Content-MD5,
    and the SHA-256 that the signature covers (x-amz-content-sha256), so the server refuses
    a body damaged on the way."""

    data: bytes = field(repr=False)
    md5: bytes
    sha256: str

    @classmethod
    def of(cls, data: bytes) -> _Body:
        return cls(data, hashlib.md5(data, usedforsecurity=False).digest(), hashlib.sha256(data).hexdigest())

    def headers(self) -> dict[str, str]:
        return {
            "Content-Length": str(len(self.data)),
            "Content-MD5": base64.b64encode(self.md5).decode("ascii"),
            "Content-Type": "application/octet-stream",
        }


def _length(response: http.client.HTTPResponse) -> int | None:
    """The answer's Content-Length (also of a HEAD, whose `length` http.client sets to 0)."""
    value = response.getheader("Content-Length")
    if value is None or response.getheader("Transfer-Encoding"):
        return None
    try:
        length = int(value)
    except ValueError:
        return None
    return length if length >= 0 else None


def _reason(e: BaseException, timeout: float) -> str:
    """A failed request in a few words, without secrets."""
    if isinstance(e, TimeoutError):
        return f"no answer within {timeout:.0f} s"
    if isinstance(e, http.client.IncompleteRead):
        return "the answer was cut short"
    if isinstance(e, http.client.RemoteDisconnected):
        return "the server closed the connection"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return type(e).__name__
