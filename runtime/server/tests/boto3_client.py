"""An unmodified boto3 sagemaker-runtime client against `edgemm serve`.

Driven by tests/boto3.rs: reads cases from a JSON file, calls InvokeEndpoint for each with
`endpoint_url` at the server and dummy credentials, and writes what came back (the body, the
response headers boto3 exposes, or the botocore exception class and code) as JSON.
"""

import json
import sys

import boto3
import botocore.config


def main():
    url, cases_path, out_path = sys.argv[1:4]
    with open(cases_path) as f:
        cases = json.load(f)
    client = boto3.client(
        "sagemaker-runtime",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="dummy-secret",
        # No retries: each case is one request, so a 503 would not be retried behind our back.
        config=botocore.config.Config(retries={"total_max_attempts": 1}, read_timeout=120),
    )
    results = []
    for case in cases:
        kwargs = {
            "EndpointName": "device",
            "Body": open(case["body_file"], "rb").read(),
            "ContentType": case["content_type"],
        }
        if case.get("target_model"):
            kwargs["TargetModel"] = case["target_model"]
        if case.get("custom_attributes"):
            kwargs["CustomAttributes"] = case["custom_attributes"]
        if case.get("accept"):
            kwargs["Accept"] = case["accept"]
        try:
            response = client.invoke_endpoint(**kwargs)
            results.append(
                {
                    "ok": True,
                    "body": json.loads(response["Body"].read()),
                    "content_type": response.get("ContentType"),
                    "variant": response.get("InvokedProductionVariant"),
                    "custom_attributes": response.get("CustomAttributes"),
                }
            )
        except Exception as e:  # report any exception, the test checks its class
            error = getattr(e, "response", {}).get("Error", {})
            results.append(
                {
                    "ok": False,
                    "exception": type(e).__name__,
                    "code": error.get("Code"),
                    "message": error.get("Message"),
                    "status": getattr(e, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode"),
                    "original_status": getattr(e, "response", {}).get("OriginalStatusCode"),
                }
            )
    with open(out_path, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
