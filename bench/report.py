"""Weekly report build time and memory for many members: `afmon report weekly`'s work.

Fills a SQLite ledger per `--members` count with `bench/dashboard.py`'s fixture (its `fill`:
4 VOs of 3 groups, 2 facilities, hourly rollups of cpu_seconds, memory_byte_seconds and
session_seconds, each member busy `--active-hours` hours a day over `--days` days, sessions
and `--waits` JupyterHub starts over the last 30 days), then builds the report of `--week`
(default: the last complete week at the fixture's end, 2026-W52, whose month to date starts
on 2026-12-01) for the facility admin in all formats (CSV per level, JSON, HTML, APEL) and
writes the files, as `afmon report weekly` does (report/run.py `build_files`, then
report/files.py `write_files`). Each build runs in a fresh Python process, so that its peak
RSS (Linux's VmHWM: interpreter, pandas and plotly included) is the report's own.

Prints per member count the wall seconds of the document build, of the rendering and of the
writing; the process's CPU seconds for all three (every thread; steadier than the wall time
on a shared machine); the RSS after the imports (`start MB`), the peak once the document is
built (`build peak MB`) and the peak at the end; and the size of every written file.
`--profile FILE` writes a cProfile of the (last) build's main thread to FILE (the reads run
in the report's reader threads, report/prefetch.py).

    python bench/report.py [--members 10000] [--days 42] [--active-hours 4] [--waits 10000]
        [--week 2026-W52] [--db-dir DIR] [--profile FILE]

`--members 1000,10000` measures each count in turn. `--db-dir` keeps the filled ledgers
(`ledger-<members>-<days>d.sqlite`) and reuses them on the next run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any


def _dashboard_bench() -> ModuleType:
    """bench/dashboard.py, whose fixture this bench fills (loaded by path: as a module named
    `dashboard` it would be taken for the afmon package of that name)."""
    path = Path(__file__).resolve().with_name("dashboard.py")
    spec = importlib.util.spec_from_file_location("afmon_bench_dashboard", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


DEFAULT_WEEK = "2026-W52"  # the last week complete at the fixture's end (2027-01-01)


def _rss_mb() -> float:
    """Peak RSS of this process so far in MB: Linux's VmHWM (per address space, so it starts
    anew at exec; `ru_maxrss` would carry over the parent's peak from before the exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(db: Path, week_text: str, out_dir: Path, profile: Path | None) -> dict[str, Any]:
    """Build, render and write the report of `week_text` from `db` (in this process)."""
    from afmon.aggregator.core.settings import ServerSettings
    from afmon.aggregator.query.reads import LOCAL_ADMIN
    from afmon.aggregator.report.build import build_report
    from afmon.aggregator.report.files import FORMATS, render_files, write_files
    from afmon.aggregator.report.run import open_query
    from afmon.aggregator.report.week import Week

    url = f"sqlite:///{db}"
    settings = ServerSettings(database_url=url, local_mode=True)
    query = open_query(url)
    week = Week.parse(week_text)
    start_mb = _rss_mb()
    prof = None
    if profile is not None:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    cpu0, t0 = time.process_time(), time.perf_counter()
    doc = build_report(query, LOCAL_ADMIN, week, settings)
    t1, build_mb = time.perf_counter(), _rss_mb()
    files = render_files(doc, FORMATS)
    t2 = time.perf_counter()
    paths = write_files(files, out_dir)
    t3, cpu3 = time.perf_counter(), time.process_time()
    if prof is not None and profile is not None:
        prof.disable()
        prof.dump_stats(str(profile))
    return {
        "build_s": t1 - t0,
        "render_s": t2 - t1,
        "write_s": t3 - t2,
        "cpu_s": cpu3 - cpu0,
        "start_mb": start_mb,
        "build_mb": build_mb,
        "peak_mb": _rss_mb(),
        "files": {p.name: p.stat().st_size for p in paths},
    }


def run_one(db: Path, week: str, profile: Path | None) -> dict[str, Any]:
    """`measure` in a fresh process (this file with `--measure`), so the RSS is its own."""
    with tempfile.TemporaryDirectory(prefix="afmon-bench-report-out-") as out:
        cmd = [sys.executable, __file__, "--measure", str(db), "--week", week, "--out", out]
        if profile is not None:
            cmd += ["--profile", str(profile)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _mb(n: float) -> str:
    return f"{n / 1e6:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", default="10000", help="a count or a list: 1000,10000")
    ap.add_argument("--days", type=int, default=42)
    ap.add_argument("--active-hours", type=int, default=4)
    ap.add_argument("--waits", type=int, default=10_000)
    ap.add_argument("--week", default=DEFAULT_WEEK)
    ap.add_argument("--db-dir", type=Path, help="keep (and reuse) the filled ledgers here")
    ap.add_argument("--profile", type=Path, help="write a cProfile of the last build here")
    ap.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # the child process
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure is not None:
        print(json.dumps(measure(args.measure, args.week, args.out, args.profile)))
        return
    fixture = _dashboard_bench()  # not in the measuring process: its RSS is the report's
    tmp = tempfile.TemporaryDirectory(prefix="afmon-bench-report-")
    db_dir = args.db_dir or Path(tmp.name)
    db_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for members in [int(m) for m in args.members.split(",")]:
        db = db_dir / f"ledger-{members}-{args.days}d.sqlite"
        if not db.exists():
            t0 = time.perf_counter()
            n = fixture.fill(f"sqlite:///{db}", members, args.days, args.active_hours, args.waits)
            print(
                f"filled {n:,} usage rows ({members} members x {args.days} days x "
                f"{args.active_hours} h x {len(fixture.RESOURCES)} resources, up to "
                f"{fixture.END}), "
                f"{args.waits:,} waits in {time.perf_counter() - t0:.0f} s"
            )
        results.append((members, run_one(db, args.week, args.profile)))
    print(f"\nweekly report {args.week}, facility admin, all formats\n")
    print(
        "| members | build s | render s | write s | total s | CPU s | start MB "
        "| build peak MB | peak RSS MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for members, r in results:
        total = r["build_s"] + r["render_s"] + r["write_s"]
        print(
            f"| {members:,} | {r['build_s']:.2f} | {r['render_s']:.2f} | {r['write_s']:.2f} "
            f"| {total:.2f} | {r['cpu_s']:.2f} | {r['start_mb']:.0f} | {r['build_mb']:.0f} "
            f"| {r['peak_mb']:.0f} |"
        )
    names = sorted({_suffix(n, args.week) for _m, r in results for n in r["files"]})
    print("\n| members | " + " | ".join(f"{n} MB" for n in names) + " |")
    print("|---|" + "---|" * len(names))
    for members, r in results:
        sizes = {_suffix(n, args.week): s for n, s in r["files"].items()}
        print(f"| {members:,} | " + " | ".join(_mb(sizes.get(n, 0)) for n in names) + " |")
    tmp.cleanup()


def _suffix(name: str, week: str) -> str:
    """A file's name less `afmon-report-<week>`: `member.csv`, `apel-v04.txt`, `json`."""
    return name.removeprefix(f"afmon-report-{week}").lstrip("-.") or name


if __name__ == "__main__":
    main()
