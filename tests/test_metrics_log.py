"""train.metrics_log: every line is strict JSON (no NaN or Infinity), and a resume drops the steps it repeats."""
import json
import math

import numpy as np
import pytest

from train.metrics_log import MetricsLog


def strict(line: str) -> dict:
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")
    return json.loads(line, parse_constant=refuse)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_values_are_written_as_null(tmp_path, bad):
    loss = float(np.random.default_rng(4989).uniform(0.1, 2))
    log = MetricsLog(tmp_path, enabled=True)
    log.write("train", 3, loss=bad, lr=loss, per_class={"a": bad, "b": [loss, bad]})
    log.close()
    [record] = [strict(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert record["loss"] is None and record["lr"] == loss
    assert record["per_class"] == {"a": None, "b": [loss, None]}


def test_resume_drops_the_records_after_its_step(tmp_path):
    log = MetricsLog(tmp_path, enabled=True)
    for step in range(1, 8):
        log.write("train", step, loss=1.0 / step)
    log.close()
    with (tmp_path / "metrics.jsonl").open("a") as handle:
        handle.write('{"kind": "train", "st')                  # a line cut short by a kill
    MetricsLog(tmp_path, enabled=True, resume_step=4).close()
    records = [strict(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["kind"], r["step"]) for r in records] == [("train", s) for s in range(1, 5)] + [("resume", 4)]
    assert records[-1]["dropped_records"] == 4
