"""Load: 4 concurrent associations × 100 images while inference runs; nothing lost, nothing
twice."""

from __future__ import annotations

import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pydicom
import pytest
from sqlalchemy import func, select

from bcd_node.db.models import Delivery, DeliveryState, Instance, Result
from bcd_node.runtime import open_node
from bcd_node.settings import load_settings
from tests.support.images import write_smears
from tests.support.net import free_port
from tests.support.node import Node, outbox_settled, outputs_by_source, wait_for
from tests.support.peers import Orthanc
from tests.support.tools import require_tool

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(2400)]
ASSOCIATIONS, PER_ASSOCIATION = 4, 100


def test_four_associations_times_100_exactly_once(write_config, tiny_weights, tmp_path) -> None:
    storescu = require_tool("storescu")
    orthanc = Orthanc().start()
    dicom_port, web_port = free_port(), free_port()
    cfg = write_config(
        f'[model]\nweights = "{tiny_weights}"\nprecision = "float32"\n\n'
        "[workers]\ncount = 2\npoll_interval = 0.1\nstudy_quiet_seconds = 10.0\n\n"
        "[delivery]\ninterval = 0.5\ninitial_backoff = 0.5\nmax_backoff = 1.0\n\n"
        '[[destinations]]\nname = "pacs"\nae_title = "ORTHANC"\nhost = "127.0.0.1"\n'
        f"port = {orthanc.dicom_port}\n", dicom_port=dicom_port, web_port=web_port)
    batches = [write_smears(tmp_path / f"a{a}", PER_ASSOCIATION,
                            first_seed=1000 * (a + 1), patient_id=f"LOAD-{a}",
                            study_uid=pydicom.uid.generate_uid(prefix="2.25."))
               for a in range(ASSOCIATIONS)]
    sources = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
               for batch in batches for f in batch}
    node = Node(cfg)
    env = {**os.environ, "TCP_NODELAY": "1"}
    try:
        node.start(web_port, timeout=120)

        def push(files):
            return subprocess.run([storescu, "-aet", "SCANNER", "-aec", "BCD_NODE", "127.0.0.1",
                                   str(dicom_port), *map(str, files)], capture_output=True,
                                  text=True, env=env, timeout=600)

        started = time.monotonic()
        with ThreadPoolExecutor(ASSOCIATIONS) as pool:
            results = list(pool.map(push, batches))
        received = time.monotonic() - started
        for r in results:
            assert r.returncode == 0, r.stderr[-2000:]
        print(f"\n{ASSOCIATIONS}x{PER_ASSOCIATION} images received in {received:.1f} s "
              f"({len(sources) / received:.0f} images/s) while inference ran")
        # Every acknowledged image gets a result; the quality gate may refuse a few synthetic
        # fields (no diagnosis: a non-diagnostic SR and PDF instead of SEG, SR and PDF), so the
        # outputs are counted from the results.
        ctx = open_node(load_settings(cfg), migrate=False)

        def analysed() -> bool:
            with ctx.session_factory() as s:
                return s.execute(select(func.count()).select_from(Result).where(
                    Result.scope == "instance")).scalar_one() == len(sources) and \
                    s.execute(select(func.count()).select_from(Result).where(
                        Result.scope == "study")).scalar_one() == ASSOCIATIONS

        wait_for(analysed, 2000, "a result for every acknowledged image and a summary per study")
        with ctx.session_factory() as s:
            diagnosed = set(s.execute(select(Instance.sop_instance_uid).join(
                Result, Result.instance_fk == Instance.id).where(
                Result.stage.is_not(None))).scalars())
        # + a summary SR and PDF per study
        expected = 3 * len(diagnosed) + 2 * (len(sources) - len(diagnosed)) + 2 * ASSOCIATIONS
        print(f"{len(diagnosed)} of {len(sources)} fields diagnosed, "
              f"{len(sources) - len(diagnosed)} refused by the quality gate")
        assert len(diagnosed) >= 0.95 * len(sources)
        wait_for(lambda: len(orthanc.get("/instances")) >= expected, 600,
                 "every output of every analysed image at Orthanc")
        wait_for(lambda: outbox_settled(cfg), 60, "nothing left to send")
        assert len(orthanc.get("/instances")) == expected
        by_source = outputs_by_source(orthanc, sources)
        assert set(by_source) == sources
        bad = {k: v for k, v in by_source.items()
               if sorted(v) != (["DOC", "SEG", "SR"] if k in diagnosed else ["DOC", "SR"])}
        assert not bad
    finally:
        node.stop()
        orthanc.cleanup()
    with ctx.session_factory() as s:
        assert len(s.execute(select(Instance)).all()) == len(sources)
        rows = s.execute(select(Delivery)).scalars().all()
        assert len(rows) == expected
        assert all(r.state == DeliveryState.DONE and r.attempts == 1 for r in rows)
