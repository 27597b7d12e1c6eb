"""What a policy's schema cannot say: the checks behind its Ready condition. Pure."""

from __future__ import annotations

from breaker.api.policy import PolicySpecBase
from breaker.detect.catalog import PRESETS, check_value


def problems(spec: PolicySpecBase) -> list[str]:
    """Each problem names the field and says what to do; empty when the policy is usable."""
    found: list[str] = []
    for index, signal in enumerate(spec.signals):
        where = f"spec.signals[{index}] ({signal.name})"
        if signal.preset is not None:
            known = PRESETS[signal.preset]
            for name, value in (signal.params or {}).items():
                param = known.get(name)
                if param is None:
                    found.append(
                        f"{where}.params.{name}: preset {signal.preset} has no such parameter; "
                        f"it takes {', '.join(sorted(known))}"
                    )
                elif (why := check_value(param, value)) is not None:
                    found.append(f"{where}.params.{name}: {why}")
        if signal.query is not None and (why := unbalanced(signal.query)) is not None:
            found.append(f"{where}.query: {why}")
    return found


def unbalanced(query: str) -> str | None:
    """A cheap PromQL sanity check: brackets and quotes must pair up."""
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    quote: str | None = None
    escaped = False
    for char in query:
        if quote is not None:
            escaped, quote = _in_string(char, quote, escaped)
            continue
        if char in "\"'`":
            quote = char
        elif char in "([{":
            stack.append(char)
        elif char in pairs and (not stack or stack.pop() != pairs[char]):
            return f"unmatched {char!r}"
    if quote is not None:
        return f"unterminated string starting with {quote}"
    if stack:
        return f"unclosed {stack[-1]!r}"
    return None


def _in_string(char: str, quote: str, escaped: bool) -> tuple[bool, str | None]:
    """One character inside a string literal: (escaped next, the quote still open)."""
    if escaped:
        return False, quote
    if char == "\\":
        return True, quote
    return False, (None if char == quote else quote)
