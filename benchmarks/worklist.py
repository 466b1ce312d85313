"""Worklist response time with 10 000 studies (issue 6: must answer in under 300 ms).

Seeds a temporary SQLite node with 10 000 studies over 500 patients, signs a doctor in through
the real login form, then times full GET requests of the worklist page through the Flask test
client (rendering included): the first page, a deep page, and each filter.

Run from the repository root::

    .venv/bin/python benchmarks/worklist.py            # 10 000 studies
    .venv/bin/python benchmarks/worklist.py --studies 50000 --repeat 20
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bcd_node.db.models import Role  # noqa: E402
from bcd_node.records.users import add_user  # noqa: E402
from bcd_node.runtime import open_node  # noqa: E402
from bcd_node.settings import load_settings  # noqa: E402
from tests.support.seed import seed_worklist  # noqa: E402
from webadmin import create_app  # noqa: E402

LIMIT_MS = 300.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "bcd-node.toml"
        cfg.write_text(f'[storage]\ndata_dir = "{tmp}/data"\nmin_free_disk = "1MB"\n',
                       encoding="utf-8")
        context = open_node(load_settings(cfg))
        started = time.perf_counter()
        with context.session_factory.begin() as session:
            add_user(session, "doctor", "benchmark-password-1", Role.DOCTOR)
            seed_worklist(session, args.studies)
        print(f"seeded {args.studies} studies in {time.perf_counter() - started:.1f} s")

        app = create_app(context)
        client = app.test_client()
        page = client.get("/login").get_data(as_text=True)
        token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page).group(1)
        resp = client.post("/login", data={"username": "doctor",
                                           "password": "benchmark-password-1",
                                           "csrf_token": token})
        assert resp.status_code == 302, resp.status_code
        last = (args.studies + app.config["PAGE_SIZE"] - 1) // app.config["PAGE_SIZE"]
        cases = {
            "first page": "/worklist",
            "page 100": "/worklist?page=100",
            f"last page ({last})": f"/worklist?page={last}",
            "status=awaiting_review": "/worklist?status=awaiting_review",
            "stage=Malignant-Pro": "/worklist?stage=Malignant-Pro",
            "date range": "/worklist?from=2026-01-01&to=2030-12-31",
            "patient id": "/worklist?patient=P00042",
            "patient name": "/worklist?patient=Patient00042",
            "all filters": "/worklist?status=awaiting_review&stage=Benign&from=2026-01-01"
                           "&patient=P00042",
        }
        worst = 0.0
        print(f"{'case':28} {'median ms':>10} {'max ms':>8}")
        for name, url in cases.items():
            client.get(url)  # warm the statement cache
            times = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                resp = client.get(url)
                times.append((time.perf_counter() - t0) * 1000)
                assert resp.status_code == 200, (url, resp.status_code)
            median = statistics.median(times)
            worst = max(worst, median)
            print(f"{name:28} {median:10.1f} {max(times):8.1f}")
        context.engine.dispose()
    verdict = "OK" if worst < LIMIT_MS else "TOO SLOW"
    print(f"worst median {worst:.1f} ms (limit {LIMIT_MS:.0f} ms): {verdict}")
    return 0 if worst < LIMIT_MS else 1


if __name__ == "__main__":
    sys.exit(main())
