"""The notify action: a webhook told of each transition, sent beside containment, never before it.

The body (``payload``, ``encode``) and the Secret rules (``secret_namespace_allowed``,
``decode_secret``) are pure. ``Notifier`` is the only edge: it POSTs to the policy's URL and
touches nothing else. It reads no Secret itself; the caller fetches the one the policy names,
after checking its namespace here, and hands over the token. A webhook that is slow, down or
wrong costs retries in a background task and a ``Result`` for the Breaker's status; it never
holds up revoking egress or pausing the workload.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import inspect
import json
import logging
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import yarl

from breaker.api import containment

logger = logging.getLogger("breaker.notify")

TRIPPED = "BreakerTripped"
RESET = "BreakerReset"

# Comfortably inside what common webhook receivers accept, and cheap to hold and retry
# for many breakers tripping at once; the full evidence stays in the Breaker anyway.
MAX_BODY = 64 * 1024
MAX_REASON = 1024  # the Breaker schema's bound on status.reason
MAX_ERROR = 1024  # well under the 4096 an ActionRecord's error may hold
USER_AGENT = "breaker"


# --- the body (pure) ---------------------------------------------------------------------


def payload(event: str, breaker: Mapping[str, Any], now: dt.datetime) -> dict[str, Any]:
    """The JSON body announcing ``event`` for ``breaker`` (the Breaker object as a mapping).

    The shape is fixed (every key present, null when unknown) so receivers can template it.
    Only the latest evidence goes out: the receiver needs what tripped it now, and the full
    history stays in the Breaker. Past ``MAX_BODY`` the evidence's later signals are dropped
    (then its pods, then the evidence itself) and ``truncated`` is true.
    """
    metadata = _mapping(breaker.get("metadata"))
    spec = _mapping(breaker.get("spec"))
    status = _mapping(breaker.get("status"))
    target = _mapping(spec.get("targetRef"))
    policy = _mapping(spec.get("policyRef"))
    history = status.get("evidence") or []
    reason = status.get("reason")
    body: dict[str, Any] = {
        "event": event,
        "time": _iso(now),
        "breaker": {"namespace": metadata.get("namespace"), "name": metadata.get("name")},
        "workload": {"kind": target.get("kind"), "name": target.get("name")},
        "policy": {
            "kind": policy.get("kind"),
            "name": policy.get("name"),
            "namespace": policy.get("namespace"),
        },
        "state": status.get("state"),
        "trips": status.get("trips"),
        "reason": reason[:MAX_REASON] if isinstance(reason, str) else reason,
        "lastTrip": _plain(status.get("lastTrip")),
        # _plain copies: the caller's object (often kopf's live body) is never modified.
        "evidence": _plain(history[-1]) if history else None,
        "containment": _containment(status, str(metadata.get("namespace"))),
        "truncated": False,
    }
    return _bounded(body)


def _containment(status: Mapping[str, Any], tenant: str) -> dict[str, Any]:
    """What the actions did, as the Breaker's status records it (the status contract)."""
    try:
        found = containment.read(status)
    except containment.ContractError as error:
        return {
            "contained": None,
            "reason": "Unreadable",
            "message": str(error)[:MAX_REASON],
            "timeToContainSeconds": None,
            "actions": [],
        }
    return {
        "contained": found.contained,
        "reason": found.reason,
        "message": found.message[:MAX_REASON],
        "timeToContainSeconds": found.seconds,
        "actions": [
            {"type": a.type, "stage": a.stage, "summary": containment.describe(a, tenant)}
            for a in found.actions
        ],
    }


def encode(body: Mapping[str, Any]) -> bytes:
    """The bytes sent: compact UTF-8 JSON, so the cap is measured on what goes on the wire."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def _bounded(body: dict[str, Any]) -> dict[str, Any]:
    if len(encode(body)) <= MAX_BODY:
        return body
    body["truncated"] = True
    evidence = body["evidence"]
    if isinstance(evidence, dict):
        evidence["truncated"] = True  # the Evidence model's own flag, for receivers that read it
        signals = list(evidence.get("signals") or [])
        if _keep_signals_that_fit(body, evidence, signals):
            return body
        # Not even one signal fits beside the pods (up to 256, with 16 GPUs each): the
        # signals say why it tripped, the pods only where, so the pods go first.
        evidence["pods"] = None
        if _keep_signals_that_fit(body, evidence, signals):
            return body
    # What remains is names and a reason, bounded by the Breaker's schema.
    body["evidence"] = None
    return body


def _keep_signals_that_fit(
    body: dict[str, Any], evidence: dict[str, Any], signals: list[Any]
) -> bool:
    """Set the evidence's signals to the longest prefix of ``signals`` that fits; False if
    the body is too big even with none. A prefix, because the engine ranked them in order.
    """

    def fits(count: int) -> bool:
        evidence["signals"] = signals[:count]
        return len(encode(body)) <= MAX_BODY

    low, high = 0, len(signals)  # the answer lies in [low, high]
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    return fits(low)


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _iso(moment: dt.datetime) -> str:
    # A naive time is taken as UTC, as the CLI does; the operator itself passes aware UTC.
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _plain(value: Any) -> Any:
    """A JSON-ready copy: kopf hands out mapping views, and models may carry datetimes."""
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return [_plain(item) for item in value]
    if isinstance(value, dt.datetime):
        return _iso(value)
    return value


# --- Secrets (pure) -----------------------------------------------------------------------


def secret_namespace_allowed(
    secret_namespace: str, operator_namespace: str, policy_namespace: str | None
) -> bool:
    """Whether the webhook Secret may be read from ``secret_namespace``.

    Only the operator's namespace or the policy's own namespace; for a ClusterBreakerPolicy
    (``policy_namespace`` None) only the operator's. The operator can read Secrets its
    tenants cannot, and it sends the value to a URL the policy's author chose: allowing any
    other namespace would let someone who may write a BreakerPolicy in one namespace post
    another namespace's Secret to their own server.
    """
    if secret_namespace == operator_namespace:
        return True
    return bool(policy_namespace) and secret_namespace == policy_namespace


def decode_secret(
    secret_data: Mapping[str, str] | None, key: str, secret_name: str, *, lines: bool = False
) -> str:
    """The token at ``key`` of a Secret's ``data`` (base64, as the API returns it); with
    ``lines``, text of several lines (a PEM bundle).

    Surrounding whitespace is dropped: ``echo $TOKEN | kubectl create secret ...`` stores a
    trailing newline, which no HTTP header may carry.
    """
    encoded = (secret_data or {}).get(key)
    if encoded is None:
        raise ValueError(f"Secret {secret_name} has no key {key}")
    try:
        token = base64.b64decode(encoded, validate=True).decode().strip()
    except (binascii.Error, UnicodeDecodeError) as error:
        raise ValueError(
            f"Secret {secret_name} key {key} is not base64-encoded UTF-8 text"
        ) from error
    if not token:
        raise ValueError(f"Secret {secret_name} key {key} is empty")
    if not lines and ("\r" in token or "\n" in token):
        raise ValueError(f"Secret {secret_name} key {key} holds more than one line")
    return token


# --- delivery (the edge) ------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    """How a delivery ended, for the Breaker's status. ``status`` and ``error`` describe the
    last attempt: an HTTP status when the server answered, an error when it did not or
    answered with a failure."""

    ok: bool
    attempts: int
    status: int | None
    error: str | None


Backoff = Callable[[int], float]  # retry number (1 = the first retry) -> seconds to wait
OnDone = Callable[[Result], Awaitable[None] | None]


def exponential(
    base: float = 0.5,
    factor: float = 2.0,
    cap: float = 30.0,
    jitter: float = 0.0,
    rand: Callable[[], float] = random.random,
) -> Backoff:
    """base, base·factor, base·factor², ... up to ``cap``, each stretched by up to ``jitter``
    of itself at random."""

    def delay(retry: int) -> float:
        seconds = min(cap, base * factor ** (retry - 1))
        return seconds * (1.0 + jitter * rand())

    return delay


# One policy trips many breakers in the same tick; jitter keeps their retries from hitting
# a struggling receiver in lockstep.
DEFAULT_BACKOFF = exponential(jitter=0.2)


class Notifier:
    """Posts webhook bodies over one lazily opened connection pool.

    ``submit`` is what the operator calls: it returns at once. ``send`` is the delivery
    itself, awaited only by ``submit``'s task and by tests. Call ``close`` at shutdown.
    """

    def __init__(
        self,
        *,
        timeout: float = 5.0,
        attempts: int = 5,
        backoff: Backoff = DEFAULT_BACKOFF,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.timeout = timeout
        self.attempts = attempts
        self.backoff = backoff
        self._session: aiohttp.ClientSession | None = None
        # The event loop keeps only weak references to tasks; these are the strong ones.
        self._tasks: set[asyncio.Task[Result]] = set()

    @property
    def pending(self) -> int:
        """Deliveries still under way."""
        return len(self._tasks)

    def submit(
        self,
        url: str,
        body: Mapping[str, Any],
        token: str | None = None,
        on_done: OnDone | None = None,
    ) -> asyncio.Task[Result]:
        """Deliver in the background and return at once; ``on_done`` (plain or async) gets
        the Result. Needs a running event loop. Failures are logged, never raised."""
        # Encoded now: the caller may reuse ``body``, and a body that is not JSON is the
        # caller's bug, better raised here than logged from a task.
        data = encode(body)
        task = asyncio.get_running_loop().create_task(
            self._deliver(url, data, token, on_done), name=f"notify {_origin(url)}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def send(self, url: str, body: Mapping[str, Any], token: str | None = None) -> Result:
        """POST ``body``, retrying connection errors, timeouts, 429 and 5xx with backoff."""
        return await self._post(url, encode(body), token)

    async def close(self, grace: float = 0.0) -> None:
        """Give deliveries under way ``grace`` seconds, cancel the rest, close the pool.

        A shutting-down operator should not hang on a dead webhook: the transition itself is
        already recorded in the Breaker's status and events.
        """
        if self._tasks:
            tasks = set(self._tasks)
            if grace > 0:
                _, tasks = await asyncio.wait(tasks, timeout=grace)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _deliver(
        self, url: str, data: bytes, token: str | None, on_done: OnDone | None
    ) -> Result:
        try:
            result = await self._post(url, data, token)
        except Exception as error:  # nobody awaits this task: a bug must reach the log
            logger.exception("notify %s: delivery crashed", _origin(url))
            result = Result(ok=False, attempts=0, status=None, error=_describe(error))
        if on_done is not None:
            try:
                outcome = on_done(result)
                if inspect.isawaitable(outcome):
                    await outcome
            except Exception:  # the same unawaited task: a failing record must reach the log
                logger.exception("notify %s: recording the result failed", _origin(url))
        return result

    async def _post(self, url: str, data: bytes, token: str | None) -> Result:
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        status: int | None = None
        error: str | None = None
        for attempt in range(1, self.attempts + 1):
            if attempt > 1:
                await asyncio.sleep(self.backoff(attempt - 1))
            try:
                # No redirects: a 3xx would turn the POST into a GET or carry the bearer
                # token to a host nobody configured.
                async with self._client().post(
                    url, data=data, headers=headers, timeout=timeout, allow_redirects=False
                ) as response:
                    status, error = response.status, f"HTTP {response.status} {response.reason}"
            except TimeoutError:  # before ClientConnectionError: ServerTimeoutError is both
                status, error = None, f"no answer within {self.timeout:g}s"
            except aiohttp.ClientConnectionError as exc:
                status, error = None, _describe(exc)
            except aiohttp.ClientError as exc:  # a bad URL or response: retrying cannot help
                return self._failed(url, Result(False, attempt, None, _describe(exc)))
            else:
                if 200 <= status < 300:
                    return Result(ok=True, attempts=attempt, status=status, error=None)
                if status != 429 and status < 500:  # the request is wrong; it stays wrong
                    return self._failed(url, Result(False, attempt, status, error))
            logger.debug("notify %s: attempt %d failed: %s", _origin(url), attempt, error)
        return self._failed(url, Result(False, self.attempts, status, error))

    def _client(self) -> aiohttp.ClientSession:
        # Created on first use: a ClientSession belongs to the loop running when it is made.
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    @staticmethod
    def _failed(url: str, result: Result) -> Result:
        logger.warning(
            "notify %s failed after %d attempt(s): %s",
            _origin(url),
            result.attempts,
            result.error,
        )
        return result


def _origin(url: str) -> str:
    """Scheme, host and port only: webhook URLs often carry their credential in the path
    (Slack, Teams, Discord), and logs are read by more people than Secrets are."""
    try:
        return str(yarl.URL(url).origin())
    except ValueError:
        return "<invalid URL>"


def _describe(error: BaseException) -> str:
    if isinstance(error, aiohttp.InvalidURL):
        return "invalid URL"  # its message is the URL, which may hold a credential
    text = str(error)
    return (f"{type(error).__name__}: {text}" if text else type(error).__name__)[:MAX_ERROR]
