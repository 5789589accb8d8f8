"""The set of deployments: names that say what they do, the same in prefect.yaml (work pools) and
deployments/serve.py (`mailshot serve`), few runs a day when idle, and run forms the UI renders well."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import yaml
from cronsim import CronSim

from conftest import REPO

NAMES = {
    "send-mailshot/now",
    "send-mailshot/fast",
    "send-mailshot/dask",
    "send-test/to-address",
    "create-and-send/form",
    "control-mailshot/by-id",
    "dispatch-mailshots/sweep",
    "apply-feedback/sweep",
    "ingest-bounces/from-mailbox",
    "purge-stats/daily",
    "import-legacy/from-spip",
}
IDLE_BUDGET = 300  # flow runs a day on a site with nothing to do (issue 13)


def _served() -> dict[str, Any]:
    from deployments.serve import deployments

    return {f"{d.flow_name}/{d.name}": d for d in deployments()}


def _declared() -> dict[str, Any]:
    from prefect.cli.deploy._models import PrefectYamlModel

    model = PrefectYamlModel.model_validate(yaml.safe_load((REPO / "prefect.yaml").read_text()))
    flow_of = {"send_mailshot_fast": "send-mailshot", "send_mailshot_dask": "send-mailshot"}
    named = {}
    for d in model.deployments:
        function = d.entrypoint.rsplit(":", 1)[1]
        named[f"{flow_of.get(function, function.replace('_', '-'))}/{d.name}"] = d
    return named


def _per_day(schedule: Any) -> int:
    """Runs a schedule (a served IntervalSchedule/CronSchedule, or prefect.yaml's cron) makes in a day."""
    interval = getattr(schedule, "interval", None)
    if interval is not None:
        return int(timedelta(days=1) / interval)
    start = datetime(2026, 3, 2, tzinfo=UTC)  # any day: these crons do not depend on the date
    end = start + timedelta(days=1)
    return sum(1 for _, at in zip(range(10_000), CronSim(schedule.cron, start), strict=False) if at <= end)


def test_every_deployment_has_a_name_saying_what_it_does_in_both_places() -> None:
    """prefect.yaml and serve.py declare the same deployments (no `default` left), with the same
    schedules (runs per day), concurrency limits and descriptions."""
    served, declared = _served(), _declared()
    assert set(served) == set(declared) == NAMES
    for name, d in served.items():
        y = declared[name]
        assert [_per_day(s.schedule) for s in d.schedules] == [_per_day(s) for s in y.schedules or []], name
        limit = d.concurrency_limit if isinstance(d.concurrency_limit, int | None) else d.concurrency_limit.limit
        assert limit == y.concurrency_limit, name
        assert d.description == y.description, name


def test_an_idle_site_makes_at_most_300_flow_runs_a_day() -> None:
    """The scheduled deployments together make ≤ 300 runs a day (bench/idle_runs.py measures it on a real
    server), and the dispatcher has no concurrency limit: a tick stuck in Submitting must not hold a slot."""
    served = _served()
    per_day = {name: sum(_per_day(s.schedule) for s in d.schedules) for name, d in served.items() if d.schedules}
    assert per_day == {
        "dispatch-mailshots/sweep": 144,
        "apply-feedback/sweep": 24,
        "ingest-bounces/from-mailbox": 96,
        "purge-stats/daily": 1,
    }
    assert sum(per_day.values()) <= IDLE_BUDGET
    assert served["dispatch-mailshots/sweep"].concurrency_limit is None
    assert _declared()["dispatch-mailshots/sweep"].concurrency_limit is None


def test_run_forms_render_as_choices_lists_and_text_areas() -> None:
    """The schemas the UI draws its forms from: transport and action are drop-down lists (enum), lists a
    list of strings, the HTML a plain string (a <textarea> in Prefect 3.9.1's UI, unlike `format:
    json-string`), every cadence option there, every parameter described, the essential ones required."""
    from deployments import serve

    form = serve.create_and_send.parameters.model_dump()
    fields = form["properties"]
    assert set(form["required"]) == {"subject", "html", "lists"}
    assert fields["transport"]["enum"] == ["default", "smtp", "mailjet", "sparkpost", "mandrill", "brevo", "ses"]
    assert fields["lists"]["type"] == "array" and fields["lists"]["items"] == {"type": "string"}
    assert fields["html"]["type"] == "string" and "format" not in fields["html"]
    assert {"rate_per_day", "rate_per_hour", "rate_per_minute", "test_address", "start_at"} <= set(fields)
    control = serve.control_mailshot.parameters.model_dump()
    assert control["properties"]["action"]["enum"] == ["send", "pause", "resume", "cancel"]
    assert set(control["required"]) == {"mailshot_id", "action"}
    every_flow = {d.flow_name for d in serve.deployments()}
    flows = [f for f in vars(serve).values() if getattr(f, "name", None) in every_flow and hasattr(f, "parameters")]
    assert {f.name for f in flows} == every_flow
    for f in flows:
        undescribed = [
            p for p, field in f.parameters.model_dump()["properties"].items() if not field.get("description")
        ]
        assert undescribed == [], f.name
