"""PromQL text, narrowed to one workload: every vector selector gets its pods' matchers.

The operator never needs this for detection (one query per signal covers every pod at
once). It is what a per-workload design has to send instead, so the benchmark's naive
baseline uses it; it also gives an admin the query of one job to paste into Prometheus.

Pure text work: a small scanner that knows PromQL's strings, label blocks, range brackets,
grouping lists and keywords, enough to tell a metric name from everything else.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
# Words that are never metric names where they stand.
_KEYWORDS = frozenset(
    {
        "and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
        "group_right", "offset", "bool", "inf", "nan", "sum", "avg", "min", "max",
        "count", "stddev", "stdvar", "topk", "bottomk", "quantile", "count_values",
        "group", "limitk", "limit_ratio", "start", "end", "atan2",
    }
)  # fmt: skip
_GROUPING = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})


def pods_matcher(label: str, pods: Iterable[str]) -> str:
    """``pod="a"`` for one pod, ``pod=~"a|b"`` for several (regexes are anchored)."""
    names = sorted(set(pods))
    if len(names) == 1:
        return f'{label}="{_quoted(names[0])}"'
    alternatives = "|".join(_quoted(re.sub(r"([.+*?()\[\]{}|^$\\])", r"\\\1", n)) for n in names)
    return f'{label}=~"{alternatives}"'


def scoped(query: str, labels: tuple[str, str], namespace: str, pods: Iterable[str]) -> str:
    """``query`` with ``namespace`` and ``pods`` matchers added to each vector selector.

    ``labels`` are the (namespace label, pod label) of the query's series, as a signal
    names them (``namespace``/``pod`` for DCGM and cAdvisor, ``source_namespace``/
    ``source_pod`` for Hubble).
    """
    matchers = f'{labels[0]}="{_quoted(namespace)}",{pods_matcher(labels[1], pods)}'
    out: list[str] = []
    i, n = 0, len(query)
    grouping_next = False  # the last word opens a label list: by (...), on (...)
    while i < n:
        char = query[i]
        if char in "\"'`":
            end = _string_end(query, i)
            out.append(query[i:end])
            i = end
        elif char == "{":  # a selector without a name: {__name__=~"..."}
            end = _block_end(query, i)
            out.append(_with(query[i:end], matchers))
            i = end
        elif char == "[":  # a range or subquery: durations only
            end = query.index("]", i)
            out.append(query[i : end + 1])
            i = end + 1
        elif char == "(" and grouping_next:
            end = query.index(")", i)
            out.append(query[i : end + 1])
            i, grouping_next = end + 1, False
        elif char.isdigit() or (char == "." and i + 1 < n and query[i + 1].isdigit()):
            match = re.compile(r"[0-9A-Za-z_.]+").match(query, i)  # numbers and durations
            assert match is not None
            out.append(match.group())
            i = match.end()
        elif (match := _IDENT.match(query, i)) is not None:
            word, i = match.group(), match.end()
            rest = query[i:].lstrip()
            if word.lower() in _GROUPING:
                grouping_next = True
                out.append(word)
            elif word.lower() in _KEYWORDS or rest.startswith("("):
                out.append(word)  # an operator, an aggregation or a function
            elif rest.startswith("{"):
                start = i + len(query[i:]) - len(rest)
                end = _block_end(query, start)
                out.append(word + query[i:start] + _with(query[start:end], matchers))
                i = end
            else:
                out.append(f"{word}{{{matchers}}}")
        else:
            out.append(char)
            i += 1
    return "".join(out)


def _with(block: str, matchers: str) -> str:
    inner = block[1:-1].strip()
    return f"{{{matchers},{inner}}}" if inner else f"{{{matchers}}}"


def _block_end(text: str, start: int) -> int:
    """The index after the ``}`` closing the label block at ``start`` (strings skipped)."""
    i = start + 1
    while i < len(text):
        if text[i] in "\"'`":
            i = _string_end(text, i)
        elif text[i] == "}":
            return i + 1
        else:
            i += 1
    raise ValueError(f"unclosed label block in {text[:80]!r}")


def _string_end(text: str, start: int) -> int:
    quote, i = text[start], start + 1
    while i < len(text):
        if text[i] == "\\" and quote != "`":
            i += 2
            continue
        if text[i] == quote:
            return i + 1
        i += 1
    raise ValueError(f"unterminated string in {text[:80]!r}")


def _quoted(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')
