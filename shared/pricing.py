"""The unit price table: what ``sdq cost`` prices the stack with and what a job's ``usage`` estimate uses.

us-east-1 on-demand list prices as known when this was written, without free tiers or savings plans (the Spot
hours are an assumption, SPOT_SHARE_OF_ON_DEMAND). The service reads it (a job's estimated cost); the ``sdq cost``
tool imports it from here, never the other way round.
"""

from __future__ import annotations

from dataclasses import dataclass

# Unit prices, USD. Keys name the unit: "...hour", "...million" (per million), "...thousand" (per 1,000),
# "...gb_month", "...gb", "...gb_second", "...month".
DEFAULT_PRICES: dict[str, float] = {
    "ec2.g4dn.xlarge.hour": 0.526,
    "ec2.g5.xlarge.hour": 1.006,
    "ec2.g6.xlarge.hour": 0.8048,
    "ec2.g6e.xlarge.hour": 1.861,
    # The 2xlarge sizes the template also allows (GpuInstanceType): us-east-1 Linux on-demand list prices
    # (aws.amazon.com/ec2/pricing/on-demand) as known on 2026-12-07.
    "ec2.g5.2xlarge.hour": 1.212,
    "ec2.g6.2xlarge.hour": 0.9776,
    "ec2.g6e.2xlarge.hour": 2.24208,
    "ec2.p5.48xlarge.hour": 55.04,  # after AWS's June 2025 P5 price cut (was 98.32)
    "ebs.gp3.gb_month": 0.08,
    "ecr.storage.gb_month": 0.10,
    "lambda.requests.million": 0.20,
    "lambda.x86.gb_second": 0.0000166667,
    "apigateway.rest.requests.million": 3.50,
    "stepfunctions.standard.transitions.thousand": 0.025,
    "sqs.standard.requests.million": 0.40,
    "dynamodb.ondemand.write_units.million": 0.625,
    "dynamodb.ondemand.read_units.million": 0.125,
    "dynamodb.storage.gb_month": 0.25,
    "dynamodb.pitr.gb_month": 0.20,
    "s3.standard.gb_month": 0.023,
    "s3.put.thousand": 0.005,
    "s3.get.thousand": 0.0004,
    "transfer.out.internet.gb": 0.09,
    "cloudwatch.logs.ingest.gb": 0.50,
    "cloudwatch.metric.month": 0.30,
    "cloudwatch.alarm_metric.month": 0.10,
    "cloudwatch.dashboard.month": 3.00,
    "xray.traces.million": 5.00,
}
# Spot: an assumption, not a list price (Spot prices move with supply, by hour and zone). Each GPU type's Spot hour
# is taken as this share of its on-demand hour; set your own with --price ec2.<type>.spot.hour=VALUE.
SPOT_SHARE_OF_ON_DEMAND = 0.35
DEFAULT_PRICES.update(
    {
        key.removesuffix(".hour") + ".spot.hour": round(price * SPOT_SHARE_OF_ON_DEMAND, 4)
        for key, price in list(DEFAULT_PRICES.items())
        if key.startswith("ec2.")
    }
)


def instance_hour_key(instance: str) -> str:
    """The price key of an EC2 instance type's on-demand hour (``ec2.<type>.hour``)."""
    return f"ec2.{instance}.hour"


def spot_hour_key(instance: str) -> str:
    """The price key of an EC2 instance type's Spot hour (``ec2.<type>.spot.hour``, an assumption)."""
    return f"ec2.{instance}.spot.hour"


@dataclass(frozen=True)
class GpuPrice:
    """The hourly price a job's GPU seconds are charged at, and the words that say so."""

    instance: str
    usd_per_hour: float

    @property
    def basis(self) -> str:
        key = instance_hour_key(self.instance)
        return f"{self.instance} on-demand at ${self.usd_per_hour:g}/h (us-east-1 list price, {key})"

    def cost(self, gpu_s: float) -> float:
        """USD for ``gpu_s`` seconds of one instance, rounded to a millionth of a dollar."""
        return round(gpu_s * self.usd_per_hour / 3600.0, 6)


def gpu_price(instance: str) -> GpuPrice:
    """The on-demand price of ``instance``; ValueError for a type the table does not list."""
    key = instance_hour_key(instance)
    if key not in DEFAULT_PRICES:
        known = sorted(
            k.removeprefix("ec2.").removesuffix(".hour")
            for k in DEFAULT_PRICES
            if k.startswith("ec2.") and not k.endswith(".spot.hour")
        )
        raise ValueError(f"no price for instance type {instance!r}; known: {', '.join(known)}")
    return GpuPrice(instance, DEFAULT_PRICES[key])
