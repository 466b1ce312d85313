"""Counters of child processes reach the parent's /metrics: snapshots written, read, summed."""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from bcd_node.node.metrics import Metrics
from bcd_node.runtime import open_node
from bcd_node.settings import load_settings


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition by name and labels (it must parse, each sample once)."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in out, f"sample twice: {key}"
            out[key] = s.value
    return out


def _type_lines(text: str) -> list[str]:
    return [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]


def _children(folder: Path) -> tuple[Metrics, Metrics]:
    """Two child processes' metrics; each snapshot is written under a fake process id."""
    a, b = Metrics(), Metrics()
    a.received.labels("dicom").inc(3)
    a.received.labels("upload").inc(1)
    a.processed.labels("done").inc(2)
    a.inference_seconds.observe(0.07)
    a.inference_seconds.observe(3.0)
    b.received.labels("dicom").inc(4)
    b.refused.labels("0xA900").inc()
    b.processed.labels("done").inc(5)
    b.inference_seconds.observe(0.07)
    b.store_seconds.observe(0.003)
    folder.mkdir(exist_ok=True)
    for pid, child in ((1001, a), (1002, b)):
        (folder / f"{pid}.prom").write_bytes(_snapshot_of(child, folder))
    return a, b


def _created(metrics: Metrics, source: str) -> float:
    return next(s.value for family in metrics.received.collect() for s in family.samples
                if s.name.endswith("_created") and s.labels == {"source": source})


def _snapshot_of(child: Metrics, folder: Path) -> bytes:
    """What ``export_to`` writes for ``child`` (written by this process, then read back)."""
    scratch = folder.parent / f"scratch-{id(child)}"
    stop = child.export_to(scratch, interval=60)
    stop()
    return (scratch / f"{os.getpid()}.prom").read_bytes()


def test_parent_sums_counters_and_histograms_of_its_children(tmp_path: Path) -> None:
    folder = tmp_path / "metrics"
    a, b = _children(folder)
    parent = Metrics()
    parent.received.labels("dicom").inc(10)
    parent.merge_from(folder)
    text = parent.exposition().decode()
    got = _samples(text)

    assert got[("bcd_images_received_total", (("source", "dicom"),))] == 17
    assert got[("bcd_images_received_total", (("source", "upload"),))] == 1
    assert got[("bcd_images_refused_total", (("status", "0xA900"),))] == 1
    assert got[("bcd_jobs_processed_total", (("outcome", "done"),))] == 7
    buckets = {labels[0][1]: v for (name, labels), v in got.items()
               if name == "bcd_job_seconds_bucket"}
    assert buckets["0.05"] == 0 and buckets["0.1"] == 2 and buckets["2.0"] == 2
    assert buckets["5.0"] == 3 and buckets["+Inf"] == 3
    assert got[("bcd_job_seconds_count", ())] == 3
    assert abs(got[("bcd_job_seconds_sum", ())] - 3.14) < 1e-9
    assert got[("bcd_store_handler_seconds_count", ())] == 1
    assert got[("bcd_store_handler_seconds_bucket", (("le", "0.005"),))] == 1
    # _created: one sample per series, the earliest time.
    created = {labels: v for (name, labels), v in got.items()
               if name == "bcd_images_received_created"}
    assert created[(("source", "dicom"),)] == min(_created(a, "dicom"), _created(b, "dicom"))
    assert created[(("source", "upload"),)] == _created(a, "upload")

    types = _type_lines(text)
    assert len(types) == len(set(types)), types
    for name in ("bcd_images_received_total", "bcd_jobs_processed_total", "bcd_job_seconds",
                 "bcd_store_handler_seconds"):
        assert types.count(name) == 1
    assert sum(line.startswith("# HELP bcd_job_seconds ") for line in text.splitlines()) == 1


def test_database_gauges_appear_once_and_are_not_summed(write_config, tmp_path: Path) -> None:
    context = open_node(load_settings(write_config()), migrate=True)
    try:
        folder = tmp_path / "metrics"
        _children(folder)
        # A snapshot that (wrongly) carries a database gauge: it is not added.
        (folder / "1003.prom").write_text(
            '# HELP bcd_jobs Jobs\n# TYPE bcd_jobs gauge\nbcd_jobs{state="queued"} 99.0\n'
            "# end of snapshot\n")
        parent = Metrics(context)
        parent.merge_from(folder)
        text = parent.exposition().decode()
        types = _type_lines(text)
        assert types.count("bcd_jobs") == 1 and types.count("bcd_deliveries") == 1
        assert len(types) == len(set(types))
        assert all(v != 99 for (name, _), v in _samples(text).items() if name == "bcd_jobs")
        assert _samples(text)[("bcd_images_received_total", (("source", "dicom"),))] == 7
    finally:
        context.engine.dispose()


def test_partial_and_garbage_snapshots_are_skipped(tmp_path: Path) -> None:
    folder = tmp_path / "metrics"
    _children(folder)
    whole = (folder / "1001.prom").read_text()
    (folder / "2001.prom").write_text(whole[: whole.index("bcd_jobs_processed")])  # truncated
    (folder / "2002.prom").write_bytes(b"\x00\xff not { prometheus ]] text\n# end of snapshot\n")
    (folder / "2003.prom").write_text("")
    (folder / "2004.prom").mkdir()  # not even a file
    (folder / "notes.txt").write_text(whole)  # not a snapshot
    parent = Metrics()
    parent.merge_from(folder)
    got = _samples(parent.exposition().decode())
    assert got[("bcd_images_received_total", (("source", "dicom"),))] == 7


def test_missing_folder_gives_own_metrics(tmp_path: Path) -> None:
    parent = Metrics()
    parent.processed.labels("done").inc()
    parent.merge_from(tmp_path / "absent")
    assert _samples(parent.exposition().decode())[
        ("bcd_jobs_processed_total", (("outcome", "done"),))] == 1


def test_export_writes_own_counters_periodically_and_a_final_value(tmp_path: Path) -> None:
    folder = tmp_path / "snapshots"
    child = Metrics()
    child.received.labels("dicom").inc()
    stop = child.export_to(folder, interval=0.05)
    path = folder / f"{os.getpid()}.prom"
    dicom = ("bcd_images_received_total", (("source", "dicom"),))
    try:
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        assert _samples(path.read_text())[dicom] == 1  # a first snapshot at once
        child.received.labels("dicom").inc()
        deadline = time.monotonic() + 5
        while _samples(path.read_text())[dicom] != 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _samples(path.read_text())[dicom] == 2  # written by the thread
        child.received.labels("dicom").inc(5)
    finally:
        stop()
    assert _samples(path.read_text())[dicom] == 7  # the final snapshot
    stop()  # idempotent
    assert not [t for t in threading.enumerate() if t.name == "metrics-export"]  # joined
    child.received.labels("dicom").inc()
    assert _samples(path.read_text())[dicom] == 7  # the thread is gone; the file stays
    assert [p.name for p in folder.iterdir()] == [path.name]  # no temporary file left


def test_export_keeps_a_snapshot_of_an_earlier_process_with_the_same_id(tmp_path: Path) -> None:
    earlier = Metrics()
    earlier.received.labels("dicom").inc(4)
    earlier.export_to(tmp_path, interval=60)()
    later = Metrics()
    later.received.labels("dicom").inc(1)
    later.export_to(tmp_path, interval=60)()
    assert len(list(tmp_path.glob("*.prom"))) == 2
    parent = Metrics()
    parent.merge_from(tmp_path)
    with_own = _samples(parent.exposition().decode())
    # The file named after this process's id is skipped as its own; the kept one counts.
    assert with_own[("bcd_images_received_total", (("source", "dicom"),))] == 4


def test_export_does_not_write_database_gauges(write_config, tmp_path: Path) -> None:
    context = open_node(load_settings(write_config()), migrate=True)
    try:
        stop = Metrics(context).export_to(tmp_path, interval=60)
        stop()
        names = {f.name for f in text_string_to_metric_families(
            (tmp_path / f"{os.getpid()}.prom").read_text())}
        assert "bcd_images_received" in names
        assert not names & {"bcd_jobs", "bcd_deliveries"}
    finally:
        context.engine.dispose()


def test_parent_does_not_count_its_own_snapshot_twice(tmp_path: Path) -> None:
    metrics = Metrics()
    metrics.received.labels("dicom").inc(2)
    stop = metrics.export_to(tmp_path, interval=60)
    stop()
    metrics.merge_from(tmp_path)
    assert _samples(metrics.exposition().decode())[
        ("bcd_images_received_total", (("source", "dicom"),))] == 2


def test_clear_snapshots_removes_the_files(tmp_path: Path) -> None:
    folder = tmp_path / "metrics"
    _children(folder)
    (folder / ".tmp-stray.tmp").write_text("x")
    (folder / "keep.txt").write_text("x")
    assert Metrics.clear_snapshots(folder) == 3
    assert sorted(p.name for p in folder.iterdir()) == ["keep.txt"]
    assert Metrics.clear_snapshots(tmp_path / "absent") == 0
    parent = Metrics()
    parent.merge_from(folder)
    assert ("bcd_images_received_total", (("source", "dicom"),)) not in _samples(
        parent.exposition().decode())


def test_a_family_only_children_have_is_summed_once(tmp_path: Path) -> None:
    for pid, n in ((3001, 2), (3002, 5)):
        (tmp_path / f"{pid}.prom").write_text(
            "# HELP bcd_other_total Other\n# TYPE bcd_other_total counter\n"
            f'bcd_other_total{{kind="x"}} {n}.0\n'
            "# HELP bcd_other_created Other\n# TYPE bcd_other_created gauge\n"
            f'bcd_other_created{{kind="x"}} {1000 + n}.0\n# end of snapshot\n')
    parent = Metrics()
    parent.merge_from(tmp_path)
    text = parent.exposition().decode()
    got = _samples(text)
    assert got[("bcd_other_total", (("kind", "x"),))] == 7
    assert got[("bcd_other_created", (("kind", "x"),))] == 1002
    assert _type_lines(text).count("bcd_other_total") == 1
