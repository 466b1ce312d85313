"""Values that SQLite stores and PostgreSQL refuses, received from other tools: the intake must
answer the same on both databases."""

from __future__ import annotations

from typing import Any

import pydicom
import pytest

from bcd_node.intake.intake import Intake
from bcd_node.intake.validate import InvalidImageError
from bcd_node.runtime import open_node
from bcd_node.settings import load_settings
from tests.support.images import part10_bytes, vl_micro
from tests.support.postgres import ON_BOTH_DATABASES

pytestmark = [pytest.mark.integration]


@pytest.fixture
def intake(database_url, write_config) -> Any:
    ctx = open_node(load_settings(write_config(database_url=database_url)))
    with Intake(ctx) as running:
        yield running
    ctx.engine.dispose()


def _image(seed: int, series_number: str) -> bytes:
    ds = vl_micro(seed)
    with pydicom.config.disable_value_validation():  # an invalid input, on purpose
        ds.SeriesNumber = series_number
        return part10_bytes(ds)


@ON_BOTH_DATABASES
def test_a_series_number_out_of_range_is_refused_on_either_database(intake) -> None:
    """An IS value is at most 2^31 - 1 (PS3.5 6.2). A Series Number of 99999999999 was filed as
    it is on SQLite, and on PostgreSQL ("integer out of range") failed the image's commit."""
    with pytest.raises(InvalidImageError, match="Series Number"):
        intake.accept(_image(1, "99999999999"))
    accepted = intake.accept(_image(2, "2147483647"))
    assert accepted is not None


def test_a_value_the_database_refuses_fails_only_its_image_and_stays_out_of_the_log(
        postgres_url, write_config, monkeypatch, caplog) -> None:
    """Two images in one commit, one with a value PostgreSQL refuses (the range check above
    switched off to get it there): that one fails (a transient refusal, as any database
    error), the other is stored. The whole batch failed before, and the log and the C-STORE's
    comment carried SQLAlchemy's statement with its parameters: the images' patient data."""
    from bcd_node.errors import TransientError
    from bcd_node.intake import commit, validate

    ctx = open_node(load_settings(write_config(database_url=postgres_url)))
    monkeypatch.setattr(validate, "_IS_RANGE", range(-10**12, 10**12))
    try:
        with Intake(ctx) as running:
            items: list[Any] = []
            committer = running._committer  # noqa: SLF001 - one commit of two images, made here
            monkeypatch.setattr(committer, "submit", items.append)
            for seed, number in ((1, "99999999999"), (2, "7")):
                running.accept(_image(seed, number))
            batch = [commit._Pending(item) for item in items]  # noqa: SLF001
            with caplog.at_level("INFO", logger="bcd_node.intake"):
                committer._commit(batch)  # noqa: SLF001
            with pytest.raises(TransientError, match="integer out of range") as refused:
                batch[0].future.result(timeout=30)
            assert batch[1].future.result(timeout=30) is not None
    finally:
        ctx.engine.dispose()
    name = str(vl_micro(1).PatientName)
    for text in (str(refused.value), caplog.text):
        assert "[parameters" not in text and "INSERT" not in text and name not in text
