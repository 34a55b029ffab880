"""The media bucket: staging and output objects, and presigned download URLs."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


def preview_key(outputs_prefix: str, tenant: str, job_id: str) -> str:
    """Where a job's progress preview lives: beside its outputs (same prefix, same lifecycle expiry), one object
    per job, overwritten by each newer preview, deleted when the job is cancelled."""
    return f"{outputs_prefix}{tenant}/{job_id}/preview.jpg"


class MediaStore:
    """Adapter over the one S3 bucket holding staging images and final outputs."""

    def __init__(self, s3: S3Client, bucket: str) -> None:
        self._s3 = s3
        self.bucket = bucket

    def presign_get(self, key: str, expires_s: int) -> str:
        return self._s3.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires_s
        )

    def put(self, key: str, body: bytes, content_type: str) -> None:
        self._s3.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType=content_type)

    def get(self, key: str) -> bytes:
        return self._s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def missing_errors(self) -> tuple[type[Exception], ...]:
        """The exceptions ``get`` raises for an absent key."""
        return (self._s3.exceptions.NoSuchKey,)

    def delete(self, keys: list[str]) -> None:
        if keys:
            self._s3.delete_objects(Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True})
