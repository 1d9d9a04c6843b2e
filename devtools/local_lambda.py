"""What the Lambda runtime gives a handler, for running the real handlers locally (tests, demo, bench)."""

from __future__ import annotations

from dataclasses import dataclass

REGION = "us-east-1"


@dataclass
class FakeLambdaContext:
    """The parts of the Lambda context object that Powertools and the handlers read."""

    function_name: str = "cloudmap-reactor-local"
    memory_limit_in_mb: int = 256
    invoked_function_arn: str = f"arn:aws:lambda:{REGION}:123456789012:function:cloudmap-reactor-local"
    aws_request_id: str = "5b1e2c3d-0000-4000-8000-000000000000"
    remaining_ms: int = 60_000

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


def emulator_environment(endpoint: str | None = None) -> dict[str, str]:
    """The environment the handlers get when the local emulator stands in for AWS.

    ``endpoint``: a moto server's URL (demo, bench); None for in-process moto (tests).
    """
    env = {
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "POWERTOOLS_SERVICE_NAME": "cloudmap-reactor",
        "POWERTOOLS_METRICS_NAMESPACE": "CloudMapReactor",
        "POWERTOOLS_TRACE_DISABLED": "true",
        # The tasks the poller probes here are HTTP servers on 127.0.0.1, which a deployed poller refuses.
        "PROBE_ALLOW_LOOPBACK": "true",
    }
    if endpoint:
        env["AWS_ENDPOINT_URL"] = endpoint
    return env
