"""The alerting rules, unit-tested with Prometheus' own promtool.

The rules are the PrometheusRule in deploy/k8s/components/production/prometheus-rules.yaml;
its `spec` is a Prometheus rules file, written here as `mesh.rules.yaml` beside each unit-test
file of tests/deploy/alerts/, which feeds synthetic series and says which alerts fire at which
minute and which stay silent. A rule that fires too early, too late, for the wrong series or
with other annotations fails `promtool test rules`, and so this test.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshdev.deployfiles import (
    ROOT,
    listed_series,
    prometheus_rules,
    promql_metric_names,
    promtool,
)

RULE_TESTS = sorted((Path(__file__).parent / "alerts").glob("*.yaml"))
RUNBOOK = ROOT / "docs" / "runbook.md"
SEVERITIES = {"page", "ticket"}


def _rules() -> list[dict[str, Any]]:
    return [rule for group in prometheus_rules()["groups"] for rule in group["rules"]]


def _alerts() -> list[dict[str, Any]]:
    return [rule for rule in _rules() if "alert" in rule]


def _heading_anchor(heading: str) -> str:
    """The anchor a Markdown renderer (GitHub, GitLab) gives a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("case", RULE_TESTS, ids=[case.stem for case in RULE_TESTS])
def test_alerts_fire_and_stay_silent_as_their_unit_tests_say(tmp_path: Path, case: Path) -> None:
    (tmp_path / "mesh.rules.yaml").write_text(yaml.safe_dump(prometheus_rules(), sort_keys=False))
    shutil.copy(case, tmp_path / case.name)

    done = subprocess.run(
        [promtool(), "test", "rules", case.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )

    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_is_tested_firing_and_silent() -> None:
    fired: set[str] = set()
    silent: set[str] = set()
    for case in RULE_TESTS:
        for test in yaml.safe_load(case.read_text())["tests"]:
            for check in test.get("alert_rule_test", []):
                (fired if check.get("exp_alerts") else silent).add(check["alertname"])
    alerts = {alert["alert"] for alert in _alerts()}

    assert alerts - fired == set(), "no unit test sees these fire"
    assert alerts - silent == set(), "no unit test sees these stay silent"
    assert (fired | silent) - alerts == set(), "unit tests of alerts that do not exist"


def test_every_alert_says_how_urgent_it_is_and_links_its_runbook_section() -> None:
    anchors = {_heading_anchor(h) for h in re.findall(r"^## (.+)$", RUNBOOK.read_text(), re.M)}
    for alert in _alerts():
        name = alert["alert"]
        assert alert["labels"]["severity"] in SEVERITIES, name
        assert alert["annotations"]["summary"], name
        assert alert["annotations"]["description"], name
        assert alert["annotations"]["runbook_url"] == f"docs/runbook.md#{name.lower()}"
        assert name.lower() in anchors, f"docs/runbook.md has no section `## {name}`"


def test_only_a_fast_burn_of_an_error_budget_pages() -> None:
    """Pages wake people: only for users losing service now. Everything else is a ticket."""
    paging = {a["alert"] for a in _alerts() if a["labels"]["severity"] == "page"}
    assert paging == {a["alert"] for a in _alerts() if a["alert"].endswith("FastBurn")}
    assert all("slo:sli_error:ratio_rate5m" in a["expr"] for a in _alerts() if a["alert"] in paging)


def test_every_rule_queries_listed_metrics_or_recorded_series() -> None:
    recorded = {rule["record"] for rule in _rules() if "record" in rule}
    known = listed_series() | recorded
    for rule in _rules():
        names = promql_metric_names(rule["expr"])
        assert names, rule["expr"]
        assert names <= known, f"{rule.get('alert') or rule['record']}: {names - known} not listed"
