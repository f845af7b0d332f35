"""Render time of every status page against a store with 10,000 segmented images (20,000 measurement rows).

    python benchmarks/page.py [--images 10000] [--repeats 3] [--data-dir DIR]

Seeds a real SQLite store (the typical day of ``tests/page/seed.py`` plus ``--images`` results over 30 days), then
renders each page with Streamlit's AppTest (the real script runner, no browser):

* cold: the first render of the page in this process (includes one-off costs such as Altair loading its schema);
* new session: a fresh session opening the page once the process has served it before (median of repeats);
* refresh: the page's rerun in an open session, what auto-refresh costs every few seconds (median of repeats).

The goal (issue 6) is under 2 s per page; the script exits 1 when a new-session render misses it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GOAL_SECONDS = 2.0
PAGES = ("overview", "training", "models", "results", "problems")


def render(page: str) -> tuple[float, object]:
    from streamlit.testing.v1 import AppTest

    app = AppTest.from_file(str(ROOT / "streamlit_app" / "app.py"), default_timeout=120).run()
    app.switch_page(f"views/{page}.py")
    started = time.perf_counter()
    app.run()
    elapsed = time.perf_counter() - started
    if app.exception:
        raise RuntimeError(f"page {page} raised: {app.exception[0].value}")
    return elapsed, app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-dir", type=Path, default=None, help="seed here (default: a temporary folder)")
    args = parser.parse_args(argv)

    from tests.page.seed import seed_results, seed_typical

    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="page-bench-"))
    started = time.perf_counter()
    seed_typical(data_dir)
    rows = seed_results(data_dir, args.images)
    print(f"seeded {data_dir}: {args.images} images, {rows} measurement rows in {time.perf_counter() - started:.1f} s")
    os.environ["APPLIANCE_DATA_DIR"] = str(data_dir)
    os.environ.pop("APPLIANCE_PAGE_PASSWORD", None)
    import logging

    logging.getLogger("streamlit").setLevel(logging.ERROR)

    print(f"{'page':<10} {'cold':>7} {'new session':>12} {'refresh':>8}  (seconds; goal < {GOAL_SECONDS:g} s)")
    missed = []
    for page in PAGES:
        cold, _ = render(page)
        sessions, refreshes = [], []
        for _ in range(args.repeats):
            elapsed, app = render(page)
            sessions.append(elapsed)
            again = time.perf_counter()
            app.run()
            refreshes.append(time.perf_counter() - again)
        session, refresh = statistics.median(sessions), statistics.median(refreshes)
        if session >= GOAL_SECONDS:
            missed.append(page)
        print(f"{page:<10} {cold:>7.2f} {session:>12.2f} {refresh:>8.2f}")
    print("all pages under the goal" if not missed else f"over the goal: {', '.join(missed)}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
