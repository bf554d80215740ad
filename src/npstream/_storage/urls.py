"""Object-store URLs and their configuration: which store, which key, which options go where.

A URL names a store root and a key in it: ``s3://bucket/key``, ``gs://bucket/key``,
``az://container/key`` (also ``azure://``, ``abfs[s]://container@account.dfs.core.windows.net/key``)
and ``http(s)://host[:port]/path``. Credentials and endpoints come from each cloud's own
conventions (``AWS_*``, ``GOOGLE_*``, ``AZURE_*`` environment variables, instance roles, which
obstore reads itself) and from ``storage_options``, one flat dict that takes obstore's store keys
(``endpoint``, ``region``, ``access_key_id``, ...) and the environment-style names
(``AWS_ENDPOINT_URL``, ``AWS_ALLOW_HTTP``, ...) alike. obstore wants three separate groups, and
mixing them up is not harmless (obstore 0.12 *panics* when ``allow_http`` arrives as a store
config key through ``from_url``), so :func:`route_options` sorts each key into its group:

* HTTP client keys (``allow_http``, ``timeout``, ``connect_timeout``, ``proxy_url``, ...; with or
  without an ``aws_``/``google_``/``azure_`` prefix) -> ``client_options``;
* retry keys (``max_retries``, ``retry_timeout``, ``init_backoff``, ``max_backoff``,
  ``backoff_base``) -> ``retry_config``;
* everything else -> the store's own config, where obstore rejects what it does not know.

npstream's defaults bound every request and every retry window, so that a dead endpoint or a
server that stops answering ends in an error, not a hang: see :data:`DEFAULT_CLIENT` and
:data:`DEFAULT_RETRY` (README, "Object stores", for the resulting time bounds).
"""

from __future__ import annotations

import datetime
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from .._errors import UsageError

__all__ = [
    "DEFAULT_CLIENT",
    "DEFAULT_RETRY",
    "Location",
    "RoutedOptions",
    "is_url",
    "parse_duration",
    "parse_url",
    "redact",
    "route_options",
]

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_SCHEMES = {
    "s3": "s3",
    "s3a": "s3",
    "gs": "gs",
    "gcs": "gs",
    "az": "az",
    "azure": "az",
    "abfs": "az",
    "abfss": "az",
    "http": "http",
    "https": "http",
}
_STORE_NAMES = {"s3": "S3", "gs": "Google Cloud Storage", "az": "Azure Blob Storage", "http": "HTTP"}

# obstore's ClientConfig keys (obstore/_store/_client.pyi, 0.12).
CLIENT_KEYS = frozenset(
    {
        "allow_http",
        "allow_invalid_certificates",
        "connect_timeout",
        "default_content_type",
        "default_headers",
        "http1_only",
        "http2_keep_alive_interval",
        "http2_keep_alive_timeout",
        "http2_keep_alive_while_idle",
        "http2_only",
        "pool_idle_timeout",
        "pool_max_idle_per_host",
        "proxy_url",
        "proxy_ca_certificate",
        "proxy_excludes",
        "root_certificate",
        "randomize_addresses",
        "read_timeout",
        "timeout",
        "user_agent",
    }
)
_CLIENT_DURATIONS = frozenset(
    {"connect_timeout", "timeout", "read_timeout", "pool_idle_timeout", "http2_keep_alive_timeout"}
)
RETRY_KEYS = frozenset({"max_retries", "retry_timeout", "init_backoff", "max_backoff", "backoff_base"})
_CLOUD_PREFIXES = ("aws_", "google_", "azure_")

DEFAULT_CLIENT: dict[str, datetime.timedelta] = {
    # A request (connect to last body byte) that takes longer is abandoned and retried: 30 s
    # still moves an 8 MiB piece at 0.3 MB/s. A stalled body thus costs at most this per attempt.
    "timeout": datetime.timedelta(seconds=30),
    "connect_timeout": datetime.timedelta(seconds=5),
}
DEFAULT_RETRY: dict[str, Any] = {
    # obstore retries 5xx, connection errors, resets, timeouts and broken bodies with
    # exponential backoff (100 ms doubling to 15 s); no retry starts later than retry_timeout
    # after the first attempt, so one request ends within retry_timeout + timeout (90 s).
    "max_retries": 10,
    "retry_timeout": datetime.timedelta(seconds=60),
}

_SECRET_WORDS = ("secret", "token", "password", "sas", "credential", "private", "account_key", "signature")


def is_url(path: object) -> bool:
    """True for ``scheme://...`` strings (remote or not); local paths are everything else."""
    return isinstance(path, str) and _URL.match(path) is not None


@dataclass(frozen=True, slots=True)
class Location:
    """Where an object lives: the store (``scheme`` + ``root``) and the ``key`` within it."""

    url: str
    """The URL as the user gave it (every message names it)."""
    scheme: str
    """``"s3"``, ``"gs"``, ``"az"`` or ``"http"`` (``https`` included)."""
    root: str
    """The store's URL: ``s3://bucket``, ``http://host:port/``, ..."""
    key: str
    """The object's path within the store (no leading ``/``)."""

    @property
    def store_name(self) -> str:
        return _STORE_NAMES[self.scheme]

    def with_key(self, key: str) -> str:
        """The URL of another key in the same store."""
        return self.root.rstrip("/") + "/" + key


def parse_url(url: str) -> Location:
    """Split ``url`` into store root and key; unknown schemes get a message naming the fix."""
    match = _URL.match(url)
    if match is None:
        raise UsageError(f"{url}: not a URL")
    given = match.group(1)
    scheme = _SCHEMES.get(given.lower())
    if scheme is None:
        known = ", ".join(f"{s}://" for s in ("s3", "gs", "az", "http", "https"))
        raise UsageError(
            f"{url}: npstream reads {known} URLs itself; for {given}:// pass an fsspec filesystem "
            "that knows it: npstream.open(url, filesystem=fsspec.filesystem(...))"
        )
    parts = urlsplit(url)
    if parts.query or parts.fragment:
        raise UsageError(
            f"{url}: URLs with a query string or fragment (such as presigned URLs) are not "
            "supported; give the object's plain URL and credentials through the environment or "
            "storage_options"
        )
    if not parts.netloc:
        what = "host" if scheme == "http" else "bucket or container"
        raise UsageError(f"{url}: the URL names no {what} (expected {given}://NAME/path/to/object)")
    if scheme == "http":
        root = f"{parts.scheme.lower()}://{parts.netloc}/"
        key = unquote(parts.path).lstrip("/")
    else:
        root = f"{parts.scheme.lower()}://{parts.netloc}"
        key = parts.path.lstrip("/")
    return Location(url=url, scheme=scheme, root=root, key=key)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*([a-z]*)\s*$")
_UNIT_SECONDS = {
    "ms": 1e-3, "msec": 1e-3,
    "": 1.0, "s": 1.0, "sec": 1.0, "secs": 1.0, "second": 1.0, "seconds": 1.0,
    "m": 60.0, "min": 60.0, "mins": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hour": 3600.0, "hours": 3600.0,
}  # fmt: skip


def parse_duration(value: object, key: str, url: str) -> datetime.timedelta:
    """A timedelta from seconds (int/float), a timedelta, or text such as ``"30s"``, ``"500ms"``."""
    if isinstance(value, datetime.timedelta):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.timedelta(seconds=float(value))
    match = _DURATION.match(value.lower()) if isinstance(value, str) else None
    if match is None or match.group(2) not in _UNIT_SECONDS:
        raise UsageError(
            f"{url}: storage option {key}={value!r} is not a duration; give seconds (30) or text "
            "such as '30s', '500ms', '2min'"
        )
    return datetime.timedelta(seconds=float(match.group(1)) * _UNIT_SECONDS[match.group(2)])


@dataclass(frozen=True)
class RoutedOptions:
    """``storage_options`` sorted into obstore's groups, with npstream's defaults filled in."""

    config: dict[str, Any]
    client_options: dict[str, Any]
    retry_config: dict[str, Any]
    profile: str | None
    """An ``AWS_PROFILE`` to resolve through boto3 (object_store cannot read profiles)."""
    credential_provider: Any = None

    @property
    def retry_window(self) -> float:
        """Seconds after which no retry starts: the bound on npstream's own retries too."""
        return float(self.retry_config["retry_timeout"].total_seconds())


def _client_key(key: str) -> str | None:
    if key in CLIENT_KEYS:
        return key
    for prefix in _CLOUD_PREFIXES:
        if key.startswith(prefix) and key[len(prefix) :] in CLIENT_KEYS:
            return key[len(prefix) :]
    return None


def _as_bool(value: object, key: str, url: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise UsageError(f"{url}: storage option {key}={value!r} is not a boolean (true/false)")


def route_options(location: Location, options: Mapping[str, Any] | None) -> RoutedOptions:
    """Sort ``options`` into store config, client options and retry config for ``location``."""
    url = location.url
    config: dict[str, Any] = {}
    client: dict[str, Any] = dict(DEFAULT_CLIENT)
    retry: dict[str, Any] = dict(DEFAULT_RETRY)
    backoff: dict[str, Any] = {}
    profile = None
    provider = None
    if options is not None and not isinstance(options, Mapping):
        raise UsageError(f"{url}: storage_options must be a dict, got {type(options).__name__}")
    for raw_key, value in (options or {}).items():
        if not isinstance(raw_key, str):
            raise UsageError(f"{url}: storage_options keys must be strings, got {raw_key!r}")
        key = raw_key.lower()
        client_key = _client_key(key)
        if client_key is not None:
            if client_key in _CLIENT_DURATIONS:
                value = parse_duration(value, raw_key, url)
            elif client_key in ("allow_http", "allow_invalid_certificates"):
                value = _as_bool(value, raw_key, url)
            client[client_key] = value
        elif key == "max_retries":
            try:
                retry["max_retries"] = int(value)
            except (TypeError, ValueError):
                raise UsageError(f"{url}: storage option max_retries={value!r} is not an integer") from None
        elif key == "retry_timeout":
            retry["retry_timeout"] = parse_duration(value, raw_key, url)
        elif key in ("init_backoff", "max_backoff"):
            backoff[key] = parse_duration(value, raw_key, url)
        elif key == "backoff_base":
            backoff["base"] = float(value)
        elif key in ("profile", "aws_profile") and location.scheme == "s3":
            profile = str(value)
        elif key == "credential_provider":
            provider = value
        else:
            if location.scheme == "http":
                raise UsageError(
                    f"{url}: storage option {raw_key!r} does not apply to plain HTTP(S) URLs, which "
                    f"take only client options ({', '.join(sorted(CLIENT_KEYS))}) and retry options "
                    f"({', '.join(sorted(RETRY_KEYS))})"
                )
            config[key] = value
    if backoff:
        retry["backoff"] = backoff
    if location.scheme == "http":
        client["allow_http"] = True  # the user wrote http:// explicitly
    elif "allow_http" not in client:
        # obstore reads this variable itself, but loses it once client_options are given.
        variable = _ALLOW_HTTP_ENV[location.scheme]
        client["allow_http"] = _as_bool(os.environ.get(variable, ""), variable, url)
    if location.scheme == "s3" and profile is None and not _has_explicit_keys(config):
        profile = os.environ.get("AWS_PROFILE") or None
    endpoint = _endpoint(location.scheme, config)
    if endpoint and endpoint.lower().startswith("http://") and not client["allow_http"]:
        raise UsageError(
            f"{url}: the endpoint {endpoint} is plain HTTP, which must be allowed explicitly: set "
            f"{_ALLOW_HTTP_ENV[location.scheme]}=true or pass storage_options={{'allow_http': True}}"
        )
    return RoutedOptions(config, client, retry, profile, provider)


_ENDPOINT_KEYS = {
    "s3": ("endpoint", "endpoint_url", "aws_endpoint", "aws_endpoint_url"),
    "gs": ("base_url", "google_base_url"),
    "az": ("endpoint", "azure_storage_endpoint", "azure_endpoint"),
}
_ENDPOINT_ENV = {"s3": ("AWS_ENDPOINT_URL", "AWS_ENDPOINT"), "gs": (), "az": ("AZURE_STORAGE_ENDPOINT",)}


def _endpoint(scheme: str, config: Mapping[str, Any]) -> str | None:
    for key in _ENDPOINT_KEYS.get(scheme, ()):
        if config.get(key):
            return str(config[key])
    for name in _ENDPOINT_ENV.get(scheme, ()):
        if os.environ.get(name):
            return os.environ[name]
    return None


_ALLOW_HTTP_ENV = {"s3": "AWS_ALLOW_HTTP", "gs": "GOOGLE_ALLOW_HTTP", "az": "AZURE_ALLOW_HTTP", "http": ""}


def _has_explicit_keys(config: Mapping[str, Any]) -> bool:
    keys = ("access_key_id", "aws_access_key_id", "skip_signature", "aws_skip_signature")
    if any(k in config for k in keys):
        return True
    return bool(os.environ.get("AWS_ACCESS_KEY_ID"))


def options_key(options: Mapping[str, Any] | None) -> str:
    """A stable text key for ``options`` (caches one store per distinct configuration)."""
    return json.dumps(sorted((str(k).lower(), repr(v)) for k, v in (options or {}).items()))


def _is_secret_name(name: str) -> bool:
    name = name.lower()
    return any(word in name for word in _SECRET_WORDS) or (name.endswith("_key") and "key_id" not in name)


def secret_values(options: Mapping[str, Any] | None) -> frozenset[str]:
    """Values that must never appear in a message: secret-looking options and variables."""
    found = {str(v) for k, v in (options or {}).items() if isinstance(k, str) and _is_secret_name(k)}
    for name, value in os.environ.items():
        if name.startswith(("AWS_", "GOOGLE_", "AZURE_", "GCS_", "OBJECT_STORE_")) and _is_secret_name(name):
            found.add(value)
    return frozenset(v for v in found if len(v) >= 4)


def redact(text: str, secrets: frozenset[str]) -> str:
    """``text`` with every secret value replaced by ``***``."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return text
