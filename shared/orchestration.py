"""Step Functions: the worker's hand-off of a generated job to the state machine."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from shared.contracts import WorkflowInput
from shared.tracing import current_header

if TYPE_CHECKING:
    from mypy_boto3_stepfunctions import SFNClient

MAX_INPUT_BYTES = 256 * 1024


class Orchestrator:
    def __init__(self, sfn: SFNClient, state_machine_arn: str) -> None:
        self._sfn = sfn
        self.state_machine_arn = state_machine_arn

    def start(self, name: str, workflow_input: WorkflowInput) -> str:
        """Start one execution named ``name``; an execution that already exists counts as started.

        The name makes the hand-off idempotent: a retried or duplicated start cannot run a job's
        postprocessing twice. The current X-Ray trace header, when there is one, is the execution's
        ``traceHeader``: its states and task Lambdas join the job's trace (shared/tracing.py).
        """
        body = json.dumps(workflow_input.payload(), separators=(",", ":"))
        if len(body.encode()) >= MAX_INPUT_BYTES:
            raise ValueError(f"state machine input is {len(body)} bytes; the limit is {MAX_INPUT_BYTES}")
        try:
            trace = current_header()
            resp = self._sfn.start_execution(
                stateMachineArn=self.state_machine_arn,
                name=name,
                input=body,
                **({"traceHeader": trace} if trace else {}),
            )
        except self._sfn.exceptions.ExecutionAlreadyExists:
            return f"{self.state_machine_arn.replace(':stateMachine:', ':execution:', 1)}:{name}"
        return resp["executionArn"]
