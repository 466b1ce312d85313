"""/metrics names each destination: its backlog by state, the age of its oldest waiting object
and its last C-ECHO, so that a monitoring system can tell which PACS or LIS is behind (a sum over
all of them hides a dead one behind a healthy one). /api/v1/status: tests/web/test_admin.py."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

from bcd_node.db.models import Delivery, DeliveryState, DestinationHealth, utcnow
from bcd_node.node.metrics import Metrics
from bcd_node.runtime import open_node
from bcd_node.settings import load_settings
from tests.node.test_metrics_merge import _samples

CONFIG = ('[[destinations]]\nname = "pacs"\nae_title = "PACS"\nhost = "127.0.0.1"\nport = 1\n\n'
          '[[destinations]]\nname = "archive"\nae_title = "ARCHIVE"\nhost = "127.0.0.1"\n'
          'port = 2\n')


def _delivery(destination: str, state: DeliveryState, age_s: float, n: int) -> Delivery:
    created = utcnow() - timedelta(seconds=age_s)
    return Delivery(destination=destination, kind="sr",
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.88.33",
                    sop_instance_uid=f"1.2.3.{destination}.{state.value}.{n}",
                    path=f"results/{destination}-{n}.dcm", state=state, created_at=created,
                    next_attempt_at=created)


def seed_destinations(session: Any) -> None:
    """Deliveries and C-ECHO health of two destinations, \"pacs\" behind and \"archive\" done."""
    # "pacs" is behind: two rows wait (the older 600 s), one is dead, two were delivered.
    session.add_all([_delivery("pacs", DeliveryState.PENDING, 600, 1),
                     _delivery("pacs", DeliveryState.PENDING, 30, 2),
                     _delivery("pacs", DeliveryState.DEAD, 9000, 3),
                     _delivery("pacs", DeliveryState.DONE, 7000, 4),
                     _delivery("pacs", DeliveryState.DONE, 7000, 5),
                     # "archive" has delivered everything, long ago.
                     _delivery("archive", DeliveryState.DONE, 8000, 6)])
    session.add(DestinationHealth(name="pacs", last_echo_ok=False, last_echo_at=utcnow(),
                                  last_error="connection refused"))
    session.add(DestinationHealth(name="archive", last_echo_ok=True, last_echo_at=utcnow()))


def test_metrics_give_each_destination_its_backlog_age_and_echo(
        write_config: Callable[..., Path]) -> None:
    context = open_node(load_settings(write_config(CONFIG)), migrate=True)
    try:
        with context.session_factory.begin() as session:
            seed_destinations(session)
        samples = _samples(Metrics(context).exposition().decode())
    finally:
        context.engine.dispose()

    def deliveries(destination: str, state: str) -> float | None:
        return samples.get(("bcd_deliveries",
                            (("destination", destination), ("state", state))))

    assert deliveries("pacs", "pending") == 2 and deliveries("pacs", "dead") == 1
    assert deliveries("pacs", "done") == 2 and deliveries("archive", "done") == 1
    assert deliveries("archive", "pending") is None
    oldest = {labels[0][1]: value for (name, labels), value in samples.items()
              if name == "bcd_delivery_oldest_pending_seconds"}
    # The dead row does not count (it waits for a person, and bcd_deliveries says so); a
    # destination with nothing waiting reads 0, not nothing, so that an alert on it resolves.
    assert set(oldest) == {"pacs", "archive"}
    assert 600 <= oldest["pacs"] < 900 and oldest["archive"] == 0
    assert samples[("bcd_destination_echo_ok", (("destination", "pacs"),))] == 0
    assert samples[("bcd_destination_echo_ok", (("destination", "archive"),))] == 1
