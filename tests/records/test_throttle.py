"""Failure counters: lock lengths, windows, pruning (SQLite)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy import select

from bcd_node.db.engine import make_engine, make_session_factory
from bcd_node.db.migrate import upgrade
from bcd_node.db.models import AuthThrottle, utcnow
from bcd_node.records import throttle


def factory(tmp_path: Path):
    engine = make_engine(f"sqlite:///{tmp_path / 'bcd.db'}")
    upgrade(engine)
    return make_session_factory(engine)


def test_lock_lengths_double_up_to_an_hour() -> None:
    assert [throttle.lock_seconds(n) for n in range(1, 9)] == [
        60, 120, 240, 480, 960, 1920, 3600, 3600]
    assert throttle.lock_seconds(10**6) == 3600


def test_names_lock_at_the_threshold_and_start_again_after_a_quiet_day(tmp_path: Path) -> None:
    make = factory(tmp_path)
    now = utcnow()
    with make.begin() as session:
        results = [throttle.count_name_failure(session, "dr.x", now) for _ in range(5)]
    assert [r.locked_until is None for r in results] == [True] * 4 + [False]
    assert results[-1].seconds == 60
    with make.begin() as session:
        assert throttle.name_locked_until(session, "dr.x", now) == now + timedelta(seconds=60)
        assert throttle.name_locked_until(session, "dr.x", now + timedelta(seconds=61)) is None
        later = now + timedelta(minutes=2)
        second = [throttle.count_name_failure(session, "dr.x", later) for _ in range(5)][-1]
    assert second.seconds == 120 and second.lockouts == 2
    with make.begin() as session:  # a day later the delay starts again from a minute
        quiet = now + timedelta(days=2)
        third = [throttle.count_name_failure(session, "dr.x", quiet) for _ in range(5)][-1]
    assert third.seconds == 60


def test_source_window_and_prune(tmp_path: Path) -> None:
    make = factory(tmp_path)
    now = utcnow()
    with make.begin() as session:
        for _ in range(3):
            throttle.count_source_failure(session, "10.0.0.1", 300, now)
        throttle.count_name_failure(session, "typo-name", now)
    with make.begin() as session:
        assert throttle.source_blocked_until(session, "10.0.0.1", 3, now) == \
            now + timedelta(seconds=300)
        assert throttle.source_blocked_until(session, "10.0.0.1", 4, now) is None
        assert throttle.source_blocked_until(
            session, "10.0.0.1", 3, now + timedelta(seconds=301)) is None
    with make.begin() as session:  # two days on, a new window prunes what holds nothing
        throttle.count_source_failure(session, "10.0.0.2", 300, now + timedelta(days=2))
    with make() as session:
        keys = set(session.execute(select(AuthThrottle.key)).scalars())
    assert keys == {"10.0.0.2"}
