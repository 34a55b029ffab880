"""The one AWS client factory. Every boto3 client in sdq is made here, on first use, never at import."""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any, Literal, overload

import boto3
from botocore.config import Config

from shared.dynamoretries import resend_writes_safely
from shared.settings import Settings, get_settings

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_lambda import LambdaClient
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_stepfunctions import SFNClient


class AwsClients:
    """Builds and caches boto3 clients honouring ``AWS_ENDPOINT_URL`` and the configured region.

    Clients are thread-safe once built; building is guarded by a lock because boto3 sessions are not.
    """

    def __init__(self, settings: Settings | None = None) -> None:
        self._settings = settings or get_settings()
        self._config = Config(
            retries={"total_max_attempts": self._settings.aws_max_attempts, "mode": "standard"},
            connect_timeout=self._settings.aws_connect_timeout_s,
            read_timeout=self._settings.aws_read_timeout_s,
            max_pool_connections=32,
        )
        self._lock = threading.Lock()
        self._clients: dict[str, Any] = {}
        self._session: boto3.session.Session | None = None

    @property
    def region(self) -> str:
        return (
            self._settings.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        )

    @property
    def endpoint_url(self) -> str | None:
        return self._settings.endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None

    @overload
    def client(self, service: Literal["dynamodb"]) -> DynamoDBClient: ...
    @overload
    def client(self, service: Literal["sqs"]) -> SQSClient: ...
    @overload
    def client(self, service: Literal["s3"]) -> S3Client: ...
    @overload
    def client(self, service: Literal["stepfunctions"]) -> SFNClient: ...
    @overload
    def client(self, service: Literal["lambda"]) -> LambdaClient: ...
    @overload
    def client(self, service: Literal["kms"]) -> Any: ...  # no KMS stubs among the dependencies
    def client(self, service: str) -> Any:
        """Return the cached client for ``service``, creating it on first use."""
        with self._lock:
            existing = self._clients.get(service)
            if existing is not None:
                return existing
            if self._session is None:
                self._session = boto3.session.Session()
            kwargs: dict[str, Any] = {"region_name": self.region, "config": self._config}
            if self.endpoint_url:
                kwargs["endpoint_url"] = self.endpoint_url
            if service == "s3" and self.endpoint_url:
                # Path-style keeps presigned URLs valid against a local endpoint without DNS tricks.
                kwargs["config"] = self._config.merge(Config(s3={"addressing_style": "path"}))
            created = self._session.client(service, **kwargs)  # type: ignore[call-overload]
            # botocore builds a client's modelled exception classes on first use, unguarded: two threads that race
            # there get two sets of classes, and `except client.exceptions.X` in one misses the X the other raised
            # (a ConditionalCheckFailed escaped this way once). Build them here, under the lock.
            _ = created.exceptions
            if service == "dynamodb":
                resend_writes_safely(created)
            self._clients[service] = created
            return created

    def dynamodb(self) -> DynamoDBClient:
        return self.client("dynamodb")

    def sqs(self) -> SQSClient:
        return self.client("sqs")

    def s3(self) -> S3Client:
        return self.client("s3")

    def stepfunctions(self) -> SFNClient:
        return self.client("stepfunctions")

    def kms(self) -> Any:
        return self.client("kms")
