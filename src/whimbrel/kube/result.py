"""The last line of a migration pod's log: the result of the in-cluster run, for the CLI.

    WHIMBREL-RESULT {"exit_code": 0, "stdout": "Applied 2 migrations ...\\n", "error": null}

`stdout` is exactly what the local command would have printed on stdout (the text report,
or the JSON document with `-o json`), so the CLI following the Job prints the same thing a
local run prints. `error` is the message a local run would print on stderr. One line of
JSON, so a log line can never be mistaken for it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

PREFIX = "WHIMBREL-RESULT "


@dataclass(frozen=True)
class PodResult:
    exit_code: int
    stdout: str
    error: str | None = None


def format_line(result: PodResult) -> str:
    doc = {"exit_code": result.exit_code, "stdout": result.stdout, "error": result.error}
    return PREFIX + json.dumps(doc, separators=(",", ":"))


def parse_line(line: str) -> PodResult | None:
    """The result on this log line, or None if it is not a well-formed result line."""
    if not line.startswith(PREFIX):
        return None
    try:
        doc = json.loads(line[len(PREFIX) :])
    except ValueError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("exit_code"), int):
        return None
    stdout = doc.get("stdout")
    error = doc.get("error")
    return PodResult(
        exit_code=doc["exit_code"],
        stdout=stdout if isinstance(stdout, str) else "",
        error=error if isinstance(error, str) else None,
    )
