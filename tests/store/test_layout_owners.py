"""Every file the node writes under its data folder has a kind in bcd_node.store.layout and an
owner that removes it: a real run in this process (intake, the tiny model's analysis, previews,
study summaries), then retention and the sweep of temporary files."""

from __future__ import annotations

from sqlalchemy import update

from bcd_node.analysis.pipeline import Pipeline
from bcd_node.db.models import Result, Study
from bcd_node.intake.intake import Intake
from bcd_node.jobs.workers import Workers
from bcd_node.runtime import open_node
from bcd_node.settings import load_settings
from tests.support.images import write_smears
from tests.support.jobs import drain


def test_every_file_the_node_writes_has_an_owner_that_removes_it(write_config, predictor,
                                                                  tmp_path) -> None:
    """Each kind of file in the data folder (bcd_node.store.layout) is written by a real run, and
    the kinds with patient data are gone once retention (or the sweep) has passed."""
    import os
    import time
    from datetime import timedelta

    from bcd_node.analysis.previews import preview_png
    from bcd_node.analysis.summary import enqueue_study_summaries
    from bcd_node.db.models import Instance, utcnow
    from bcd_node.jobs.retention import purge
    from bcd_node.store.layout import REMOVED_BY, FileKind, classify
    from bcd_node.store.storage import Store

    ctx = open_node(load_settings(write_config(
        "[retention]\nimages_days = 30\nresults_days = 30\n")))
    data = ctx.settings.storage.data_dir
    files = write_smears(tmp_path / "in", 2)
    with Intake(ctx) as intake:
        accepted = [intake.accept(f.read_bytes()) for f in files]
    workers = Workers(ctx, Pipeline(ctx, predictor).run, count=0)
    assert drain(workers) == 2
    with ctx.session_factory.begin() as s:
        s.execute(update(Study).values(last_received_at=utcnow() - timedelta(hours=1)))
    assert enqueue_study_summaries(ctx) >= 1 and drain(workers) >= 1
    store = Store(data, ctx.settings.storage.min_free_disk)
    with ctx.session_factory() as s:
        for a in accepted:
            inst = s.get(Instance, a.instance_id)
            assert preview_png(store, inst.id, inst.path, inst.sha256)
    stale = [data / "previews" / ".1-x.png.0123.tmp", data / "results" / ".report.pdf.4567.tmp"]
    for tmp in stale:  # what a write a crash cut short leaves
        tmp.write_bytes(b"partial")
        os.utime(tmp, (time.time() - 7200, time.time() - 7200))

    def kinds() -> dict[FileKind, list[str]]:
        found: dict[FileKind, list[str]] = {}
        for path in data.rglob("*"):
            if path.is_file() or path.is_socket():
                rel = path.relative_to(data).as_posix()
                kind = classify(rel)
                assert kind is not None, f"{rel}: no kind in bcd_node.store.layout"
                found.setdefault(kind, []).append(rel)
        return found

    before = kinds()
    assert set(before) == set(FileKind) == set(REMOVED_BY)
    with ctx.session_factory.begin() as s:
        long_ago = utcnow() - timedelta(days=400)
        s.execute(update(Instance).values(received_at=long_ago))
        s.execute(update(Result).values(created_at=long_ago))
    summary = purge(ctx)
    assert (summary.images, summary.previews) == (2, 2) and summary.results >= 3
    assert store.sweep_temporary() == 2
    after = kinds()
    assert set(after) == {FileKind.DATABASE, FileKind.SECRET, FileKind.RUNTIME}, after
