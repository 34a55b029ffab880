"""The template's worker capacity: the warm pool and Spot, the Spot notice's path to the worker's warm stop, and the
compile artefacts a new instance fetches from the bucket instead of compiling.

The notice's last hop (SIGTERM to a worker in a batch: it finishes the batch and hands the rest back) runs on the
local stack in ``tests/integration/test_worker.py::test_sigterm_finishes_the_running_batch_and_releases_the_rest``;
this file checks the template wiring that turns a Spot notice into that SIGTERM, in time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from localcloud.provision import load_sam_template
from shared.settings import Settings

REPO = Path(__file__).resolve().parents[2]
SPOT_NOTICE_S = 120  # EC2's Spot interruption notice


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_sam_template(REPO / "template.yaml")


def _user_data(template: dict[str, Any]) -> str:
    data = template["Resources"]["WorkerLaunchTemplate"]["Properties"]["LaunchTemplateData"]["UserData"]
    sub = data["Fn::Base64"]["Fn::Sub"]
    return sub if isinstance(sub, str) else sub[0]


def test_a_spot_notice_drains_the_instance_and_the_warm_stop_fits_before_the_kill(template: dict[str, Any]) -> None:
    resources, params = template["Resources"], template["Parameters"]
    assert "ECS_ENABLE_SPOT_INSTANCE_DRAINING=true" in _user_data(template)
    spot = resources["WorkerSpotAutoScalingGroup"]
    assert spot["Condition"] == "UseSpot"
    policy = spot["Properties"]["MixedInstancesPolicy"]
    assert policy["LaunchTemplate"]["LaunchTemplateSpecification"]["LaunchTemplateId"] == {
        "Ref": "WorkerLaunchTemplate"
    }
    assert policy["InstancesDistribution"]["OnDemandPercentageAboveBaseCapacity"] == 0
    # Draining stops the task: SIGTERM, then SIGKILL after StopTimeout, which the notice's two minutes bound; the
    # worker's warm stop (SDQ_GRACE_S) is capped below it.
    containers = resources["WorkerTaskDefinition"]["Properties"]["ContainerDefinitions"]
    (container,) = [c for c in containers if c["Name"] == "worker"]
    stop_timeout = container["StopTimeout"]
    assert stop_timeout <= SPOT_NOTICE_S
    assert params["WorkerGraceSeconds"]["MaxValue"] < stop_timeout
    env = {e["Name"]: e["Value"] for e in container["Environment"]}
    assert env["SDQ_GRACE_S"] == {"Ref": "WorkerGraceSeconds"}
    provider = resources["SpotCapacityProvider"]["Properties"]["AutoScalingGroupProvider"]
    assert provider["AutoScalingGroupArn"] == {"Ref": "WorkerSpotAutoScalingGroup"}
    assert provider["ManagedDraining"] == "ENABLED"


def test_the_service_places_tasks_on_demand_first_and_spot_by_weight(template: dict[str, Any]) -> None:
    resources = template["Resources"]
    strategy = resources["WorkerService"]["Properties"]["CapacityProviderStrategy"]
    on_demand, spot = strategy
    assert on_demand == {
        "CapacityProvider": {"Ref": "GpuCapacityProvider"},
        "Weight": {"Ref": "OnDemandWorkerWeight"},
        "Base": {"Ref": "OnDemandWorkerBase"},
    }
    condition, when_spot, otherwise = spot["Fn::If"]
    assert condition == "UseSpot"
    assert when_spot == {"CapacityProvider": {"Ref": "SpotCapacityProvider"}, "Weight": {"Ref": "SpotWorkerWeight"}}
    assert otherwise == {"Ref": "AWS::NoValue"}
    providers = resources["WorkerClusterCapacityProviders"]["Properties"]["CapacityProviders"]
    assert {"Fn::If": ["UseSpot", {"Ref": "SpotCapacityProvider"}, {"Ref": "AWS::NoValue"}]} in providers
    assert template["Conditions"]["UseSpot"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "SpotWorkerWeight"}, "0"]}]}
    assert template["Parameters"]["SpotWorkerWeight"]["Default"] == 0  # on-demand only unless asked


def test_the_warm_pool_keeps_stopped_instances_that_pulled_the_image_and_come_back_on_scale_in(
    template: dict[str, Any],
) -> None:
    pool = template["Resources"]["WorkerWarmPool"]
    assert pool["Condition"] == "HasWarmPool"
    props = pool["Properties"]
    assert props["AutoScalingGroupName"] == {"Ref": "WorkerAutoScalingGroup"}
    assert props["PoolState"] == "Stopped"
    assert props["InstanceReusePolicy"] == {"ReuseOnScaleIn": True}
    assert props["MinSize"] == props["MaxGroupPreparedCapacity"] == {"Ref": "WorkerWarmPoolSize"}
    user_data = _user_data(template)
    # The agent stays off while the instance is warmed; an instance joining the pool pulls the worker image.
    assert "ECS_WARM_POOLS_CHECK=true" in user_data
    assert "autoscaling/target-lifecycle-state" in user_data
    assert "docker pull ${WorkerRepository.RepositoryUri}:${WorkerImageTag}" in user_data
    # The pulled image is used: the agent prefers the cached image to a new pull.
    assert "ECS_IMAGE_PULL_BEHAVIOR=prefer-cached" in user_data
    assert template["Parameters"]["WorkerWarmPoolSize"]["Default"] == 0


def test_workers_with_compile_share_both_compile_folders_under_the_prefix_their_role_alone_may_use(
    template: dict[str, Any],
) -> None:
    resources = template["Resources"]
    prefix = Settings.model_fields["compile_artefacts_prefix"].default
    for name in ("WorkerTaskDefinition", "SecondFleetTaskDefinition"):
        [worker] = [c for c in resources[name]["Properties"]["ContainerDefinitions"] if c["Name"] == "worker"]
        env = {e["Name"]: e["Value"] for e in worker["Environment"]}
        volume = next(m["ContainerPath"] for m in worker["MountPoints"] if m["SourceVolume"] == "model-cache")
        # Both folders the store shares live on the instance's volume (a restarted task finds them there too).
        assert env["SDQ_COMPILE_CACHE_DIR"].startswith(volume + "/"), name
        assert env["SDQ_PRECOMPILE_DIR"].startswith(volume + "/"), name
        assert env["SDQ_COMPILE_ARTEFACTS_PREFIX"] == prefix, name
        assert env["SDQ_COMPILE"] == {"Ref": "WorkerCompile"}, name  # the store acts only with compile on
    statements = resources["WorkerTaskRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
    shared = [st for st in statements if prefix in str(st)]
    actions = [(a, str(st["Resource"])) for st in shared for a in st["Action"] if isinstance(st["Action"], list)]
    assert set(actions) == {
        ("s3:GetObject", str({"Fn::Sub": f"${{MediaBucket.Arn}}/{prefix}*"})),
        ("s3:PutObject", str({"Fn::Sub": f"${{MediaBucket.Arn}}/{prefix}*"})),
    }
    [listing] = [st for st in shared if st["Action"] == "s3:ListBucket"]
    assert listing["Condition"] == {"StringLike": {"s3:prefix": [f"{prefix}*"]}}
    assert not any("Delete" in str(st["Action"]) for st in shared)  # an artefact is never removed by a worker
