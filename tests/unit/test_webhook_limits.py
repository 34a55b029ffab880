"""What keeps webhooks from starving the rest of the stack: the Notify function's reserved concurrency (its
throttling retried by the state machine, not given up)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from localcloud.provision import load_sam_template

ROOT = Path(__file__).resolve().parents[2]
ASL = json.loads((ROOT / "statemachine.asl.json").read_text())


def test_webhook_deliveries_have_a_reserved_concurrency_of_their_own() -> None:
    sam: dict[str, Any] = load_sam_template(ROOT / "template.yaml")
    param = sam["Parameters"]["NotifyReservedConcurrency"]
    assert param["Default"] == 20
    assert param["MinValue"] == 0
    reserved = sam["Resources"]["NotifyFunction"]["Properties"]["ReservedConcurrentExecutions"]
    assert reserved == {
        "Fn::If": ["HasNotifyReservation", {"Ref": "NotifyReservedConcurrency"}, {"Ref": "AWS::NoValue"}]
    }
    assert sam["Conditions"]["HasNotifyReservation"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "NotifyReservedConcurrency"}, "0"]}]
    }


def test_a_throttled_delivery_is_retried_for_minutes_not_given_up() -> None:
    for name in ("Notify", "NotifyFailed", "RetryNotify"):
        [throttled] = [r for r in ASL["States"][name]["Retry"] if "Lambda.TooManyRequestsException" in r["ErrorEquals"]]
        waits = [
            min(throttled["IntervalSeconds"] * throttled["BackoffRate"] ** i, throttled["MaxDelaySeconds"])
            for i in range(throttled["MaxAttempts"])
        ]
        assert sum(waits) >= 15 * 60, name
