"""The thin Prometheus client the engine is fed through (prometheus-api-client).

Instant queries for the live loop, range queries for backtests; both return the raw
result lists that ``engine.normalize`` reads. Failures raise ``QueryError`` with what
Prometheus said, so the caller can hold state and report Unknown.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import requests
from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException


class QueryError(RuntimeError):
    """A query that did not return data: Prometheus unreachable, slow, or refusing it."""


class Prom:
    def __init__(self, url: str, timeout_seconds: float = 5.0) -> None:
        self.url = url
        self.timeout = timeout_seconds
        self.client = PrometheusConnect(url=url, disable_ssl=True)

    def _params(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"timeout": f"{self.timeout:g}s", **(extra or {})}

    def instant(self, query: str, at: float | None = None) -> list[dict[str, Any]]:
        params = self._params({"time": at} if at is not None else None)
        try:
            result: list[dict[str, Any]] = self.client.custom_query(query, params=params)
        except (PrometheusApiClientException, requests.RequestException) as error:
            raise QueryError(f"{query[:120]}: {error}") from error
        return result

    def range(self, query: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        try:
            result: list[dict[str, Any]] = self.client.custom_query_range(
                query,
                start_time=dt.datetime.fromtimestamp(start, dt.UTC),
                end_time=dt.datetime.fromtimestamp(end, dt.UTC),
                step=f"{step:g}s",
                params=self._params(),
            )
        except (PrometheusApiClientException, requests.RequestException) as error:
            raise QueryError(f"{query[:120]}: {error}") from error
        return result
