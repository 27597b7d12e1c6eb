"""The documentation: the README stays a front page, its links into docs/ resolve, and the
reference pages the site generates carry every CRD field with the description `kubectl
explain` shows (read from the committed crds/) and every command of both CLIs.

The strict build of the whole site (broken links and pages missing from the nav fail) is
`make docs`, which `make lint` runs; these tests check what that build cannot: the README,
which is not part of the site, and what the generated pages must contain."""

from __future__ import annotations

import argparse
import html
import importlib.util
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from breaker import cli, plugin

ROOT = Path(__file__).parents[2]
README = ROOT / "README.md"


def hook() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "docs_reference_hook", ROOT / "docs" / "hooks" / "reference.py"
    )
    assert spec
    assert spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pages() -> dict[str, str]:
    generated: dict[str, str] = hook().pages()
    return generated


def test_the_readme_is_a_front_page() -> None:
    assert len(README.read_text().splitlines()) < 250


def test_the_readme_keeps_the_two_commands() -> None:
    text = README.read_text()
    assert "make demo         # the ROME incident replayed on the local cluster" in text
    assert (
        "make test         # lint first (ruff, mypy --strict, the layer contracts, the docs)"
        in text
    )


def test_the_readmes_links_resolve() -> None:
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README.read_text())
    local = [link for link in links if "://" not in link]
    assert local, "the README links into docs/"
    for link in local:
        assert (ROOT / link).exists(), link


def described(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, str]]:
    """(field path, description) for every described field, as kubectl explain walks it."""
    node = schema
    while node.get("type") == "array" and "items" in node:
        node = node["items"]
    for name, sub in node.get("properties", {}).items():
        here = f"{path}.{name}" if path else name
        if sub.get("description"):
            yield here, sub["description"]
        yield from described(sub, here)
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        yield from described(extra, path)


@pytest.mark.parametrize(
    "crd", sorted((ROOT / "crds").glob("*.breaker.dev.yaml")), ids=lambda p: p.stem
)
def test_every_crd_field_is_in_the_reference(crd: Path, pages: dict[str, str]) -> None:
    manifest = yaml.safe_load(crd.read_text())
    kind = manifest["spec"]["names"]["kind"]
    page = pages[f"reference/{kind.lower()}.md"]
    schema = manifest["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    fields = list(described(schema))
    assert any("." in path for path, _ in fields), "the walk found no nested field"
    for path, description in fields:
        assert f"<code>{html.escape(path)}</code>" in page, path
        assert html.escape(description) in page, path


def subcommands(parser: argparse.ArgumentParser, prefix: str) -> Iterator[str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield f"{prefix} {name}"
                yield from subcommands(sub, f"{prefix} {name}")


@pytest.mark.parametrize(
    ("page", "parser", "prog"),
    [
        ("reference/cli.md", cli.build_parser(), "breaker"),
        ("reference/kubectl-breaker.md", plugin.build_parser(), "kubectl breaker"),
    ],
)
def test_every_command_and_option_is_in_the_reference(
    page: str, parser: argparse.ArgumentParser, prog: str, pages: dict[str, str]
) -> None:
    text = pages[page]
    commands = list(subcommands(parser, prog))
    assert len(commands) >= 5
    for command in commands:
        assert f"## `{command}`" in text, command
    options = {
        option
        for command_parser in [parser, *_parsers(parser)]
        for action in command_parser._actions
        for option in action.option_strings
    }
    for option in options:
        assert option in text, option


def _parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield sub
                yield from _parsers(sub)


def test_the_nav_names_every_page(pages: dict[str, str]) -> None:
    """Every page in docs/ and every generated one is in mkdocs.yml's nav (the strict build
    fails on a page left out too, through `validation.omitted_files`)."""
    config = (ROOT / "mkdocs.yml").read_text()
    docs = ROOT / "docs"
    written = {str(p.relative_to(docs)) for p in docs.rglob("*.md")} | set(pages)
    for page in written:
        assert re.search(rf"^\s+- (?:[^\n]*: )?{re.escape(page)}$", config, re.M), page


def _anchors(page: str) -> set[str]:
    """The ids a generated page offers: its fields' and its headings' (as the toc slugs
    them: "## `breaker run`" is #breaker-run)."""
    ids = set(re.findall(r'id="([^"]+)"', page))
    for heading in re.findall(r"^#+ (.+)$", page, re.M):
        ids.add(re.sub(r"[^\w.-]", "", heading.strip().lower().replace(" ", "-")))
    return ids


def test_the_concept_pages_links_into_the_reference_name_anchors_it_has(
    pages: dict[str, str],
) -> None:
    """The strict build checks links to pages, not anchors inside generated ones."""
    docs = ROOT / "docs"
    linked = 0
    for source in docs.rglob("*.md"):
        for target, anchor in re.findall(r"\]\(([^)#\s]*reference/[\w-]+\.md)#([^)\s]+)\)",
                                         source.read_text()):  # fmt: skip
            page = (source.parent / target).resolve().relative_to(docs.resolve())
            assert anchor in _anchors(pages[str(page)]), f"{source.name}: {target}#{anchor}"
            linked += 1
    assert linked >= 10
