"""Create (or update) the Prefect blocks that put task and flow results in S3, so every worker shares one task
cache and a sweep spread over a pool reads its variant runs' outcomes.

    python infra/s3_result_storage.py --bucket quantflow --endpoint-url http://127.0.0.1:8333   # SeaweedFS of the stack
    export PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK=s3-bucket/quantflow-results                   # on each worker / job

quantflow's cache keys are content digests plus the code version (flows/cache.py), never paths, so a result
persisted by one machine is a cache hit on any other that reads the same storage (the artifacts a result points to
live under QUANTFLOW_HOME: share it too, or a hit whose artifact is missing is recomputed). Credentials come from
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (stored in an AwsCredentials block, as secrets); they are never printed.
Needs prefect-aws and PREFECT_API_URL.
"""
from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bucket", default=os.environ.get("QUANTFLOW_RESULTS_BUCKET", "quantflow"))
    p.add_argument("--folder", default="prefect-results", help="key prefix inside the bucket")
    p.add_argument("--endpoint-url", default=os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"),
                   help="S3-compatible endpoint (SeaweedFS, MinIO); omit for AWS S3")
    p.add_argument("--region", default=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
    p.add_argument("--block-name", default="quantflow-results", help="S3Bucket block name")
    p.add_argument("--credentials-block", default="quantflow-s3", help="AwsCredentials block name")
    args = p.parse_args(argv)

    missing = [v for v in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY") if not os.environ.get(v)]
    if missing:
        print(f"set {' and '.join(missing)} in the environment", file=sys.stderr)
        return 2

    from prefect_aws import AwsCredentials, S3Bucket
    from prefect_aws.client_parameters import AwsClientParameters

    creds = AwsCredentials(
        aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
        region_name=args.region,
        aws_client_parameters=AwsClientParameters(endpoint_url=args.endpoint_url),
    )
    creds.save(args.credentials_block, overwrite=True)
    S3Bucket(bucket_name=args.bucket, bucket_folder=args.folder, credentials=creds).save(args.block_name, overwrite=True)
    where = f"s3://{args.bucket}/{args.folder}" + (f" at {args.endpoint_url}" if args.endpoint_url else "")
    print(f"Blocks aws-credentials/{args.credentials_block} and s3-bucket/{args.block_name} ({where}) saved.\n"
          f"Use them: PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK=s3-bucket/{args.block_name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
