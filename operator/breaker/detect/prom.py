"""The thin Prometheus clients the engine is fed through.

``LiveProm`` is the live loop's: asyncio (aiohttp), so a hung Prometheus holds no thread
(the operator's API calls run on the default executor, and a kill switch must not queue
behind a query) and a policy's signals are asked at once. ``Prom`` (prometheus-api-client)
is the blocking one for backtests and tools: instant and range queries. Both return the
raw result lists that ``engine.normalize`` reads, and raise ``QueryError`` with what
Prometheus said, so the caller can hold state and report Unknown.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import re
import ssl
from dataclasses import dataclass
from typing import Any

import aiohttp
import requests
from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from urllib3.util.retry import Retry


class QueryError(RuntimeError):
    """A query that did not return data: Prometheus unreachable, slow, or refusing it.

    ``kind`` says which, for the condition an admin reads: ``Unreachable``, ``Timeout``,
    ``BadResponse`` (not Prometheus's JSON) or ``Refused`` (an HTTP error status)."""

    def __init__(self, message: str, kind: str = "Unreachable") -> None:
        super().__init__(message)
        self.kind = kind


def failure(query: str, why: str, kind: str) -> QueryError:
    # Stable text: it lands in a condition, and a new message each tick is a new write.
    why = re.sub(r" at 0x[0-9a-f]+", "", why)
    return QueryError(f"{query[:120]}: {why}"[:1000], kind)


# A slow Prometheus must not hold the loop: the client gives up a little after the
# server-side timeout the query carries.
CLIENT_GRACE_SECONDS = 1.0
RETRY_ON = (429, 502, 503, 504)


class Prom:
    def __init__(self, url: str, timeout_seconds: float = 5.0) -> None:
        self.url = url
        self.timeout = timeout_seconds
        # The client's own default retries a refused connection three times with growing
        # sleeps: about 6 s a query against a Prometheus that is down, 18 s an evaluation
        # of three signals, whatever the policy's timeout. One quick retry of a refused
        # connection or a 5xx is kept; a read that timed out is not retried.
        retry = Retry(
            total=1, connect=1, read=0, status=1, backoff_factor=0.1, status_forcelist=RETRY_ON
        )
        self.client = PrometheusConnect(url=url, disable_ssl=True, retry=retry)
        self.client_timeout = timeout_seconds + CLIENT_GRACE_SECONDS

    def _failed(self, query: str, error: Exception) -> QueryError:
        # The client retries, so a read that timed out surfaces as a ConnectionError too.
        timed_out = isinstance(error, requests.ConnectionError) and "timed out" in str(error)
        if isinstance(error, requests.Timeout) or timed_out:
            kind, why = "Timeout", f"no answer within {self.client_timeout:g}s"
        elif isinstance(error, ValueError):  # requests' JSONDecodeError is one too
            kind, why = "BadResponse", f"not a Prometheus answer ({type(error).__name__})"
        elif isinstance(error, requests.RequestException):
            kind, why = "Unreachable", str(error)
        elif isinstance(error, PrometheusApiClientException):
            kind, why = "Refused", str(error)
        else:
            kind, why = "BadResponse", f"not a Prometheus answer ({type(error).__name__}: {error})"
        return failure(query, why, kind)

    def _params(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"timeout": f"{self.timeout:g}s", **(extra or {})}

    def instant(self, query: str, at: float | None = None) -> list[dict[str, Any]]:
        params = self._params({"time": at} if at is not None else None)
        try:
            result = self.client.custom_query(query, params=params, timeout=self.client_timeout)
        except (PrometheusApiClientException, requests.RequestException, ValueError) as error:
            raise self._failed(query, error) from error
        except (KeyError, TypeError) as error:  # JSON, but not Prometheus's shape
            raise self._failed(query, error) from error
        if not isinstance(result, list):
            raise self._failed(query, TypeError(f"result is a {type(result).__name__}"))
        return result

    def range(self, query: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        try:
            result: list[dict[str, Any]] = self.client.custom_query_range(
                query,
                start_time=dt.datetime.fromtimestamp(start, dt.UTC),
                end_time=dt.datetime.fromtimestamp(end, dt.UTC),
                step=f"{step:g}s",
                params=self._params(),
                timeout=self.client_timeout,
            )
        except (
            PrometheusApiClientException,
            requests.RequestException,
            ValueError,
            KeyError,
            TypeError,
        ) as error:
            raise self._failed(query, error) from error
        return result


@dataclass(frozen=True)
class Target:
    """Where and how a policy's queries go. Policies with equal targets share one client,
    and each of their identical queries of an instant is sent once."""

    url: str
    timeout: float = 5.0
    headers: tuple[tuple[str, str], ...] = ()
    token: str | None = None  # sent as `Authorization: Bearer`
    ca: str | None = None  # PEM: the CAs that sign an https server's certificate
    server_name: str | None = None  # the name its certificate must carry, if not the host
    verify: bool = True
    partial_response: bool = False  # Thanos's partial_response: answer from the stores up


@dataclass(frozen=True)
class Answer:
    """An instant query's result list, and what the server warned of: Thanos names the
    stores that did not answer (a partial answer), Prometheus a query's oddities."""

    result: list[dict[str, Any]]
    warnings: tuple[str, ...] = ()


class LiveProm:
    """Instant queries without a thread: a query is a coroutine, cancelled or timed out
    where it waits. One quick retry of a dropped connection or a 429/5xx, as ``Prom``; a
    query that timed out is not retried. Bodies go as a POST form (long PromQL fits); an
    https server's certificate is verified unless the target says not to."""

    def __init__(self, target: Target | str, timeout_seconds: float = 5.0) -> None:
        """A ``Target``, or a url and timeout (a target with nothing else)."""
        if isinstance(target, str):
            target = Target(target, timeout_seconds)
        self.target = dataclasses.replace(target, url=target.url.rstrip("/"))
        self.timeout = target.timeout
        self.client_timeout = target.timeout + CLIENT_GRACE_SECONDS
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    async def instant(self, query: str, at: float | None = None) -> Answer:
        form = {"query": query, "timeout": f"{self.timeout:g}s"}
        if at is not None:
            form["time"] = f"{at:.3f}"
        # Sent always: Thanos's own default (--query.partial-response) may be on.
        form["partial_response"] = "true" if self.target.partial_response else "false"
        for attempt in (1, 2):
            try:
                async with asyncio.timeout(self.client_timeout):
                    status, text = await self._post(form)
            except TimeoutError:
                raise failure(
                    query, f"no answer within {self.client_timeout:g}s", "Timeout"
                ) from None
            except aiohttp.ClientConnectionError as error:
                if attempt == 1 and not isinstance(error, aiohttp.ClientSSLError):
                    await asyncio.sleep(0.1)
                    continue
                raise failure(query, f"{type(error).__name__}: {error}", "Unreachable") from error
            except aiohttp.ClientError as error:
                raise failure(query, f"{type(error).__name__}: {error}", "Unreachable") from error
            if status in RETRY_ON and attempt == 1:
                await asyncio.sleep(0.1)
                continue
            return answer(query, status, text)
        raise AssertionError("unreachable")

    async def _post(self, form: dict[str, str]) -> tuple[int, str]:
        if self._closed:
            raise aiohttp.ClientConnectionError("the client was closed")
        if self._session is None or self._session.closed:
            target = self.target
            headers = dict(target.headers)
            if target.token:
                headers["Authorization"] = f"Bearer {target.token}"
            self._session = aiohttp.ClientSession(
                headers=headers, connector=aiohttp.TCPConnector(ssl=tls_context(target))
            )
        async with self._session.post(
            f"{self.target.url}/api/v1/query",
            data=form,
            server_hostname=self.target.server_name,
        ) as response:
            return response.status, await response.text(errors="replace")

    async def close(self) -> None:
        self._closed = True
        if self._session is not None:
            await self._session.close()


def tls_context(target: Target) -> ssl.SSLContext:
    """The system's CAs, or the target's; no check at all only when it says so."""
    context = (
        ssl.create_default_context(cadata=target.ca) if target.ca else ssl.create_default_context()
    )
    if not target.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def answer(query: str, status: int, text: str) -> Answer:
    """An instant query's answer, or the QueryError it is."""
    try:
        body = json.loads(text)
    except ValueError:
        if status >= 400:
            raise failure(query, f"HTTP Status Code {status} ({text[:200]!r})", "Refused") from None
        raise failure(query, "not a Prometheus answer (JSONDecodeError)", "BadResponse") from None
    if not isinstance(body, dict):
        raise failure(
            query, f"not a Prometheus answer (a JSON {type(body).__name__})", "BadResponse"
        )
    if status >= 400 or body.get("status") != "success":
        said = f"{body.get('errorType', '')}: {body.get('error', '')}".strip(": ")
        raise failure(query, f"HTTP Status Code {status} ({said[:300]})", "Refused")
    data = body.get("data")
    result = data.get("result") if isinstance(data, dict) else None
    if not isinstance(result, list):
        raise failure(
            query, f"not a Prometheus answer (result is a {type(result).__name__})", "BadResponse"
        )
    warnings = body.get("warnings")
    warned = tuple(str(w)[:500] for w in warnings[:8]) if isinstance(warnings, list) else ()
    return Answer(result, warned)
