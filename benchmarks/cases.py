"""A case's worklist columns kept current: :func:`refresh_study` for cases of many fields.

The worker calls :func:`bcd_node.records.studies.refresh_study` each time it publishes a field,
so its cost is paid once per image and grows with the case. This seeds a temporary SQLite node
with one case of each size (fields with a stage, probabilities and 40 cells each, as the
worker stores them), then prints the median time of ``refresh_study`` and, in the same run,
of loading the case's results whole as it did before (the reference: every column, the cells'
JSON included, decoded for every field).

Reproduce with::

    .venv/bin/python benchmarks/cases.py                  # cases of 20, 100 and 400 fields
    .venv/bin/python benchmarks/cases.py --fields 12 --repeat 50
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import select  # noqa: E402

from bcd_node.db.models import (  # noqa: E402
    Instance,
    Patient,
    Result,
    ResultScope,
    Series,
    Study,
)
from bcd_node.inference.spec import CLASSES  # noqa: E402
from bcd_node.records.studies import refresh_study  # noqa: E402
from bcd_node.runtime import open_node  # noqa: E402
from bcd_node.settings import load_settings  # noqa: E402

CELLS = {"min_area": 20, "spacing_mm": None, "shape": [512, 512],
         "cells": [{"number": i, "top": i, "left": i, "bottom": i + 20, "right": i + 20,
                    "area": 300, "area_um2": None, "score": 0.9} for i in range(1, 41)]}


def seed(ctx: Any, number: int, fields: int) -> int:
    """One case of ``fields`` analysed fields; returns its study's id."""
    with ctx.session_factory.begin() as s:
        patient = Patient(patient_id=f"BENCH-{number}")
        s.add(patient)
        s.flush()
        study = Study(patient_fk=patient.id, study_instance_uid=f"2.25.{number}")
        s.add(study)
        s.flush()
        series = Series(study_fk=study.id, series_instance_uid=f"2.25.{number}.1")
        s.add(series)
        s.flush()
        for i in range(fields):
            inst = Instance(series_fk=series.id, sop_instance_uid=f"2.25.{number}.1.{i}",
                            sop_class_uid="1.2.840.10008.5.1.4.1.1.77.1.2",
                            transfer_syntax_uid="1.2.840.10008.1.2.1", path=f"f{number}-{i}",
                            sha256="0" * 64, content_sha256="0" * 64, size_bytes=1,
                            rows=512, columns=512)
            s.add(inst)
            s.flush()
            s.add(Result(instance_fk=inst.id, study_fk=study.id, scope=ResultScope.INSTANCE,
                         model_name="bench", model_version="1", stage=CLASSES[i % 4],
                         probabilities={c: 0.25 for c in CLASSES}, quality={"status": "ok"},
                         cells=CELLS, review_reasons=["low confidence"]))
        return study.id


def median_ms(call: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fields", type=int, nargs="+", default=[20, 100, 400])
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "bcd-node.toml"
        config.write_text(f'[storage]\ndata_dir = "{tmp}/data"\n', encoding="utf-8")
        ctx = open_node(load_settings(config))
        print("refresh_study (the worker's call after each field), medians:")
        for number, fields in enumerate(args.fields, start=1):
            study_id = seed(ctx, number, fields)

            def refresh() -> None:
                with ctx.session_factory.begin() as s:
                    refresh_study(s, study_id)

            def whole() -> None:
                with ctx.session_factory() as s:
                    s.execute(select(Result).where(
                        Result.study_fk == study_id,
                        Result.scope == ResultScope.INSTANCE)).scalars().all()

            print(f"  {fields:4d} fields: {median_ms(refresh, args.repeat):6.2f} ms; loading the "
                  f"results whole (the way before, reference) "
                  f"{median_ms(whole, args.repeat):6.2f} ms")
        ctx.engine.dispose()
    print("reproduce: .venv/bin/python benchmarks/cases.py " + " ".join(sys.argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
