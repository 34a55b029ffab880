"""The Python client of the sdq API (``pip install ./client``).

>>> from sdq_client import Client
>>> with Client("http://127.0.0.1:8000", api_key="sdq_...") as sdq:
...     job = sdq.run({"prompt": "a red fox", "seed": 7})
"""

from sdq_client._version import __version__
from sdq_client.client import DEFAULT_POLL_S, MAX_WAIT_S, AsyncClient, Client
from sdq_client.errors import (
    ApiError,
    BadRequest,
    ConfigurationError,
    Conflict,
    FieldError,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    SdqError,
    ServerError,
    Unauthorized,
    UnsupportedMediaType,
    WaitTimeout,
    WebhookVerificationError,
)
from sdq_client.models import (
    CacheInfo,
    ErrorBody,
    ErrorInfo,
    GenerationRequest,
    Job,
    JobError,
    JobEvent,
    JobList,
    JobStatus,
    JobView,
    OutputView,
    ProgressView,
    QueueInfo,
    RotatedWebhookSecret,
    Timings,
    Usage,
    WebhookSecret,
    WebhookState,
)
from sdq_client.webhooks import verify_webhook

__all__ = [
    "DEFAULT_POLL_S",
    "MAX_WAIT_S",
    "ApiError",
    "AsyncClient",
    "BadRequest",
    "CacheInfo",
    "Client",
    "ConfigurationError",
    "Conflict",
    "ErrorBody",
    "ErrorInfo",
    "FieldError",
    "GenerationRequest",
    "InvalidRequest",
    "Job",
    "JobError",
    "JobEvent",
    "JobList",
    "JobStatus",
    "JobView",
    "NotFound",
    "OutputView",
    "PayloadTooLarge",
    "ProgressView",
    "QueueInfo",
    "RateLimited",
    "RotatedWebhookSecret",
    "SdqError",
    "ServerError",
    "Timings",
    "Unauthorized",
    "UnsupportedMediaType",
    "Usage",
    "WaitTimeout",
    "WebhookSecret",
    "WebhookState",
    "WebhookVerificationError",
    "__version__",
    "verify_webhook",
]
