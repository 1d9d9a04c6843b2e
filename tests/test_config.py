"""Policy are parsed once, strictly, with an error that names every bad variable."""

from __future__ import annotations

import pytest

from cloudmap_reactor.config import ConfigError, Policy

PROD = "arn:aws:ecs:us-east-1:123456789012:cluster/prod"
GOV = "arn:aws-us-gov:ecs:us-gov-west-1:123456789012:cluster/gov_1"


def test_defaults_scan_every_cluster_and_change_things() -> None:
    settings = Policy.from_env({})
    assert settings == Policy(cluster_arns=(), dry_run=False, log_level="INFO", service_cache_ttl_seconds=30.0)
    assert settings.in_scope(PROD)


def test_cluster_arns_are_trimmed_deduplicated_and_scope_the_clusters() -> None:
    settings = Policy.from_env({"CLUSTER_ARNS": f" {PROD} ,{GOV},,{PROD}"})
    assert settings.cluster_arns == (PROD, GOV)
    assert settings.in_scope(GOV)
    assert not settings.in_scope("arn:aws:ecs:us-east-1:123456789012:cluster/other")


@pytest.mark.parametrize(
    ("raw", "expected"), [("true", True), ("TRUE", True), ("1", True), ("false", False), ("", False)]
)
def test_dry_run(raw: str, expected: bool) -> None:
    assert Policy.from_env({"DRY_RUN": raw}).dry_run is expected


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as raised:
        Policy.from_env(
            {
                "CLUSTER_ARNS": "prod,arn:aws:ecs:us-east-1:123:cluster/x",
                "DRY_RUN": "maybe",
                "LOG_LEVEL": "chatty",
                "SERVICE_CACHE_TTL_SECONDS": "-1",
            }
        )
    message = str(raised.value)
    for fragment in ("'prod'", "cluster/x", "DRY_RUN='maybe'", "LOG_LEVEL='chatty'", "SERVICE_CACHE_TTL_SECONDS"):
        assert fragment in message


def test_bad_configuration_fails_the_invocation_with_the_message(
    aws: object, env: pytest.MonkeyPatch, lambda_context: object
) -> None:
    from cloudmap_reactor import wiring
    from cloudmap_reactor.handlers import task_state_change
    from tests.conftest import load_event

    env.setenv("DRY_RUN", "perhaps")
    wiring.reset()  # a new container: the policy is read again
    with pytest.raises(ConfigError, match="DRY_RUN='perhaps' must be true or false"):
        task_state_change.lambda_handler(load_event("task-stopping.json"), lambda_context)


def test_http_probes_are_off_unless_the_template_turns_them_on() -> None:
    defaults = Policy.from_env({})
    assert (defaults.http_probes, defaults.probe_failure_threshold) == (False, 3)
    assert (defaults.probe_connect_timeout_seconds, defaults.probe_read_timeout_seconds) == (1.0, 2.0)
    tuned = Policy.from_env(
        {
            "HTTP_PROBES": "true",
            "PROBE_CONNECT_TIMEOUT_SECONDS": "0.5",
            "PROBE_READ_TIMEOUT_SECONDS": "5",
            "PROBE_FAILURE_THRESHOLD": "2",
            "PROBE_CONCURRENCY": "64",
        }
    )
    assert (tuned.http_probes, tuned.probe_connect_timeout_seconds, tuned.probe_read_timeout_seconds) == (
        True,
        0.5,
        5.0,
    )
    assert (tuned.probe_failure_threshold, tuned.probe_concurrency) == (2, 64)


def test_probe_settings_are_bounded() -> None:
    with pytest.raises(ConfigError) as raised:
        Policy.from_env(
            {"PROBE_CONNECT_TIMEOUT_SECONDS": "0", "PROBE_READ_TIMEOUT_SECONDS": "60", "PROBE_FAILURE_THRESHOLD": "1.5"}
        )
    for name in ("PROBE_CONNECT_TIMEOUT_SECONDS", "PROBE_READ_TIMEOUT_SECONDS", "PROBE_FAILURE_THRESHOLD"):
        assert name in str(raised.value)


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("ECS_READS_PER_SECOND", "1e-320", "from 0 to 1000"),  # no exponents
        ("ECS_READS_PER_SECOND", "0.001", "at least 0.5"),  # would hang the scan
        ("ECS_READS_PER_SECOND", "nan", "from 0 to 1000"),
        ("POLL_INTERVAL_SECONDS", "²", "from 1 to 300"),  # a digit to str.isdigit, not to us
        ("PROBE_FAILURE_THRESHOLD", "\uff13", "a whole number"),  # fullwidth digit three
        ("SCAN_CONCURRENCY", "0", "from 1 to 64"),
        ("SERVICE_REFRESH_PASSES", "-1", "from 1 to 10000"),
        ("MIN_HEALTHY_PERCENT", "101", "from 0 to 100"),
        ("POLL_WINDOW_SECONDS", "inf", "from 0 to 900"),
        ("POLL_SCHEDULE", "rate(0 minutes)", "rate(<n>"),
        ("POLL_SCHEDULE", "every minute", "rate(<n>"),
        ("CLUSTER_ARNS", "arn:aws:ecs:eu-west-1:123456789012:cluster/prod", "not in this region (us-east-1)"),
    ],
)
def test_every_setting_is_bounded_and_an_error_names_variable_value_and_range(name: str, value: str, says: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Policy.from_env({"AWS_REGION": "us-east-1", name: value})
    message = str(raised.value)
    assert name in message
    assert value in message
    assert says in message


def test_clusters_of_two_accounts_are_refused() -> None:
    other = "arn:aws:ecs:us-east-1:210987654321:cluster/prod"
    with pytest.raises(ConfigError, match="more than one account"):
        Policy.from_env({"CLUSTER_ARNS": f"{PROD},{other}"})


@pytest.mark.parametrize(
    ("module", "variable", "value", "message"),
    [
        ("task_state_change", "MIN_HEALTHY_PERCENT", "150", "MIN_HEALTHY_PERCENT='150' must be a number from 0 to 100"),
        ("health_poller", "MIN_HEALTHY_PERCENT", "150", "MIN_HEALTHY_PERCENT='150' must be a number from 0 to 100"),
        # Not a ValueError from inside Powertools' Logger at import: the policy's message.
        ("health_poller", "LOG_LEVEL", "verbose", "LOG_LEVEL='verbose' is not a log level"),
        ("task_state_change", "POWERTOOLS_LOG_LEVEL", "verbose", "POWERTOOLS_LOG_LEVEL='verbose' is not a log level"),
    ],
)
def test_a_bad_setting_stops_the_function_at_import(module: str, variable: str, value: str, message: str) -> None:
    """Lambda reports an init error with the message, instead of failing every invocation later."""
    import os
    import subprocess
    import sys

    env = {**os.environ, variable: value}
    done = subprocess.run(
        [sys.executable, "-c", f"import cloudmap_reactor.handlers.{module}"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        cwd=os.path.join(os.path.dirname(__file__), "..", "functions"),
    )
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("cloudmap_reactor.config.ConfigError: invalid configuration: "), done.stderr
    assert message in last


def test_stack_parameters_become_the_policy() -> None:
    policy = Policy.from_stack_parameters({"MinHealthyPercent": "75", "DryRun": "true", "Unrelated": "x"})
    assert (policy.min_healthy_percent, policy.dry_run) == (75.0, True)
    assert policy.probe_failure_threshold == Policy().probe_failure_threshold


@pytest.mark.parametrize(("raw", "expected"), [("", True), ("true", True), ("false", False), ("off", False)])
def test_enabled_is_the_emergency_stop(raw: str, expected: bool) -> None:
    assert Policy.from_env({"ENABLED": raw}).enabled is expected
    assert Policy.environment_of("enabled") == ("ENABLED", "Enabled")


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "INFO"),
        ({"LOG_LEVEL": "debug"}, "DEBUG"),
        ({"POWERTOOLS_LOG_LEVEL": "warning"}, "WARNING"),
        ({"LOG_LEVEL": "DEBUG", "POWERTOOLS_LOG_LEVEL": "ERROR"}, "ERROR"),  # Powertools' own variable wins
        ({"LOG_LEVEL": "DEBUG", "POWERTOOLS_LOG_LEVEL": " "}, "DEBUG"),  # blank: not set
        ({"POWERTOOLS_LOG_LEVEL": "WARN"}, "WARNING"),  # the names of Lambda's logging controls
        ({"LOG_LEVEL": "fatal"}, "CRITICAL"),
        ({"LOG_LEVEL": "TRACE"}, "DEBUG"),
    ],
)
def test_log_level_follows_powertools_precedence(env: dict[str, str], expected: str) -> None:
    assert Policy.from_env(env).log_level == expected


@pytest.mark.parametrize("variable", ["LOG_LEVEL", "POWERTOOLS_LOG_LEVEL"])
def test_an_invalid_log_level_is_rejected_naming_its_variable(variable: str) -> None:
    with pytest.raises(ConfigError, match=rf"{variable}='verbose' is not a log level: use one of \['DEBUG'"):
        Policy.from_env({variable: "verbose"})
