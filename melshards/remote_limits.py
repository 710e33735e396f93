"""How long a call to object storage may take, how often it is tried, and what its failures mean.

Every request to a feature set at a URL has a connect timeout, a read timeout (the longest
wait for the next bytes of an answer) and a bounded number of attempts, so a server that
stops answering is an error naming the URL within about ``attempts * (connect + read)``
seconds, never a hang. The limits come from the environment, read at each call:

==============================  =======  ==========================================
``MELSHARDS_CONNECT_TIMEOUT``   10       seconds to open a connection
``MELSHARDS_READ_TIMEOUT``      60       seconds to wait for the next bytes
``MELSHARDS_REMOTE_ATTEMPTS``   3        tries of one request (1: no retry)
==============================  =======  ==========================================

``s3://`` passes them to botocore (``connect_timeout``, ``read_timeout``, standard retries
with backoff; s3fs's own retry loop, which would multiply the attempts, is set to one pass);
``http(s)://`` passes the timeouts to aiohttp and is retried here (``retried``). Other
backends (``gs://``, ...) keep their own defaults.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from melshards.errors import ConfigError

CONNECT_TIMEOUT_ENV = "MELSHARDS_CONNECT_TIMEOUT"
READ_TIMEOUT_ENV = "MELSHARDS_READ_TIMEOUT"
ATTEMPTS_ENV = "MELSHARDS_REMOTE_ATTEMPTS"
S3_SCHEMES = ("s3", "s3a")
HTTP_SCHEMES = ("http", "https")

T = TypeVar("T")


@dataclass(frozen=True)
class Limits:
    """connect, read : seconds (> 0); attempts : tries of one request (>= 1)."""

    connect: float = 10.0
    read: float = 60.0
    attempts: int = 3

    @classmethod
    def from_env(cls) -> Limits:
        """The limits of ``MELSHARDS_CONNECT_TIMEOUT``, ``MELSHARDS_READ_TIMEOUT`` and
        ``MELSHARDS_REMOTE_ATTEMPTS``, each defaulting to the field's default."""
        return cls(
            connect=_env_number(CONNECT_TIMEOUT_ENV, cls.connect),
            read=_env_number(READ_TIMEOUT_ENV, cls.read),
            attempts=int(_env_number(ATTEMPTS_ENV, cls.attempts, integer=True)),
        )

    def storage_options(self, scheme: str) -> dict:
        """The fsspec keyword arguments that put these limits on a backend of ``scheme``."""
        if scheme in S3_SCHEMES:
            retries = {"total_max_attempts": self.attempts, "mode": "standard"}
            return {
                "config_kwargs": {
                    "connect_timeout": self.connect,
                    "read_timeout": self.read,
                    "retries": retries,
                }
            }
        if scheme in HTTP_SCHEMES:
            import aiohttp

            timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.connect, sock_read=self.read)
            return {"client_kwargs": {"timeout": timeout}}
        return {}

    def hint(self) -> str:
        """What a request that timed out says: the limits, and where they are set."""
        return (
            f"no answer in time ({self.attempts} attempt(s), {self.connect:g} s to connect, "
            f"{self.read:g} s to read); the server is down, unreachable or slow: check it, or wait "
            f"longer with {READ_TIMEOUT_ENV}, {CONNECT_TIMEOUT_ENV}, {ATTEMPTS_ENV}"
        )


def _env_number(name: str, default: float, *, integer: bool = False) -> float:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    kind = "a whole number >= 1" if integer else "a number of seconds > 0"
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{name}={text!r}: give {kind}") from None
    bad = value < 1 or value != int(value) if integer else value <= 0
    if bad or not math.isfinite(value):
        raise ConfigError(f"{name}={text!r}: give {kind}")
    return value


def merged_options(scheme: str, limits: Limits) -> dict:
    """``limits.storage_options(scheme)`` under what fsspec's own configuration sets for
    ``scheme`` (``~/.config/fsspec``, ``FSSPEC_*``): a key set there wins."""
    import fsspec.config

    options = limits.storage_options(scheme)
    configured = fsspec.config.conf.get(scheme, {})
    for key, value in options.items():
        if isinstance(configured.get(key), dict):
            options[key] = {**value, **configured[key]}
    return options


def bound(fs, scheme: str) -> None:
    """s3fs retries a failed request up to 5 times itself, around botocore's attempts (each of
    which would wait out the read timeout): one pass of its loop leaves the count to botocore."""
    if scheme in S3_SCHEMES and hasattr(fs, "retries"):
        fs.retries = 1


def retried(scheme: str, call: Callable[[], T], *, limits: Limits | None = None) -> T:
    """``call()``, tried up to ``limits.attempts`` times on a timeout or lost connection when
    the backend of ``scheme`` does not retry by itself (HTTP); once for the others."""
    limits = limits or Limits.from_env()
    attempts = limits.attempts if scheme in HTTP_SCHEMES else 1
    tried = 0
    while True:
        try:
            return call()
        except Exception as err:
            tried += 1
            if tried >= attempts or not is_transient(err):
                raise
            time.sleep(min(0.25 * 2**tried, 4.0))


def is_transient(err: BaseException) -> bool:
    """A timeout, a refused or lost connection, a cut-off answer or a server error (5xx)."""
    if is_timeout(err) or isinstance(err, ConnectionError):
        return True
    try:
        import aiohttp
    except ImportError:
        return False
    if isinstance(err, aiohttp.ClientResponseError):
        return err.status >= 500
    return isinstance(err, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError)


def is_timeout(err: BaseException) -> bool:
    """A timeout of any backend: Python's, aiohttp's, botocore's (``ReadTimeoutError``,
    ``ConnectTimeoutError``), or fsspec's, also as the cause of another error."""
    seen = 0
    while err is not None and seen < 5:
        if isinstance(err, TimeoutError) or any("Timeout" in c.__name__ for c in type(err).__mro__):
            return True
        err, seen = err.__cause__ or err.__context__, seen + 1
    return False


def is_missing_bucket(err: BaseException) -> bool:
    """A "no such bucket" answer (s3fs turns it into FileNotFoundError, the cause names it)."""
    seen = 0
    while err is not None and seen < 5:
        text = f"{type(err).__name__} {err}".lower()
        if "nosuchbucket" in text or "bucket does not exist" in text:
            return True
        err, seen = err.__cause__ or err.__context__, seen + 1
    return False
