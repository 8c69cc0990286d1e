"""The README's Python examples run as written, and what it says of `import whimbrel` holds.

Every ```python and ```pycon block runs, in order, in one namespace, from a temporary folder
holding a copy of examples/ (the README's examples run from the repository root). A
```pycon block is a doctest: its printed output is checked. A block right after
`<!-- readme-test: skip ... -->` is not run.
"""

from __future__ import annotations

import doctest
import io
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import EXAMPLES, Database

README = Path(__file__).resolve().parent.parent / "README.md"
_BLOCK = re.compile(
    r"(?P<skip><!-- readme-test: skip[^>]*-->\n)?^```(?P<lang>python|pycon)\n(?P<code>.*?)^```",
    re.MULTILINE | re.DOTALL,
)


def readme_blocks() -> list[tuple[str, str, int]]:
    text = README.read_text()
    return [
        (m["lang"], m["code"], text.count("\n", 0, m.start("code")) + 1)
        for m in _BLOCK.finditer(text)
        if not m["skip"]
    ]


def test_the_readme_has_python_examples() -> None:
    langs = [lang for lang, _, _ in readme_blocks()]
    assert langs.count("pycon") >= 3 and langs.count("python") >= 2


def test_readme_python_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copytree(EXAMPLES, tmp_path / "examples")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    namespace: dict[str, object] = {"__name__": "readme"}
    parser = doctest.DocTestParser()
    runner = doctest.DocTestRunner(
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False
    )
    for lang, code, line in readme_blocks():
        where = f"README.md, the {lang} block at line {line}"
        if lang == "python":
            exec(compile(code, f"README.md:{line}", "exec"), namespace)
            continue
        test = parser.get_doctest(code, namespace, where, str(README), line - 1)
        report = io.StringIO()
        result = runner.run(test, out=report.write, clear_globs=False)
        assert result.failed == 0, f"{where}:\n{report.getvalue()}"
        namespace.update(test.globs)


_HEAVY = ("psycopg", "pymysql", "click", "rich", "watchfiles", "whimbrel.api", "whimbrel.engine")


def test_import_whimbrel_is_light() -> None:
    probe = (
        f"import sys, whimbrel\nheavy = [m for m in {_HEAVY!r} if m in sys.modules]\nprint(heavy)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_every_api_name_resolves_even_after_its_module_is_imported() -> None:
    # A submodule named like an API function would replace the function once imported.
    probe = (
        "import importlib, pkgutil, whimbrel\n"
        "for info in pkgutil.walk_packages(whimbrel.__path__, 'whimbrel.'):\n"
        "    if info.name not in ('whimbrel.__main__', 'whimbrel.pytest_plugin'):\n"
        "        importlib.import_module(info.name)\n"
        "bad = [n for n in whimbrel.__all__ if n != '__version__'\n"
        "       and type(getattr(whimbrel, n)).__name__ == 'module']\n"
        "print(bad)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
    assert callable(__import__("whimbrel").watch)


def walkthrough_commands() -> list[tuple[str, list[str]]]:
    """The `$ command` lines of the README's walkthrough, each with the output shown."""
    text = README.read_text()
    start = text.index("\n## Walkthrough")
    section = text[start : text.index("\n## ", start + 1)]
    commands: list[tuple[str, list[str]]] = []
    for block in re.findall(r"```console\n(.*?)```", section, re.DOTALL):
        for line in textwrap.dedent(block).splitlines():
            if line.startswith("$ "):
                commands.append((line[2:], []))
            else:
                commands[-1][1].append(line)
    return commands


def _normalized(lines: list[str]) -> list[str]:
    # Timings vary; the order of stdout and stderr lines does too.
    return sorted(re.sub(r"\d+ ms\b", "N ms", line) for line in lines if line)


def test_readme_walkthrough_commands_print_what_it_shows(
    tmp_path: Path, postgres_db: Database
) -> None:
    commands = walkthrough_commands()
    assert [c.split()[2] for c, _ in commands] == ["manifest", "bundle", "provision"]
    shutil.copytree(EXAMPLES, tmp_path / "examples")
    # The walkthrough's database, on the test server, under a fresh name.
    shown_url = "postgres://postgres@127.0.0.1:5432/ftl_testdb"
    name = f"{postgres_db.name}_walk"
    server = postgres_db.url.rpartition("/")[0]
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"} | {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    }
    try:
        for command, shown in commands:
            real = command.replace(shown_url, f"{server}/{name}")
            result = subprocess.run(
                ["bash", "-c", real], cwd=tmp_path, env=env, capture_output=True, text=True
            )
            assert result.returncode == 0, result.stderr
            expected = [
                line.replace(shown_url, f"{server}/{name}").replace("ftl_testdb", name)
                for line in shown
            ]
            printed = (result.stdout + result.stderr).splitlines()
            assert _normalized(printed) == _normalized(expected), command
    finally:
        from whimbrel.provisioning import drop_database

        drop_database(f"{server}/{name}")


def test_documented_submodules_need_no_import_of_their_own() -> None:
    # The README names whimbrel.watcher.sync and whimbrel.watcher.WatchEvent.
    probe = (
        "import sys, whimbrel\n"
        "assert 'whimbrel.watcher' not in sys.modules\n"
        "print(whimbrel.watcher.sync.__name__, whimbrel.watcher.WatchEvent.__name__,\n"
        "      whimbrel.provisioning.create_database.__name__)\n"
        "try:\n"
        "    whimbrel.nope\n"
        "except AttributeError:\n"
        "    print('no nope')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=False
    )
    assert result.stdout.split() == ["sync", "WatchEvent", "create_database", "no", "nope"], (
        result.stderr
    )


def test_one_set_name_as_a_string_is_that_set(tmp_path: Path) -> None:
    # A str is a sequence of str: sets="enrichments" was the sets 'e', 'n', 'r', ...
    import whimbrel

    url = f"sqlite:///{tmp_path / 'one.db'}"
    dracon = EXAMPLES / "dracon"
    result = whimbrel.apply(dracon, url, sets="enrichments")
    assert result.sets == ["enrichments"]
    assert [s.name for s in whimbrel.inspect(dracon, url, sets="enrichments")] == ["enrichments"]
    assert [s.name for s in whimbrel.load_sets(dracon, "enrichments")] == ["enrichments"]
