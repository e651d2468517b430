"""ElastiCache IAM tokens: the signature against a hand-made SigV4, the refresh
schedule, and a real redis-server that accepts the token as an ACL password."""

from __future__ import annotations

import datetime
import hashlib
import hmac
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import pytest
import redis
import redis.asyncio
from botocore.credentials import Credentials
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.credentials import CredentialProvider
from redis.exceptions import AuthenticationError
from ticketlock_server.stores.iam import (
    TOKEN_LIFETIME,
    ElastiCacheIAMCredentialProvider,
    presigned_connect_token,
)

from harness.redis_servers import RedisDeployment

ACCESS_KEY = "AKIDEXAMPLE"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
# Characters that need percent-encoding, to check the canonical query string.
SESSION_TOKEN = "FQoGZXIvYXdzEXAMPLE/session+token=="
CLUSTER = "ticketlock-cache"
REGION = "eu-central-1"
USER = "iamuser"
FIXED = datetime.datetime(2024, 5, 1, 12, 34, 56, tzinfo=datetime.timezone.utc)
FIXED_AMZ_DATE = "20240501T123456Z"


def _credentials(token: str | None = None) -> Credentials:
    return Credentials(ACCESS_KEY, SECRET_KEY, token)


def _query(token: str) -> dict[str, str]:
    parsed = parse_qs(
        urlsplit(f"http://{token}").query, keep_blank_values=True, strict_parsing=True
    )
    assert all(len(values) == 1 for values in parsed.values()), parsed
    return {key: values[0] for key, values in parsed.items()}


def _amz_date(token: str) -> datetime.datetime:
    return datetime.datetime.strptime(_query(token)["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(
        tzinfo=datetime.timezone.utc
    )


def _uri_encode(value: str) -> str:
    # SigV4: encode everything but the unreserved characters A-Z a-z 0-9 - _ . ~
    return quote(value, safe="-_.~")


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode(), hashlib.sha256).digest()


def _expected_signature(
    *, user: str, cluster: str, region: str, amz_date: str, session_token: str | None
) -> str:
    """SigV4 query-string signing, written from the spec without botocore."""
    date = amz_date[:8]
    scope = f"{date}/{region}/elasticache/aws4_request"
    params = {
        "Action": "connect",
        "User": user,
        "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
        "X-Amz-Credential": f"{ACCESS_KEY}/{scope}",
        "X-Amz-Date": amz_date,
        "X-Amz-Expires": "900",
        "X-Amz-SignedHeaders": "host",
    }
    if session_token is not None:
        params["X-Amz-Security-Token"] = session_token
    canonical_query = "&".join(
        f"{key}={value}"
        for key, value in sorted((_uri_encode(k), _uri_encode(v)) for k, v in params.items())
    )
    canonical_request = "\n".join(
        [
            "GET",
            "/",
            canonical_query,
            f"host:{cluster}\n",  # canonical headers end with a newline
            "host",
            hashlib.sha256(b"").hexdigest(),  # empty GET body
        ]
    )
    string_to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256",
            amz_date,
            scope,
            hashlib.sha256(canonical_request.encode()).hexdigest(),
        ]
    )
    key = _hmac(f"AWS4{SECRET_KEY}".encode(), date)
    for part in (region, "elasticache", "aws4_request"):
        key = _hmac(key, part)
    return hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()


# -- the token ------------------------------------------------------------------------------


@pytest.mark.parametrize("session_token", [None, SESSION_TOKEN])
def test_token_is_a_presigned_connect_url(session_token: str | None) -> None:
    token = presigned_connect_token(USER, CLUSTER, REGION, _credentials(session_token), now=FIXED)

    assert token.startswith(f"{CLUSTER}/?")
    assert "://" not in token
    query = _query(token)
    expected = {
        "Action": "connect",
        "User": USER,
        "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
        "X-Amz-Credential": f"{ACCESS_KEY}/20240501/{REGION}/elasticache/aws4_request",
        "X-Amz-Date": FIXED_AMZ_DATE,
        "X-Amz-Expires": "900",
        "X-Amz-SignedHeaders": "host",
    }
    if session_token is not None:
        expected["X-Amz-Security-Token"] = session_token
    signature = query.pop("X-Amz-Signature")
    assert query == expected
    assert token.endswith(f"&X-Amz-Signature={signature}")
    assert signature == _expected_signature(
        user=USER,
        cluster=CLUSTER,
        region=REGION,
        amz_date=FIXED_AMZ_DATE,
        session_token=session_token,
    )


def test_signature_covers_user_and_encodes_it() -> None:
    user = "team a/iam+user"
    token = presigned_connect_token(user, CLUSTER, REGION, _credentials(), now=FIXED)
    assert _query(token)["User"] == user
    assert _query(token)["X-Amz-Signature"] == _expected_signature(
        user=user, cluster=CLUSTER, region=REGION, amz_date=FIXED_AMZ_DATE, session_token=None
    )
    other = presigned_connect_token("someone-else", CLUSTER, REGION, _credentials(), now=FIXED)
    assert _query(other)["X-Amz-Signature"] != _query(token)["X-Amz-Signature"]


def test_naive_and_non_utc_times_are_utc() -> None:
    reference = presigned_connect_token(USER, CLUSTER, REGION, _credentials(), now=FIXED)
    naive = FIXED.replace(tzinfo=None)
    plus_two = FIXED.astimezone(datetime.timezone(datetime.timedelta(hours=2)))
    for now in (naive, plus_two):
        assert presigned_connect_token(USER, CLUSTER, REGION, _credentials(), now=now) == reference


def test_default_time_is_now() -> None:
    before = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    token = presigned_connect_token(USER, CLUSTER, REGION, _credentials())
    after = datetime.datetime.now(datetime.timezone.utc)
    assert before <= _amz_date(token) <= after


@pytest.mark.parametrize("empty", ["user", "cluster_name", "region"])
def test_empty_arguments_are_refused(empty: str) -> None:
    arguments = {"user": USER, "cluster_name": CLUSTER, "region": REGION}
    arguments[empty] = ""
    with pytest.raises(ValueError, match=empty):
        presigned_connect_token(credentials=_credentials(), now=FIXED, **arguments)


# -- the provider: caching and refresh ------------------------------------------------------


@dataclass
class FakeClock:
    now: float

    def __call__(self) -> float:
        return self.now


T0 = FIXED.timestamp()


def _provider(clock: FakeClock, **kwargs: float) -> ElastiCacheIAMCredentialProvider:
    return ElastiCacheIAMCredentialProvider(
        USER, CLUSTER, REGION, credentials=_credentials(), clock=clock, **kwargs
    )


def test_provider_returns_user_and_the_token_for_its_clock() -> None:
    provider = _provider(FakeClock(T0))
    assert provider.get_credentials() == (
        USER,
        presigned_connect_token(USER, CLUSTER, REGION, _credentials(), now=FIXED),
    )


async def test_token_is_cached_until_the_refresh_point_then_renewed() -> None:
    clock = FakeClock(T0)
    provider = _provider(clock)  # lifetime 900, margin 180: refresh at 720 s
    first = provider.get_credentials()[1]
    assert _amz_date(first) == FIXED

    for offset in (0.0, 1.0, 300.0, 719.0, 719.999):
        clock.now = T0 + offset
        assert provider.get_credentials()[1] == first
        assert (await provider.get_credentials_async())[1] == first

    clock.now = T0 + 720.0
    second = provider.get_credentials()[1]
    assert second != first
    assert _amz_date(second) == FIXED + datetime.timedelta(seconds=720)
    assert (await provider.get_credentials_async())[1] == second


async def test_async_path_refreshes_too() -> None:
    clock = FakeClock(T0)
    provider = _provider(clock)
    first = (await provider.get_credentials_async())[1]
    clock.now = T0 + 720.0
    second = (await provider.get_credentials_async())[1]
    assert _amz_date(second) - _amz_date(first) == datetime.timedelta(seconds=720)
    assert provider.get_credentials()[1] == second


@pytest.mark.parametrize(("lifetime", "margin"), [(900.0, 180.0), (600.0, 60.0), (900.0, 0.0)])
def test_token_handed_out_is_never_older_than_lifetime_minus_margin(
    lifetime: float, margin: float
) -> None:
    clock = FakeClock(T0 + 0.25)  # a fractional start: X-Amz-Date truncates it
    provider = _provider(clock, lifetime=lifetime, refresh_margin=margin)
    distinct = set()
    for step in range(0, 3600 * 4, 7):
        clock.now = T0 + 0.25 + step * 1.3
        token = provider.get_credentials()[1]
        distinct.add(token)
        age = clock.now - _amz_date(token).timestamp()
        assert 0 <= age < lifetime - margin
        assert age < TOKEN_LIFETIME
    # About one token per refresh period over the ~5.2 simulated hours, not one per call.
    assert len(distinct) <= (3600 * 4 * 1.3) / (lifetime - margin) + 2


def test_clock_stepping_back_renews_the_token() -> None:
    clock = FakeClock(T0)
    provider = _provider(clock)
    first = provider.get_credentials()[1]
    clock.now = T0 - 3600
    renewed = provider.get_credentials()[1]
    assert renewed != first
    assert _amz_date(renewed) == FIXED - datetime.timedelta(hours=1)


@pytest.mark.parametrize(
    ("lifetime", "margin"), [(0.0, 0.0), (901.0, 180.0), (900.0, 900.0), (900.0, -1.0)]
)
def test_bad_lifetime_or_margin_is_refused(lifetime: float, margin: float) -> None:
    with pytest.raises(ValueError):
        _provider(FakeClock(T0), lifetime=lifetime, refresh_margin=margin)


def test_user_and_cluster_name_are_required() -> None:
    with pytest.raises(ValueError, match="user"):
        ElastiCacheIAMCredentialProvider("", CLUSTER, REGION, credentials=_credentials())
    with pytest.raises(ValueError, match="AWS_ELASTICACHE_CLUSTER_NAME"):
        ElastiCacheIAMCredentialProvider(USER, "", REGION, credentials=_credentials())


# -- the provider: region and credentials from botocore's defaults --------------------------


@pytest.fixture
def bare_aws_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No AWS settings at all: no variables, no files, no instance metadata."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.mark.usefixtures("bare_aws_environment")
def test_region_and_credentials_come_from_the_default_chain(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-southeast-2")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_SESSION_TOKEN", SESSION_TOKEN)
    provider = ElastiCacheIAMCredentialProvider(USER, CLUSTER, None, clock=FakeClock(T0))
    assert provider.region == "ap-southeast-2"
    query = _query(provider.get_credentials()[1])
    assert (
        query["X-Amz-Credential"]
        == f"{ACCESS_KEY}/20240501/ap-southeast-2/elasticache/aws4_request"
    )
    assert query["X-Amz-Security-Token"] == SESSION_TOKEN
    assert query["X-Amz-Signature"] == _expected_signature(
        user=USER,
        cluster=CLUSTER,
        region="ap-southeast-2",
        amz_date=FIXED_AMZ_DATE,
        session_token=SESSION_TOKEN,
    )


@pytest.mark.usefixtures("bare_aws_environment")
def test_missing_region_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="AWS_DEFAULT_REGION"):
        ElastiCacheIAMCredentialProvider(USER, CLUSTER, None, credentials=_credentials())


@pytest.mark.usefixtures("bare_aws_environment")
def test_missing_credentials_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no AWS credentials"):
        ElastiCacheIAMCredentialProvider(USER, CLUSTER, REGION)


def test_refreshable_credentials_are_frozen_at_each_signing() -> None:
    class Rotating:
        """Stands in for botocore's RefreshableCredentials."""

        def __init__(self) -> None:
            self.calls = 0

        def get_frozen_credentials(self) -> Credentials:
            self.calls += 1
            return Credentials(f"AKID{self.calls}", SECRET_KEY, None)

    clock = FakeClock(T0)
    credentials = Rotating()
    provider = ElastiCacheIAMCredentialProvider(
        USER, CLUSTER, REGION, credentials=credentials, clock=clock
    )
    assert _query(provider.get_credentials()[1])["X-Amz-Credential"].startswith("AKID1/")
    assert _query(provider.get_credentials()[1])["X-Amz-Credential"].startswith("AKID1/")
    clock.now = T0 + 720
    assert _query(provider.get_credentials()[1])["X-Amz-Credential"].startswith("AKID2/")
    assert credentials.calls == 2


# -- a real redis-server with the token as an ACL password ----------------------------------


@pytest.fixture
def redis_port(redis_standalone: RedisDeployment) -> int:
    """The session's plain redis-server (tests/support): the ACL user is this test's own."""
    return redis_standalone.port


def _set_password(port: int, password: str) -> None:
    """Make ``password`` the only password of the ACL user USER."""
    with redis.Redis(host="127.0.0.1", port=port) as admin:
        admin.execute_command(
            "ACL", "SETUSER", USER, "reset", "on", f">{password}", "~*", "&*", "+@all"
        )


def _client(port: int, provider: CredentialProvider, protocol: int = 2) -> redis.asyncio.Redis:
    # No retries: a refused AUTH is an AuthenticationError, a ConnectionError that the
    # default policy would retry with back-off.
    return redis.asyncio.Redis(
        host="127.0.0.1",
        port=port,
        username=None,
        credential_provider=provider,
        protocol=protocol,
        retry=Retry(NoBackoff(), 0),
        socket_timeout=5,
    )


@pytest.mark.parametrize("protocol", [2, 3])  # AUTH, then HELLO 3 AUTH
async def test_redis_accepts_the_token_as_the_acl_password(redis_port: int, protocol: int) -> None:
    expected = presigned_connect_token(USER, CLUSTER, REGION, _credentials(), now=FIXED)
    _set_password(redis_port, expected)

    provider = _provider(FakeClock(T0))
    client = _client(redis_port, provider, protocol)
    try:
        assert await client.ping()
        assert await client.acl_whoami() in ("iamuser", b"iamuser")
    finally:
        await client.aclose()
    assert provider.get_credentials() == (USER, expected)


async def test_redis_refuses_a_wrong_token(redis_port: int) -> None:
    _set_password(
        redis_port, presigned_connect_token(USER, CLUSTER, REGION, _credentials(), now=FIXED)
    )

    wrong_secret = ElastiCacheIAMCredentialProvider(
        USER,
        CLUSTER,
        REGION,
        credentials=Credentials(ACCESS_KEY, "not-the-secret", None),
        clock=FakeClock(T0),
    )
    client = _client(redis_port, wrong_secret)
    try:
        with pytest.raises(AuthenticationError):
            await client.ping()
    finally:
        await client.aclose()


async def test_new_connections_use_the_refreshed_token(redis_port: int) -> None:
    """The server (standing in for ElastiCache) only accepts the current token: a
    client holding the stale one is refused, new connections from the provider
    get the refreshed one and are accepted."""
    clock = FakeClock(T0)
    provider = _provider(clock)
    stale = provider.get_credentials()[1]
    clock.now = T0 + 720
    fresh = provider.get_credentials()[1]
    assert fresh != stale
    _set_password(redis_port, fresh)

    stale_client = redis.asyncio.Redis(
        host="127.0.0.1",
        port=redis_port,
        username=USER,
        password=stale,
        retry=Retry(NoBackoff(), 0),
    )
    client = _client(redis_port, provider)
    try:
        with pytest.raises(AuthenticationError):
            await stale_client.ping()
        assert await client.ping()
    finally:
        await stale_client.aclose()
        await client.aclose()


class _UnreachableCredentials(Credentials):  # type: ignore[misc]
    """Refreshable credentials whose source (STS, instance metadata) cannot be reached."""

    def get_frozen_credentials(self) -> object:
        raise OSError("could not connect to the endpoint URL")


async def test_credential_source_failure_is_a_failed_redis_connection() -> None:
    provider = ElastiCacheIAMCredentialProvider(
        USER, CLUSTER, REGION, credentials=_UnreachableCredentials("a", "b")
    )
    with pytest.raises(AuthenticationError, match="cannot make an ElastiCache IAM token"):
        provider.get_credentials()
    with pytest.raises(AuthenticationError):
        await provider.get_credentials_async()
