"""MkDocs hook: the reference pages, generated at build time from the code that users meet.

- One page per custom resource, from the same structural schema `breaker crds` writes into
  `crds/` (``breaker.api.crd.Resource.schema``), so each field's description is the text
  `kubectl explain` shows; its bounds, enums, defaults and CEL rules follow it.
- One page per command line, from the argparse parsers of `breaker` (``breaker.cli``) and
  `kubectl breaker` (``breaker.plugin``): each command's `--help`, as printed at 100 columns.
- The benchmark figure, `bench/results/summary.png`, served as `figures/summary.png`, so
  the image `make bench` writes is the one the site shows (no copy to drift).

Nothing is written into `docs/`: the pages exist only in the build. The functions that make
the Markdown are plain (a schema or a parser in, text out) so a unit test can call them.
"""

from __future__ import annotations

import argparse
import html
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
WIDTH = "100"  # argparse wraps help to $COLUMNS; fixed, so the pages do not depend on a terminal


# --- custom resources ---------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    """One field as `kubectl explain KIND.PATH` names it (array items add no segment)."""

    path: str
    type: str
    description: str
    required: bool
    rules: tuple[str, ...]


def _type(node: dict[str, Any]) -> str:
    """The type as kubectl explain prints it: <string>, <[]Object>, <map[string]string>."""
    kind = node.get("type", "Object")
    if kind == "array":
        return "[]" + _type(node.get("items", {}))
    if kind == "object":
        extra = node.get("additionalProperties")
        if isinstance(extra, dict) and "properties" not in node:
            return f"map[string]{_type(extra)}"
        return "Object"
    return str(kind)


def _rules(node: dict[str, Any]) -> tuple[str, ...]:
    """The validations the API server applies to this field, in words."""
    out: list[str] = []
    if "enum" in node:
        out.append("one of: " + ", ".join(f"`{v}`" for v in node["enum"]))
    if "default" in node:
        out.append(f"default: `{_plain(node['default'])}`")
    for key, words in (
        ("minimum", "minimum"),
        ("maximum", "maximum"),
        ("minLength", "min length"),
        ("maxLength", "max length"),
        ("minItems", "min items"),
        ("maxItems", "max items"),
        ("minProperties", "min entries"),
        ("maxProperties", "max entries"),
        ("pattern", "pattern"),
        ("format", "format"),
    ):
        if key in node:
            out.append(f"{words}: `{node[key]}`")
    if node.get("nullable"):
        out.append("may be null")
    if node.get("x-kubernetes-preserve-unknown-fields"):
        out.append("any fields kept as given")
    for rule in node.get("x-kubernetes-validations", ()):
        out.append(f"rule `{rule['rule']}`: {rule.get('message', '')}".rstrip(": "))
    return tuple(out)


def _plain(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def fields(schema: dict[str, Any], prefix: str = "") -> Iterator[Field]:
    """Every field under ``schema``, depth first, in the schema's order."""
    node = schema
    while node.get("type") == "array" and "items" in node:
        node = node["items"]
    required = set(node.get("required", ()))
    for name, sub in node.get("properties", {}).items():
        path = f"{prefix}.{name}" if prefix else name
        inner = sub
        while inner.get("type") == "array" and "items" in inner:
            inner = inner["items"]
        yield Field(
            path=path,
            type=_type(sub),
            description=sub.get("description", ""),
            required=name in required,
            rules=_rules(sub)
            + (tuple(f"each item: {r}" for r in _rules(inner)) if inner is not sub else ()),
        )
        yield from fields(sub, path)
    extra = node.get("additionalProperties")
    if isinstance(extra, dict) and "properties" in extra:
        yield from fields(extra, prefix)


def _field_html(field: Field) -> str:
    badge = " <em>required</em>" if field.required else ""
    description = html.escape(field.description) or "<em>(no description)</em>"
    lines = [
        f'<dt id="{html.escape(field.path)}"><code>{html.escape(field.path)}</code> '
        f"&lt;{html.escape(field.type)}&gt;{badge}</dt>",
        f'<dd><p class="explain">{description}</p>',
    ]
    if field.rules:
        items = "".join(f"<li>{_code(rule)}</li>" for rule in field.rules)
        lines.append(f"<ul>{items}</ul>")
    lines.append("</dd>")
    return "\n".join(lines)


def _code(text: str) -> str:
    """Backticked spans as <code>, the rest escaped (the page's field list is raw HTML)."""
    parts = text.split("`")
    return "".join(
        f"<code>{html.escape(part)}</code>" if i % 2 else html.escape(part)
        for i, part in enumerate(parts)
    )


def resource_page(resource: Any) -> str:
    """The reference page of one ``breaker.api.crd.Resource``."""
    manifest = resource.manifest()
    names = manifest["spec"]["names"]
    version = manifest["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]
    group = manifest["spec"]["group"]
    out = [
        f"# {resource.kind}",
        "",
        "Generated from the pydantic models in `operator/breaker/api` by the same code that",
        f"writes `crds/{resource.name}.yaml`: each description below is what",
        f"`kubectl explain {names['singular']}.FIELD` prints.",
        "",
        "| | |",
        "|---|---|",
        f"| apiVersion | `{group}/{version['name']}` |",
        f"| scope | {manifest['spec']['scope']} |",
        f"| plural, short names | `{names['plural']}`, "
        + ", ".join(f"`{s}`" for s in names["shortNames"])
        + " |",
        "| categories | " + ", ".join(f"`{c}`" for c in names["categories"]) + " |",
        "",
        schema.get("description", ""),
        "",
    ]
    rules = schema.get("x-kubernetes-validations", ())
    if rules:
        out += ["Rules on the whole object:", ""]
        out += [f"- `{r['rule']}`: {r['message']}" for r in rules]
        out.append("")
    out += ["## Columns", "", "`kubectl get` prints (`-o wide` adds those of priority 1):", ""]
    out += ["| column | type | JSONPath | priority | description |", "|---|---|---|---|---|"]
    for column in version["additionalPrinterColumns"]:
        out.append(
            f"| {column['name']} | {column['type']} | `{column['jsonPath']}` | "
            f"{column.get('priority', 0)} | {column.get('description', '')} |"
        )
    out += ["", "## Fields", "", '<dl class="crd-fields">']
    out += [_field_html(f) for f in fields(schema)]
    out += ["</dl>", ""]
    return "\n".join(out)


# --- command lines ------------------------------------------------------------------------


def commands(
    parser: argparse.ArgumentParser, name: str = ""
) -> Iterator[tuple[str, str, argparse.ArgumentParser]]:
    """(full command, one-line help, parser) for the parser and each of its subcommands."""
    yield name or parser.prog, parser.description or "", parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for sub_name, sub in action.choices.items():
                full = f"{name or parser.prog} {sub_name}"
                for path, text, subparser in commands(sub, full):
                    yield path, text if path != full else helps.get(sub_name, text), subparser


def cli_page(title: str, intro: str, parser: argparse.ArgumentParser) -> str:
    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH
    try:
        out = [f"# {title}", "", intro, ""]
        for path, text, sub in commands(parser):
            out += [f"## `{path}`", ""]
            if text and sub is not parser:  # the top level's description is in its --help
                out += [text[0].upper() + text[1:].rstrip(".") + ".", ""]
            out += ["```text", sub.format_help().rstrip(), "```", ""]
        return "\n".join(out)
    finally:
        if previous is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = previous


# --- the pages, and the hook ----------------------------------------------------------------


def pages() -> dict[str, str]:
    """Every generated page: its path under docs/ and its Markdown."""
    from breaker import cli, plugin
    from breaker.api.crd import RESOURCES

    out: dict[str, str] = {}
    rows = []
    for resource in RESOURCES:
        path = f"reference/{resource.kind.lower()}.md"
        out[path] = resource_page(resource)
        summary = (resource.model.__doc__ or "").strip().splitlines()[0]
        rows.append(f"| [{resource.kind}]({resource.kind.lower()}.md) | {summary} |")
    out["reference/cli.md"] = cli_page(
        "breaker",
        "The `breaker` command: the operator (`run`, `node-agent`), policy checks offline "
        "(`backtest`, `queries`), and in a clone the developer tooling (`demo`, `sim`, "
        "`crds`, `cluster`: `tooling/breaker_tooling/commands.py`). Generated from its "
        "argparse parser (`operator/breaker/cli.py`); each block is what `--help` prints.",
        cli.build_parser(),
    )
    out["reference/kubectl-breaker.md"] = cli_page(
        "kubectl breaker",
        "The kubectl plugin (`kubectl-breaker` on `PATH`). Generated from its argparse parser "
        "(`operator/breaker/plugin.py`); each block is what `--help` prints.",
        plugin.build_parser(),
    )
    out["reference/index.md"] = "\n".join(
        [
            "# Reference",
            "",
            "Generated when the site is built, from the code itself, so it cannot drift.",
            "",
            "## Custom resources",
            "",
            "Every field with the description `kubectl explain` shows, its validations and",
            "the columns `kubectl get` prints.",
            "",
            "| kind | what it is |",
            "|---|---|",
            *rows,
            "",
            "## Command lines",
            "",
            "- [`breaker`](cli.md): the operator and the project's tooling.",
            "- [`kubectl breaker`](kubectl-breaker.md): the plugin admins use.",
            "",
        ]
    )
    return out


def on_files(files: Any, config: Any) -> Any:
    from mkdocs.structure.files import File

    for path, content in pages().items():
        files.append(File.generated(config, path, content=content))
    figure = ROOT / "bench" / "results" / "summary.png"
    files.append(File.generated(config, "figures/summary.png", abs_src_path=str(figure)))
    return files
