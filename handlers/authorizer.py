"""API Gateway's Lambda authorizer (REQUEST type, identity source ``x-api-key``): a key to its caller.

An unknown, revoked or expired key raises ``Unauthorized``, which API Gateway answers 401 (gateway response
``UNAUTHORIZED``, in the API's error shape). A valid one gets a policy allowing the whole API (the answer is cached
per key, not per route), the caller in the context and its tenant's usage-plan key for the gateway's throttle.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.data_classes.api_gateway_authorizer_event import (
    APIGatewayAuthorizerRequestEvent,
    APIGatewayAuthorizerResponse,
)
from aws_lambda_powertools.utilities.typing import LambdaContext

from shared.apikeys import ApiKeyStore
from shared.aws import AwsClients
from shared.settings import get_settings
from shared.tenants import TenantStore
from workflows.authorization import Authorizer

logger = Logger(service="sdq-authorizer")
API_KEY_HEADER = "x-api-key"


class Unauthorized(Exception):
    """API Gateway turns exactly this message into a 401."""

    def __init__(self) -> None:
        super().__init__("Unauthorized")


@dataclass(frozen=True)
class Deps:
    authorizer: Authorizer


@lru_cache(maxsize=1)
def deps() -> Deps:
    settings = get_settings()
    aws = AwsClients(settings)
    keys = ApiKeyStore(aws.dynamodb(), settings.table_name, last_used_every_s=settings.api_key_last_used_every_s)
    return Deps(Authorizer(keys, TenantStore(aws.dynamodb(), settings.table_name, settings)))


def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    request = APIGatewayAuthorizerRequestEvent(event)
    api_key = request.headers.get(API_KEY_HEADER) or ""  # case-insensitive, as HTTP headers are
    found = deps().authorizer.authorize(api_key)
    if found is None:
        raise Unauthorized()
    response = APIGatewayAuthorizerResponse.from_route_arn(
        request.method_arn, principal_id=found.tenant, context=found.context(), usage_identifier_key=found.usage_key
    )
    response.allow_all_routes()
    logger.debug("authorized", tenant=found.tenant, key_id=found.key_id)
    return response.asdict()
