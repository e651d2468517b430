"""AWS ElastiCache IAM authentication for the Redis stores.

An ElastiCache user in IAM mode has no password: the client proves its AWS identity
with a SigV4 *presigned* ``connect`` request, valid for 15 minutes, sent as the
``AUTH``/``HELLO`` password next to the user name. Only new connections
authenticate, so the token has to be fresh whenever redis-py opens one, whatever
the deployment mode (standalone, cluster, sentinel): the credential provider below
is handed to redis-py, which asks it at every connect. Rasa enables this with
``IAM_CLOUD_PROVIDER=aws`` and ``ELASTICACHE_REDIS_AWS_IAM_ENABLED=true``; the
configuration code reads those variables, this module only makes tokens.

The signing is botocore's (``SigV4QueryAuth``); the only thing added is a way to
sign at a given time, so that tests can check a token byte for byte.
"""

from __future__ import annotations

import asyncio
import datetime
import math
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlsplit

import botocore.session
from botocore.auth import SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from redis.credentials import CredentialProvider
from redis.exceptions import AuthenticationError

__all__ = [
    "TOKEN_LIFETIME",
    "ElastiCacheIAMCredentialProvider",
    "presigned_connect_token",
]

# ElastiCache accepts a token for at most 15 minutes after its X-Amz-Date.
TOKEN_LIFETIME = 900
SERVICE_NAME = "elasticache"
_SIGV4_TIMESTAMP = "%Y%m%dT%H%M%SZ"
_SCHEME = "http://"


class _SigV4QueryAuthAt(SigV4QueryAuth):  # type: ignore[misc]
    """``SigV4QueryAuth`` that signs at a fixed time instead of the wall clock.

    ``add_auth`` overwrites ``request.context["timestamp"]`` with the current time
    (botocore 1.44 does not honour a preset one), then calls this hook before anything
    reads the timestamp (scope, ``X-Amz-Date``, string to sign, signing key). Pinning
    it here keeps the rest of botocore's pipeline as is, and touches no global clock,
    so concurrent signers do not interfere.
    """

    def __init__(self, credentials: Any, region: str, timestamp: str) -> None:
        super().__init__(credentials, SERVICE_NAME, region, expires=TOKEN_LIFETIME)
        self._pinned_timestamp = timestamp

    def _modify_request_before_signing(self, request: Any) -> None:
        request.context["timestamp"] = self._pinned_timestamp
        super()._modify_request_before_signing(request)


def presigned_connect_token(
    user: str,
    cluster_name: str,
    region: str,
    credentials: Credentials,
    now: datetime.datetime | None = None,
) -> str:
    """Return the IAM auth token for ``user`` on the ElastiCache cache ``cluster_name``.

    The token is the presigned URL of ``GET http://<cluster_name>/?Action=connect&User=<user>``
    for service ``elasticache`` in ``region``, expiring after 900 s, without its scheme.
    ``now`` is the signing time (a naive datetime is taken as UTC); by default, the
    current time. ``credentials`` are frozen first, so refreshable ones refresh if due
    (that may do I/O).
    """
    for name, value in (("user", user), ("cluster_name", cluster_name), ("region", region)):
        if not value:
            raise ValueError(f"ElastiCache IAM token: {name} must not be empty")
    if now is None:
        now = datetime.datetime.now(datetime.timezone.utc)
    elif now.tzinfo is None:
        now = now.replace(tzinfo=datetime.timezone.utc)
    timestamp = now.astimezone(datetime.timezone.utc).strftime(_SIGV4_TIMESTAMP)

    request = AWSRequest(
        method="GET",
        url=f"{_SCHEME}{cluster_name}/",
        params={"Action": "connect", "User": user},
    )
    _SigV4QueryAuthAt(credentials.get_frozen_credentials(), region, timestamp).add_auth(request)
    url: str = request.url
    # The pinning relies on botocore calling the hook after stamping the time; if a
    # future botocore stopped doing so, fail loudly rather than hand out tokens
    # signed at another time than the caller believes.
    if parse_qs(urlsplit(url).query).get("X-Amz-Date") != [timestamp]:
        raise RuntimeError("botocore did not sign the ElastiCache token at the requested time")
    return url.removeprefix(_SCHEME)


class _Token(NamedTuple):
    value: str
    issued_at: float
    refresh_at: float


class ElastiCacheIAMCredentialProvider(CredentialProvider):
    """redis-py credential provider: ``(user, token)`` with a token younger than
    ``lifetime - refresh_margin`` seconds.

    redis-py calls ``get_credentials`` (sync clients) or ``get_credentials_async``
    (asyncio clients) every time it opens a connection, for every node, and sends
    the result with ``AUTH`` or ``HELLO``. The token is cached: a new one is signed
    once ``clock()`` reaches ``issued_at + lifetime - refresh_margin``, so with the
    defaults a new connection never presents a token older than 12 minutes and it
    still has 3 minutes of validity left to reach the server.

    ``region`` defaults to botocore's (``AWS_DEFAULT_REGION`` or the AWS config
    file), ``credentials`` to botocore's default chain (environment, shared files,
    container or instance role, ...). Both are resolved here, once, as the chain may
    query the instance metadata service.
    """

    def __init__(
        self,
        user: str,
        cluster_name: str,
        region: str | None,
        *,
        credentials: Credentials | None = None,
        clock: Callable[[], float] = time.time,
        lifetime: float = float(TOKEN_LIFETIME),
        refresh_margin: float = 180.0,
    ) -> None:
        if not user:
            raise ValueError("ElastiCache IAM authentication needs a user name")
        if not cluster_name:
            raise ValueError(
                "ElastiCache IAM authentication needs the cache name (AWS_ELASTICACHE_CLUSTER_NAME)"
            )
        if not 0 < lifetime <= TOKEN_LIFETIME:
            raise ValueError(f"lifetime must be in (0, {TOKEN_LIFETIME}] seconds, not {lifetime}")
        if not 0 <= refresh_margin < lifetime:
            raise ValueError(
                f"refresh_margin must be in [0, lifetime={lifetime}) seconds, not {refresh_margin}"
            )
        session: Any = None
        if region is None:
            session = botocore.session.get_session()
            region = session.get_config_variable("region")
            if not region:
                raise ValueError(
                    "ElastiCache IAM authentication needs an AWS region: set AWS_DEFAULT_REGION"
                )
        if credentials is None:
            session = session or botocore.session.get_session()
            credentials = session.get_credentials()
            if credentials is None:
                raise ValueError(
                    "ElastiCache IAM authentication found no AWS credentials in the default "
                    "chain (environment, shared credentials/config files, container or "
                    "instance role)"
                )
        self._user = user
        self._cluster_name = cluster_name
        self._region: str = region
        self._credentials: Any = credentials
        self._clock = clock
        self._lifetime = lifetime
        self._refresh_margin = refresh_margin
        # Sync clients may share one provider across threads; one signer at a time
        # also means a burst of connects after expiry signs once, not once each.
        self._lock = threading.Lock()
        self._token: _Token | None = None

    @property
    def user(self) -> str:
        return self._user

    @property
    def cluster_name(self) -> str:
        return self._cluster_name

    @property
    def region(self) -> str:
        return self._region

    def get_credentials(self) -> tuple[str, str]:
        with self._lock:
            now = self._clock()
            token = self._token
            if not self._fresh(token, now):
                try:
                    token = self._token = self._issue(now)
                except Exception as error:
                    # redis-py passes on only its own errors as a failed connection;
                    # botocore's (STS or metadata service unreachable) must look so too.
                    raise AuthenticationError(
                        f"cannot make an ElastiCache IAM token: {error}"
                    ) from error
            assert token is not None
            return self._user, token.value

    async def get_credentials_async(self) -> tuple[str, str]:
        token = self._token
        if self._fresh(token, self._clock()):
            assert token is not None
            return self._user, token.value
        # Signing is microseconds of CPU, but freezing refreshable credentials may
        # call STS or the metadata service: keep that off the event loop. This
        # happens once per refresh period, not per connection.
        return await asyncio.to_thread(self.get_credentials)

    @staticmethod
    def _fresh(token: _Token | None, now: float) -> bool:
        # issued_at <= now also catches a wall clock stepped backwards, which would
        # otherwise stretch the life of the cached token.
        return token is not None and token.issued_at <= now < token.refresh_at

    def _issue(self, now: float) -> _Token:
        # X-Amz-Date has whole seconds: count the age from the truncated time, which is
        # the one ElastiCache counts from.
        issued_at = float(math.floor(now))
        value = presigned_connect_token(
            self._user,
            self._cluster_name,
            self._region,
            self._credentials,
            now=datetime.datetime.fromtimestamp(issued_at, tz=datetime.timezone.utc),
        )
        return _Token(value, issued_at, issued_at + self._lifetime - self._refresh_margin)
