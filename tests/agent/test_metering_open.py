"""open_metering: what a command or worker learns from the metering it opened."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from agent._settings import Settings
from metering import CallOpened, UsageLine, UsageReported, load_catalog, open_metering

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


async def test_usage_that_never_reached_the_ledger_is_reported_after_exit(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    async with open_metering(settings.metering(), catalog=load_catalog()) as metering:
        metering.meter.report(CallOpened(call_id="kept", workflow_slug="wf", started_at=T0))
        # Usage of a call the ledger never opened: the database refuses it (a foreign key).
        metering.meter.report(
            UsageReported(
                call_id="orphan",
                seq=0,
                line=UsageLine("tts", "polly", "neural", characters=9),
                agent=None,
                at=T0,
            )
        )
    [loss] = metering.lost
    assert (loss.records, loss.call_ids) == (1, ("orphan",))
    call = None
    async with open_metering(settings.metering(), catalog=load_catalog()) as again:
        call = await again.ledger.call("kept")
    assert call is not None and again.lost == []


async def test_opening_metering_closes_calls_whose_process_is_gone(tmp_path: Path) -> None:
    from sqlalchemy import update

    from metering._schema import Call

    settings = Settings(data_dir=tmp_path)
    async with open_metering(settings.metering(), catalog=load_catalog()) as metering:
        metering.meter.report(CallOpened(call_id="crashed", workflow_slug="wf", started_at=T0))
        await metering.meter.flush()
        started = metering.ledger.process.started
        assert started is not None
        async with metering.ledger.engine.begin() as conn:  # as if its pid now named another process
            await conn.execute(update(Call).values(owner_started=started - 1))
    async with open_metering(settings.metering(), catalog=load_catalog()) as again:
        call = await again.ledger.call("crashed")
    assert call is not None and (call.status, call.ended_reason) == ("abandoned", "process_lost")
