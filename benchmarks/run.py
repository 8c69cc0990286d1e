#!/usr/bin/env python3
"""Benchmarks of whimbrel against the floor (psql, mariadb), dbmate and yoyo-migrations.

    python benchmarks/run.py            # the full run: 7 runs per measure (about 25 minutes)
    python benchmarks/run.py --quick    # 3 runs, smaller big files: for development
    python benchmarks/run.py --setup    # first install dbmate (npm) and yoyo (a scratch venv)
    python benchmarks/run.py --self-check   # generate the trees and check them; no database

Every measure runs each tool on a fresh database, in the same run, interleaving the tools
run by run so that noise from the rest of the machine spreads over all of them. The table
shows the median of the runs, the ratio to the floor and to dbmate, and each bar of issue 5
with PASS or FAIL. Never run as a timed unit test: timings are only comparable within one
run on one machine.

The peers live outside the repository, in ~/.cache/whimbrel-bench (override with
WHIMBREL_BENCH_CACHE): dbmate from npm, yoyo-migrations from PyPI in a venv of its own
(benchmarks/requirements.txt). A peer that is not installed is left out of the table.
Servers: WHIMBREL_BENCH_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/test)
and WHIMBREL_BENCH_MYSQL_URL (default mysql://root@127.0.0.1:3306/test); the benchmark
creates databases named whimbrel_bench_* on them and drops them afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("WHIMBREL_BENCH_CACHE", Path.home() / ".cache" / "whimbrel-bench"))
DBMATE = CACHE / "node_modules" / ".bin" / "dbmate"
YOYO_VENV = CACHE / "yoyo-venv"
YOYO = YOYO_VENV / "bin" / "yoyo"
POSTGRES_URL = os.environ.get(
    "WHIMBREL_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
MYSQL_URL = os.environ.get("WHIMBREL_BENCH_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")
MB = 1024 * 1024


def whimbrel_command() -> list[str]:
    """The real CLI of the Python running this script (its venv), as users run it."""
    script = Path(sys.executable).with_name("whimbrel")
    if script.exists():
        return [str(script)]
    found = shutil.which("whimbrel")
    return [found] if found else [sys.executable, "-m", "whimbrel"]


# -- trees ---------------------------------------------------------------------------------
@dataclass
class Tree:
    """One migration tree in the formats of every tool, plus the floor's all.sql."""

    name: str
    root: Path  # whimbrel: a set folder, or a folder of sets (dbmate-format files)
    dbmate_dirs: list[Path]  # the same files, set by set
    yoyo_dir: Path  # up SQL only (yoyo runs the whole file)
    all_sql: Path  # every up statement, in order, for psql/mariadb
    count: int


def _table(set_index: int, number: int) -> str:
    return f"t_{set_index:03d}_{number:05d}"


def make_tree(base: Path, name: str, sets: int, per_set: int) -> Tree:
    """`sets` x `per_set` trivial migrations: one CREATE TABLE each, with its DROP as down."""
    root = base / name / "whimbrel"
    yoyo_dir = base / name / "yoyo"
    yoyo_dir.mkdir(parents=True)
    dirs = []
    all_lines = []
    for s in range(sets):
        folder = root / f"set_{s:03d}" if sets > 1 else root / "bench"
        folder.mkdir(parents=True)
        dirs.append(folder)
        for n in range(1, per_set + 1):
            table = _table(s, n)
            create = f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, name VARCHAR(100));"
            version = s * per_set + n
            (folder / f"{version:06d}_create_{table}.sql").write_text(
                f"-- migrate:up\n{create}\n\n-- migrate:down\nDROP TABLE {table};\n"
            )
            (yoyo_dir / f"{version:06d}_create_{table}.sql").write_text(create + "\n")
            all_lines.append(create)
    all_sql = base / name / "all.sql"
    all_sql.write_text("\n".join(all_lines) + "\n")
    path = root if sets > 1 else root / "bench"
    return Tree(name, path, dirs, yoyo_dir, all_sql, sets * per_set)


def make_big_file(base: Path, megabytes: int) -> Path:
    """One set: a table, then one migration of about `megabytes` MB of multi-row INSERTs."""
    folder = base / f"big{megabytes}" / "big"
    folder.mkdir(parents=True)
    (folder / "001_table.up.sql").write_text(
        "CREATE TABLE big_rows (id INTEGER PRIMARY KEY, payload VARCHAR(200));\n"
    )
    rows_per_statement = 100
    payload = "x" * 80
    target = megabytes * MB
    next_id = 1
    written = 0
    with (folder / "002_rows.up.sql").open("w") as out:
        while written < target:
            values = ",\n".join(
                f"({i}, '{payload}')" for i in range(next_id, next_id + rows_per_statement)
            )
            next_id += rows_per_statement
            statement = f"INSERT INTO big_rows (id, payload) VALUES\n{values};\n"
            out.write(statement)
            written += len(statement)
    return folder


# -- servers -------------------------------------------------------------------------------
class Server:
    """A database server: fresh databases, URLs for every tool, the floor commands."""

    name: str
    label: str

    def create(self) -> str:
        raise NotImplementedError

    def drop(self, database: str) -> None:
        raise NotImplementedError

    def url(self, database: str, tool: str) -> str:
        raise NotImplementedError

    def floors(self, database: str, all_sql: Path) -> dict[str, tuple[list[str], Path | None]]:
        raise NotImplementedError

    def version(self) -> str:
        raise NotImplementedError

    def settle(self) -> None:
        """Start every timed run from the same state: nothing left to write back from the
        runs before it (each tool pays for its own writes, not for the previous tool's)."""
        os.sync()


def _fresh_name() -> str:
    return f"whimbrel_bench_{uuid.uuid4().hex[:10]}"


class Postgres(Server):
    name = "postgres"
    label = "PostgreSQL"

    def __init__(self, url: str) -> None:
        self.base = url
        self.parts = urlsplit(url)

    def _with(self, database: str, scheme: str = "postgresql") -> str:
        netloc = self.parts.netloc
        return f"{scheme}://{netloc}/{database}"

    def _admin(self, sql: str) -> str:
        return subprocess.run(
            ["psql", self.base, "-qAtX", "-v", "ON_ERROR_STOP=1", "-c", sql],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()

    def create(self) -> str:
        name = _fresh_name()
        self._admin(f'CREATE DATABASE "{name}"')
        return name

    def drop(self, database: str) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')

    def url(self, database: str, tool: str) -> str:
        # dbmate wants sslmode spelled out; yoyo's postgresql:// uses psycopg2.
        if tool == "dbmate":
            return self._with(database, "postgres") + "?sslmode=disable"
        return self._with(database)

    def floors(self, database: str, all_sql: Path) -> dict[str, tuple[list[str], Path | None]]:
        url = self._with(database)
        base = ["psql", url, "-qX", "-v", "ON_ERROR_STOP=1", "-o", "/dev/null"]
        return {
            "psql -1": ([*base, "-1", "-f", str(all_sql)], None),
            "psql": ([*base, "-f", str(all_sql)], None),
        }

    def version(self) -> str:
        return self._admin("SHOW server_version")

    def settle(self) -> None:
        # CREATE DATABASE copies the template through the WAL: checkpoint it now, not
        # during the run that follows (which then also starts a fresh checkpoint cycle).
        with contextlib.suppress(subprocess.CalledProcessError):  # not a superuser
            self._admin("CHECKPOINT")
        super().settle()


class MariaDB(Server):
    name = "mysql"
    label = "MariaDB"

    def __init__(self, url: str) -> None:
        self.parts = urlsplit(url)
        self.client = shutil.which("mariadb") or "mysql"

    def _client(self, database: str | None = None) -> list[str]:
        p = self.parts
        command = [self.client, "-h", p.hostname or "127.0.0.1", "-P", str(p.port or 3306)]
        command += ["-u", p.username or "root"]
        if p.password:
            command.append(f"-p{p.password}")
        return [*command, database] if database else command

    def _admin(self, sql: str) -> str:
        return subprocess.run(
            [*self._client(), "-N", "-e", sql], check=True, capture_output=True, text=True
        ).stdout.strip()

    def create(self) -> str:
        name = _fresh_name()
        self._admin(f"CREATE DATABASE `{name}`")
        return name

    def drop(self, database: str) -> None:
        self._admin(f"DROP DATABASE IF EXISTS `{database}`")

    def url(self, database: str, tool: str) -> str:
        p = self.parts
        auth = p.username or "root"
        if p.password:
            auth += f":{p.password}"
        return f"mysql://{auth}@{p.hostname}:{p.port or 3306}/{database}"

    def floors(self, database: str, all_sql: Path) -> dict[str, tuple[list[str], Path | None]]:
        return {"mariadb <": (self._client(database), all_sql)}

    def version(self) -> str:
        return self._admin("SELECT VERSION()")

    def settle(self) -> None:
        # MariaDB has no CHECKPOINT, and with innodb_max_dirty_pages_pct_lwm=0 (the default)
        # InnoDB leaves dirty pages in the buffer pool until it is ~90% dirty: the run after
        # a heavy one would write back that run's pages. Ask the page cleaner to write
        # everything back now, wait for it, and put the setting back.
        try:
            before = self._admin("SELECT @@GLOBAL.innodb_max_dirty_pages_pct")
            self._admin("SET GLOBAL innodb_max_dirty_pages_pct = 0")
        except subprocess.CalledProcessError:  # no privilege to: time as the server is
            super().settle()
            return
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                dirty = self._admin(
                    "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS "
                    "WHERE VARIABLE_NAME = 'INNODB_BUFFER_POOL_PAGES_DIRTY'"
                )
                if int(dirty or 0) == 0:
                    break
                time.sleep(0.1)
        finally:
            self._admin(f"SET GLOBAL innodb_max_dirty_pages_pct = {float(before)}")
        super().settle()


# -- running and timing one process --------------------------------------------------------
@dataclass
class Sample:
    seconds: float
    max_rss_mb: float


class BenchError(RuntimeError):
    pass


def run_timed(
    command: Sequence[str], *, stdin: Path | None = None, ok: Sequence[int] = (0,)
) -> Sample:
    """Run a command to its end; wall time and the peak RSS of that process (wait4)."""
    with tempfile.TemporaryFile() as errors:
        stdin_file = stdin.open("rb") if stdin else subprocess.DEVNULL
        try:
            started = time.perf_counter()
            process = subprocess.Popen(
                list(command), stdin=stdin_file, stdout=subprocess.DEVNULL, stderr=errors
            )
            _, status, usage = os.wait4(process.pid, 0)
            seconds = time.perf_counter() - started
            process.returncode = os.waitstatus_to_exitcode(status)
        finally:
            if stdin is not None:
                stdin_file.close()  # type: ignore[union-attr]
        if process.returncode not in ok:
            errors.seek(0)
            text = errors.read().decode(errors="replace")[-2000:]
            raise BenchError(f"{' '.join(command)} exited {process.returncode}:\n{text}")
    return Sample(seconds, usage.ru_maxrss / 1024)  # ru_maxrss is in KiB on Linux


def run_together(commands: Sequence[Sequence[str]]) -> float:
    """Start all commands at once; the wall time until the last one ends."""
    started = time.perf_counter()
    processes = [
        subprocess.Popen(list(c), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for c in commands
    ]
    failures = []
    for process in processes:
        _, err = process.communicate()
        if process.returncode != 0:
            failures.append(err.decode(errors="replace")[-1000:])
    seconds = time.perf_counter() - started
    if failures:
        raise BenchError("a concurrent applier failed:\n" + failures[0])
    return seconds


# -- the tools -----------------------------------------------------------------------------
def whimbrel(*args: str) -> list[str]:
    return [*whimbrel_command(), "migrations", *args]


def dbmate(url: str, dirs: Sequence[Path], *args: str) -> list[str]:
    command = [str(DBMATE), "--url", url, "--no-dump-schema"]
    for folder in dirs:
        command += ["--migrations-dir", str(folder)]
    return [*command, *args]


def yoyo(url: str, folder: Path, command: str) -> list[str]:
    return [str(YOYO), command, "--batch", "--no-config-file", "--database", url, str(folder)]


# -- measures ------------------------------------------------------------------------------
@dataclass
class Results:
    runs: int
    rows: list[tuple[str, str, str, list[float], str]] = field(default_factory=list)
    bars: list[tuple[str, float | None, float, str]] = field(default_factory=list)
    # Per bar name: the ratio of each round's runs (the tools ran interleaved, round by round).
    rounds: dict[str, list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, server: str, measure: str, tool: str, values: list[float], unit: str) -> None:
        self.rows.append((server, measure, tool, values, unit))

    def median(self, server: str, measure: str, tool: str) -> float | None:
        for row in self.rows:
            if row[:3] == (server, measure, tool):
                return statistics.median(row[3])
        return None

    def values(self, server: str, measure: str, tool: str) -> list[float]:
        for row in self.rows:
            if row[:3] == (server, measure, tool):
                return row[3]
        return []

    def bar(
        self,
        name: str,
        value: float | None,
        limit: float,
        kind: str = "ratio",
        paired: tuple[str, str, str, str] | None = None,
    ) -> None:
        """`paired` (server, measure, tool, against) also records each round's ratio: shown
        beside the verdict, which stays the ratio of the medians."""
        self.bars.append((name, value, limit, kind))
        if paired is not None:
            server, measure, tool, against = paired
            mine, theirs = self.values(server, measure, tool), self.values(server, measure, against)
            self.rounds[name] = [a / b for a, b in zip(mine, theirs, strict=False) if b]


def with_fresh(server: Server, action: Callable[[str], float]) -> float:
    database = server.create()
    server.settle()
    try:
        return action(database)
    finally:
        server.drop(database)


# yoyo's full apply is shown for comparison only: at most this many runs of it.
YOYO_FULL_RUNS = 5


def measure_full_apply(server: Server, tree: Tree, results: Results) -> None:
    """Apply the whole tree to an empty database: floors, whimbrel, dbmate, yoyo."""
    tools: dict[str, Callable[[str], Sample]] = {}

    def floor_tool(name: str) -> Callable[[str], Sample]:
        def run(db: str) -> Sample:
            command, stdin = server.floors(db, tree.all_sql)[name]
            return run_timed(command, stdin=stdin)

        return run

    for name in server.floors("", tree.all_sql):
        tools[name] = floor_tool(name)
    tools["whimbrel"] = lambda db: run_timed(
        whimbrel("apply", str(tree.root), "--url", server.url(db, "whimbrel"))
    )
    if server.name != "mysql":  # DDL commits implicitly there: whimbrel refuses the option
        tools["whimbrel --single-transaction"] = lambda db: run_timed(
            whimbrel(
                "apply", str(tree.root), "--url", server.url(db, "whimbrel"), "--single-transaction"
            )
        )
    if DBMATE.exists():
        tools["dbmate"] = lambda db: run_timed(
            dbmate(server.url(db, "dbmate"), tree.dbmate_dirs, "up")
        )
    if YOYO.exists() and tree.count <= 1000:  # yoyo takes minutes for 10,000
        tools["yoyo"] = lambda db: run_timed(yoyo(server.url(db, "yoyo"), tree.yoyo_dir, "apply"))
    times: dict[str, list[float]] = {name: [] for name in tools}
    for run in range(results.runs):
        for name, tool in tools.items():
            if name == "yoyo" and run >= YOYO_FULL_RUNS:
                continue  # a minute a run on MariaDB, and no bar reads it
            times[name].append(with_fresh(server, lambda db, tool=tool: tool(db).seconds))  # type: ignore[misc]
    for name, values in times.items():
        results.add(server.label, f"full apply, {tree.count} migrations", name, values, "s")


def measure_noop(server: Server, tree: Tree, results: Results) -> None:
    """Start-up dominated: apply and inspect on an up-to-date database (one per tool, as
    each keeps its own records and the same tables)."""
    databases: dict[str, str] = {}
    try:
        for tool in ("whimbrel", "dbmate", "yoyo"):
            databases[tool] = server.create()
        url = server.url(databases["whimbrel"], "whimbrel")
        run_timed(whimbrel("apply", str(tree.root), "--url", url))
        tools: dict[str, list[str]] = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "whimbrel apply": whimbrel("apply", str(tree.root), "--url", url),
            "whimbrel inspect": whimbrel("inspect", str(tree.root), "--url", url),
        }
        if server.name == "postgres":
            tools["psql -c 'SELECT 1'"] = ["psql", url, "-qAtX", "-c", "SELECT 1"]
        else:
            tools["mariadb -e 'SELECT 1'"] = [
                *server.floors(databases["whimbrel"], tree.all_sql)["mariadb <"][0],
                "-e",
                "SELECT 1",
            ]
        if DBMATE.exists():
            dbmate_url = server.url(databases["dbmate"], "dbmate")
            run_timed(dbmate(dbmate_url, tree.dbmate_dirs, "up"))
            tools["dbmate up"] = dbmate(dbmate_url, tree.dbmate_dirs, "up")
            tools["dbmate status"] = dbmate(dbmate_url, tree.dbmate_dirs, "status")
        if YOYO.exists():
            yoyo_url = server.url(databases["yoyo"], "yoyo")
            run_timed(yoyo(yoyo_url, tree.yoyo_dir, "apply"))
            tools["yoyo apply"] = yoyo(yoyo_url, tree.yoyo_dir, "apply")
            tools["yoyo list"] = yoyo(yoyo_url, tree.yoyo_dir, "list")
        server.settle()  # the applies above were set-up, not part of any timing
        times: dict[str, list[float]] = {name: [] for name in tools}
        for _ in range(max(results.runs, 5) * 2):  # cheap: more runs, steadier medians
            for name, command in tools.items():
                times[name].append(run_timed(command).seconds)
        for name, values in times.items():
            results.add(server.label, f"no-op, {tree.count} migrations", name, values, "s")
    finally:
        for database in databases.values():
            server.drop(database)


def measure_inspect_scaling(server: Server, small: Tree, large: Tree, results: Results) -> None:
    """inspect of 100 migrations in one set against 10,000 in 100 sets, both up to date;
    and the peak RSS of the large one."""
    databases = {}
    try:
        for tree in (small, large):
            databases[tree.name] = database = server.create()
            url = server.url(database, "whimbrel")
            run_timed(whimbrel("apply", str(tree.root), "--url", url))
        server.settle()  # the applies above were set-up, not part of any timing
        samples: dict[str, list[Sample]] = {small.name: [], large.name: []}
        for _ in range(results.runs):
            for tree in (small, large):
                url = server.url(databases[tree.name], "whimbrel")
                samples[tree.name].append(
                    run_timed(whimbrel("inspect", str(tree.root), "--url", url))
                )
        for tree in (small, large):
            label = f"inspect, {tree.count} migrations in {len(tree.dbmate_dirs)} set(s)"
            results.add(
                server.label, label, "whimbrel", [s.seconds for s in samples[tree.name]], "s"
            )
        results.add(
            server.label,
            f"peak RSS, inspect of {large.count} migrations",
            "whimbrel",
            [s.max_rss_mb for s in samples[large.name]],
            "MB",
        )
    finally:
        for database in databases.values():
            server.drop(database)


def measure_concurrency(server: Server, tree: Tree, results: Results) -> None:
    """The whole tree applied by 8 processes at once, against one process alone."""
    one: list[float] = []
    eight: list[float] = []
    for _ in range(results.runs):
        one.append(
            with_fresh(
                server,
                lambda db: (
                    run_timed(
                        whimbrel("apply", str(tree.root), "--url", server.url(db, "whimbrel"))
                    ).seconds
                ),
            )
        )
        eight.append(
            with_fresh(
                server,
                lambda db: run_together(
                    [whimbrel("apply", str(tree.root), "--url", server.url(db, "whimbrel"))] * 8
                ),
            )
        )
    label = f"apply {tree.count} migrations, concurrent"
    results.add(server.label, label, "whimbrel, 1 process", one, "s")
    results.add(server.label, label, "whimbrel, 8 processes", eight, "s")


def measure_big_file(server: Server | None, folder: Path, megabytes: int, results: Results) -> None:
    """Peak RSS (and time) of applying one big migration file."""
    rss = []
    seconds = []
    for _ in range(max(1, results.runs // 2)):  # slow and steady: fewer runs
        if server is None:
            with tempfile.TemporaryDirectory() as scratch:
                url = f"sqlite:///{scratch}/big.db"
                sample = run_timed(whimbrel("apply", str(folder), "--url", url))
        else:
            database = server.create()
            try:
                url = server.url(database, "whimbrel")
                sample = run_timed(whimbrel("apply", str(folder), "--url", url))
            finally:
                server.drop(database)
        rss.append(sample.max_rss_mb)
        seconds.append(sample.seconds)
    label = server.label if server else "SQLite"
    results.add(label, f"peak RSS, apply one {megabytes} MB file", "whimbrel", rss, "MB")
    results.add(label, f"time, apply one {megabytes} MB file", "whimbrel", seconds, "s")


def measure_sqlite_inspect(large: Tree, results: Results) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        url = f"sqlite:///{scratch}/inspect.db"
        run_timed(whimbrel("apply", str(large.root), "--url", url, "--single-transaction"))
        samples = [
            run_timed(whimbrel("inspect", str(large.root), "--url", url))
            for _ in range(results.runs)
        ]
    results.add(
        "SQLite",
        f"peak RSS, inspect of {large.count} migrations",
        "whimbrel",
        [s.max_rss_mb for s in samples],
        "MB",
    )


# -- bars and the table --------------------------------------------------------------------
def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def judge(results: Results, servers: Sequence[Server], tree_1000: Tree, big_mb: int) -> None:
    n = tree_1000.count
    for server in servers:
        s = server.label
        full = f"full apply, {n} migrations"
        floor = "psql -1" if server.name == "postgres" else "mariadb <"
        whim = results.median(s, full, "whimbrel")
        results.bar(
            f"{s}: full apply <= 1.3x {floor}",
            ratio(whim, results.median(s, full, floor)),
            1.3,
            paired=(s, full, "whimbrel", floor),
        )
        if server.name == "postgres":
            single = results.median(s, full, "whimbrel --single-transaction")
            results.bar(
                f"{s}: --single-transaction <= 1.1x psql -1",
                ratio(single, results.median(s, full, floor)),
                1.1,
                paired=(s, full, "whimbrel --single-transaction", floor),
            )
        noop = f"no-op, {n} migrations"
        yoyo_noop = results.median(s, noop, "yoyo apply")
        for command in ("apply", "inspect"):
            results.bar(
                f"{s}: no-op {command} <= 0.8x yoyo apply",
                ratio(results.median(s, noop, f"whimbrel {command}"), yoyo_noop),
                0.8,
            )
        concurrent = f"apply {n} migrations, concurrent"
        results.bar(
            f"{s}: 8 concurrent appliers <= 1.5x one",
            ratio(
                results.median(s, concurrent, "whimbrel, 8 processes"),
                results.median(s, concurrent, "whimbrel, 1 process"),
            ),
            1.5,
            paired=(s, concurrent, "whimbrel, 8 processes", "whimbrel, 1 process"),
        )
        small = results.median(s, "inspect, 100 migrations in 1 set(s)", "whimbrel")
        large = results.median(s, "inspect, 10000 migrations in 100 set(s)", "whimbrel")
        results.bar(f"{s}: inspect 10,000/100 sets <= 3x inspect 100", ratio(large, small), 3.0)
    for label in [s.label for s in servers] + ["SQLite"]:
        for measure in (
            "peak RSS, inspect of 10000 migrations",
            f"peak RSS, apply one {big_mb} MB file",
        ):
            value = results.median(label, measure, "whimbrel")
            if value is not None:
                results.bar(f"{label}: {measure} < 150 MB", value, 150.0, "MB")


def machine_facts(servers: Sequence[Server]) -> list[str]:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        memory = next(
            line.split()[1]
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        )
        ram = f"{int(memory) / MB:.1f} GiB"
    except (OSError, StopIteration):
        ram = "unknown"
    os_name = platform.platform()
    try:
        pretty = next(
            line.split("=", 1)[1].strip('"')
            for line in Path("/etc/os-release").read_text().splitlines()
            if line.startswith("PRETTY_NAME=")
        )
        os_name = f"{pretty} ({platform.release()})"
    except (OSError, StopIteration):
        pass
    facts = [
        f"CPU: {cpu}, {os.cpu_count()} cores; RAM: {ram}; OS: {os_name}",
        f"Python {platform.python_version()}; load average at start: "
        + ", ".join(f"{x:.2f}" for x in os.getloadavg()),
    ]
    for server in servers:
        facts.append(f"{server.label} {server.version()}")
    tools = []
    if DBMATE.exists():
        tools.append(
            subprocess.run(
                [str(DBMATE), "--version"], capture_output=True, text=True
            ).stdout.strip()
        )
    if YOYO.exists():
        version = subprocess.run(
            [
                str(YOYO_VENV / "bin" / "python"),
                "-c",
                "import importlib.metadata as m; print(m.version('yoyo-migrations'))",
            ],
            capture_output=True,
            text=True,
        ).stdout.strip()
        tools.append(f"yoyo-migrations {version}")
    facts.append("peers: " + (", ".join(tools) or "none installed (run --setup)"))
    return facts


def render(results: Results, facts: Sequence[str], wall: float) -> str:
    lines = ["Machine:", *[f"  {f}" for f in facts], ""]
    lines.append(
        f"Medians of {results.runs} runs (yoyo's full apply: {min(results.runs, YOYO_FULL_RUNS)}; "
        f"no-op: {max(results.runs, 5) * 2} runs; "
        f"big file: {max(1, results.runs // 2)}); benchmark wall time {wall:.0f} s."
    )
    lines.append("")
    header = "| database | measure | tool | median | xfloor | xdbmate | min-max |"
    lines += [header, "| --- | --- | --- | ---: | ---: | ---: | --- |"]
    for server, measure, tool, values, unit in results.rows:
        median = statistics.median(values)
        floor_tool = None
        if measure.startswith("full apply"):
            floor_tool = "psql -1" if server == "PostgreSQL" else "mariadb <"
        elif measure.startswith("no-op"):
            floor_tool = "python -c pass"
        floor = results.median(server, measure, floor_tool) if floor_tool else None
        peer = results.median(server, measure, "dbmate" if "full" in measure else "dbmate up")
        fmt = _seconds if unit == "s" else _megabytes
        lines.append(
            f"| {server} | {measure} | {tool} | {fmt(median)} | "
            f"{_times(ratio(median, floor)) if floor_tool != tool else '1.00x'} | "
            f"{_times(ratio(median, peer))} | {fmt(min(values))}-{fmt(max(values))} |"
        )
    lines += [
        "",
        "| bar | measured | limit | result | round by round: median (min-max) |",
        "| --- | ---: | ---: | --- | --- |",
    ]
    for name, value, limit, kind in results.bars:
        shown = (
            "n/a" if value is None else (f"{value:.2f}x" if kind == "ratio" else f"{value:.0f} MB")
        )
        wanted = f"{limit:g}x" if kind == "ratio" else f"{limit:g} MB"
        verdict = "n/a" if value is None else ("PASS" if value <= limit else "FAIL")
        per_round = results.rounds.get(name)
        spread = (
            f"{statistics.median(per_round):.2f}x ({min(per_round):.2f}-{max(per_round):.2f})"
            if per_round
            else ""
        )
        lines.append(f"| {name} | {shown} | {wanted} | {verdict} | {spread} |")
    if results.notes:
        lines += ["", *results.notes]
    return "\n".join(lines)


def _seconds(value: float) -> str:
    return f"{value:.3f} s"


def _megabytes(value: float) -> str:
    return f"{value:.0f} MB"


def _times(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}x"


# -- setup and self-check ------------------------------------------------------------------
def compile_whimbrel() -> str:
    """Write whimbrel's bytecode, as `pip install` of a wheel does (and yoyo's venv has).

    An editable install compiles at first import instead, and not at all when
    PYTHONDONTWRITEBYTECODE is set: every timed run would then pay ~35 ms of compiling that
    no installed copy pays.
    """
    found = subprocess.run(
        [
            str(Path(whimbrel_command()[0]).with_name("python")),
            "-c",
            "import os, whimbrel; print(os.path.dirname(whimbrel.__file__))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    subprocess.run([sys.executable, "-m", "compileall", "-q", found], check=True)
    return found


def setup_peers() -> None:
    CACHE.mkdir(parents=True, exist_ok=True)
    if not DBMATE.exists():
        subprocess.run(["npm", "install", "--prefix", str(CACHE), "dbmate"], check=True)
    if not YOYO.exists():
        subprocess.run([sys.executable, "-m", "venv", str(YOYO_VENV)], check=True)
        subprocess.run(
            [
                str(YOYO_VENV / "bin" / "pip"),
                "install",
                "--quiet",
                "-r",
                str(HERE / "requirements.txt"),
            ],
            check=True,
        )


def self_check() -> None:
    """Generate small trees and check them with whimbrel on SQLite: no server needed."""
    with tempfile.TemporaryDirectory() as scratch:
        base = Path(scratch)
        tree = make_tree(base, "one", 1, 5)
        sets = make_tree(base, "many", 3, 4)
        big = make_big_file(base, 1)
        assert len(list(tree.yoyo_dir.iterdir())) == 5
        assert tree.all_sql.read_text().count("CREATE TABLE") == 5
        for target in (tree, sets):
            url = f"sqlite:///{base}/{target.name}.db"
            run_timed(whimbrel("apply", str(target.root), "--url", url))
            run_timed(whimbrel("inspect", str(target.root), "--url", url))
        sample = run_timed(whimbrel("apply", str(big), "--url", f"sqlite:///{base}/big.db"))
        assert sample.max_rss_mb > 0
    print("self-check: OK")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Benchmark whimbrel against psql/mariadb, dbmate and yoyo (issue 5)."
    )
    parser.add_argument("--quick", action="store_true", help="3 runs and a 10 MB big file")
    parser.add_argument("--runs", type=int, help="runs per measure (default 7; --quick 3)")
    parser.add_argument(
        "--servers", default="postgres,mysql", help="comma-separated: postgres,mysql (default both)"
    )
    parser.add_argument(
        "--only",
        default="full,noop,inspect,concurrent,memory",
        help="comma-separated measures: full,noop,inspect,concurrent,memory",
    )
    parser.add_argument("--setup", action="store_true", help="install dbmate and yoyo first")
    parser.add_argument("--self-check", action="store_true", help="check the generators; no server")
    parser.add_argument("--output", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    if args.self_check:
        self_check()
        return 0
    if args.setup:
        setup_peers()
    runs = args.runs or (3 if args.quick else 7)
    big_mb = 10 if args.quick else 50
    only = set(args.only.split(","))
    chosen = args.servers.split(",")
    servers: list[Server] = []
    if "postgres" in chosen:
        servers.append(Postgres(POSTGRES_URL))
    if "mysql" in chosen:
        servers.append(MariaDB(MYSQL_URL))
    results = Results(runs=runs)
    if not DBMATE.exists() or not YOYO.exists():
        results.notes.append("Some peers are missing: run `python benchmarks/run.py --setup`.")
    facts = machine_facts(servers)
    facts.append(f"whimbrel: bytecode compiled in {compile_whimbrel()}")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="whimbrel-bench-") as scratch:
        base = Path(scratch)
        print("generating trees ...", file=sys.stderr)
        tree_100 = make_tree(base, "t100", 1, 100)
        tree_1000 = make_tree(base, "t1000", 1, 1000)
        tree_10k = make_tree(base, "t10k", 100, 100)
        big = make_big_file(base, big_mb) if "memory" in only else None
        for server in servers:
            steps: list[tuple[str, Callable[[], None]]] = [
                ("full", functools.partial(measure_full_apply, server, tree_1000, results)),
                ("noop", functools.partial(measure_noop, server, tree_1000, results)),
                (
                    "inspect",
                    functools.partial(measure_inspect_scaling, server, tree_100, tree_10k, results),
                ),
                ("concurrent", functools.partial(measure_concurrency, server, tree_1000, results)),
            ]
            if big is not None:
                steps.append(
                    ("memory", functools.partial(measure_big_file, server, big, big_mb, results))
                )
            for name, step in steps:
                if name in only:
                    print(f"{server.label}: {name} ...", file=sys.stderr)
                    step()
        if big is not None:
            print("SQLite: memory ...", file=sys.stderr)
            measure_big_file(None, big, big_mb, results)
            if "inspect" in only:
                measure_sqlite_inspect(tree_10k, results)
    judge(results, servers, tree_1000, big_mb)
    table = render(results, facts, time.perf_counter() - started)
    print(table)
    if args.output:
        args.output.write_text(table + "\n")
    return 1 if any(v is not None and v > limit for _, v, limit, _ in results.bars) else 0


if __name__ == "__main__":
    sys.exit(main())
