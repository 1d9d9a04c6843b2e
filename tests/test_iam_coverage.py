"""IAM that matches what the code calls: every AWS call the deployed code can make is granted to the
function that makes it, exactly when the parameters turn its feature on, and nothing else is.

1. **What the code calls** is read from the source, not from a list: the modules the two handlers
   import (transitively) are parsed, and every ``client.<operation>(…)`` and every operation named as
   a string (``get_paginator("list_tasks")``, ``self._list("list_clusters", …)``) in a class or
   function that holds a typed boto3 client (``ECSClient``…) becomes an IAM action through botocore's
   service model (``describe_services`` → ``ecs:DescribeServices``).
2. **Who needs it, when**: ``NEEDS`` says, per action, which function makes the call, under which
   parameters (``on``), with which resource and condition context, and under which parameters it must
   be refused (``off``). A call found in the code but missing from ``NEEDS`` fails the test: add the
   need, and the grant to template.yaml.
3. **What the template grants** is evaluated on the SAM-translated template for those parameters
   (``test_template.Stack``) by a small IAM evaluator (actions, resources, ``Condition`` operators),
   with and without ``ClusterArns``; requests against other clusters must be refused where the action
   takes the ``ecs:cluster`` key. Grants the table does not explain fail too (no over-grants).
4. **The table against the running code**: scenarios run the handlers against the emulator with every
   call recorded, and each recorded call must be a need of that function under that deployment.

Route 53 and KMS actions are not called by the code: Cloud Map (DNS namespaces) and DynamoDB (the
ledger's customer managed key) perform them with the caller's rights, so they follow the calls that
cause them (``DEPENDENT``).
"""

from __future__ import annotations

import ast
import fnmatch
import json
import textwrap
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from botocore import xform_name

from cloudmap_reactor import wiring
from cloudmap_reactor.adapters import clients
from cloudmap_reactor.config import Policy
from cloudmap_reactor.handlers import task_state_change
from devtools.aws_emulator import FleetBuilder
from devtools.local_lambda import FakeLambdaContext
from tests.conftest import poll, task_event
from tests.test_template import (
    ACCOUNT,
    CLUSTERS,
    POLLER,
    REACTOR,
    REGION,
    WITH_CLUSTERS,
    Stack,
    as_deployed,
    role_of,
    role_statements,
)

Json = Any
Params = Mapping[str, str]
PACKAGE = Path(__file__).resolve().parent.parent / "functions" / "cloudmap_reactor"
CLIENT_SERVICES = ("ecs", "servicediscovery", "dynamodb")  # the boto3 clients the functions create
HANDLERS = {REACTOR: "cloudmap_reactor.handlers.task_state_change", POLLER: "cloudmap_reactor.handlers.health_poller"}

# --------------------------------------------------------------------------------------------
# 1. What the code calls
# --------------------------------------------------------------------------------------------


@cache
def operations(service: str) -> tuple[str, dict[str, str]]:
    """(IAM prefix, snake_case operation -> API operation) of a boto3 service, from botocore's model."""
    model = botocore.session.get_session().get_service_model(service)
    return model.signing_name, {xform_name(op): op for op in model.operation_names}


def module_path(module: str) -> Path:
    relative = Path(*module.split(".")[1:])
    package = PACKAGE / relative / "__init__.py"
    return package if package.exists() else PACKAGE / relative.with_suffix(".py")


def deployed_modules() -> set[str]:
    """The package's modules the handlers import, directly or not (imports inside functions too)."""
    seen: set[str] = set()
    todo = list(HANDLERS.values())
    while todo:
        module = todo.pop()
        if module in seen or not module_path(module).exists():
            continue
        seen.add(module)
        for node in ast.walk(ast.parse(module_path(module).read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cloudmap_reactor"):
                todo.append(node.module)
                todo.extend(f"{node.module}.{alias.name}" for alias in node.names)  # `from pkg import module`
            elif isinstance(node, ast.Import):
                todo.extend(a.name for a in node.names if a.name.startswith("cloudmap_reactor"))
    return seen


@dataclass
class Found:
    actions: dict[str, set[str]] = field(default_factory=dict)  # IAM action -> where (module:scope)
    services_created: set[str] = field(default_factory=set)  # boto3.client("…"), session().client("…")
    problems: list[str] = field(default_factory=list)


def calls_in_source(source: str, where: str, found: Found) -> None:
    """Add the AWS calls of one module's source to ``found``."""
    tree = ast.parse(source)
    client_types = {
        alias.asname or alias.name: node.module.removeprefix("mypy_boto3_")
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mypy_boto3_")
        for alias in node.names
        if alias.name.endswith("Client")
    }
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "client"
            # boto3.client("…") or a session's: _session().client("…") (clients.py's trimmed session)
            and (
                (isinstance(node.func.value, ast.Name) and node.func.value.id == "boto3")
                or isinstance(node.func.value, ast.Call)
            )
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            found.services_created.add(str(node.args[0].value))
    for scope in tree.body:
        if not isinstance(scope, ast.ClassDef | ast.FunctionDef):
            continue
        names = {n.id for n in ast.walk(scope) if isinstance(n, ast.Name)}
        names |= {n.value for n in ast.walk(scope) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
        services = {client_types[name] for name in names if name in client_types}
        client_calls = [name for n in ast.walk(scope) if isinstance(n, ast.Call) and (name := _client_method(n.func))]
        if not services:
            known = {op for svc in {*CLIENT_SERVICES, *client_types.values()} for op in operations(svc)[1]}
            if stray := [c for c in client_calls if c in known]:
                found.problems.append(f"{where}:{scope.name} calls {stray} on a client of unknown service")
            continue
        if len(services) > 1:
            found.problems.append(f"{where}:{scope.name} holds clients of {sorted(services)}: split it")
            continue
        (service,) = services
        prefix, by_snake = operations(service)
        strings = {n.value for n in ast.walk(scope) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
        for snake in (set(client_calls) | strings) & by_snake.keys():
            found.actions.setdefault(f"{prefix}:{by_snake[snake]}", set()).add(f"{where}:{scope.name}")
        helpers = {"get_paginator", "meta", "can_paginate", "close", "get_waiter", "exceptions"}
        if unknown := set(client_calls) - by_snake.keys() - helpers:
            found.problems.append(f"{where}:{scope.name}: {sorted(unknown)} are not {service} operations")


def _client_method(func: ast.expr) -> str | None:
    """``x`` of ``client.x(…)`` or ``self._client.x(…)``: a method called on something named like a client."""
    if not isinstance(func, ast.Attribute) or func.attr.startswith("_"):
        return None
    owner = func.value
    name = owner.id if isinstance(owner, ast.Name) else owner.attr if isinstance(owner, ast.Attribute) else ""
    return func.attr if "client" in name.lower() else None


@cache
def code_calls() -> Found:
    found = Found()
    for module in sorted(deployed_modules()):
        calls_in_source(module_path(module).read_text(encoding="utf-8"), module, found)
    return found


# --------------------------------------------------------------------------------------------
# 2. Who needs what, when
# --------------------------------------------------------------------------------------------

READINESS = {"ReadinessEvents": "true"}
DNS = {"DnsNamespaces": "true"}
BY_TAG = {"ClusterTag": "team=payments"}
HEAL_ALL = {"RedeployStaleClients": "true"}
REPLACING = {"ReplaceAfterSeconds": "600"}
REDEPLOY_TAG = "aws:ResourceTag/cloudmap-reactor:redeploy-stale"

CLUSTER = CLUSTERS[0]
OTHER_CLUSTER = f"arn:aws:ecs:{REGION}:{ACCOUNT}:cluster/elsewhere"
ECS_SERVICE = f"arn:aws:ecs:{REGION}:{ACCOUNT}:service/prod/web"
ECS_TASK = f"arn:aws:ecs:{REGION}:{ACCOUNT}:task/prod/0123456789abcdef0123456789abcdef"
CLOUDMAP_SERVICE = f"arn:aws:servicediscovery:{REGION}:{ACCOUNT}:service/srv-0123456789abcdef"
LEDGER = "<LedgerTable.Arn>"
ON_CLUSTER = {"ecs:cluster": CLUSTER}  # the request context of an action that takes ecs:cluster


@dataclass(frozen=True)
class Need:
    """``function`` calls ``action`` on ``resource`` (with ``context``) when the parameters include ``on``;
    with ``off`` instead, the same request must be refused."""

    function: str
    action: str
    resource: str = "*"
    context: Mapping[str, str] = field(default_factory=dict)
    on: Params = field(default_factory=dict)
    off: Params | None = None
    without: tuple[str, ...] = ()  # parameters that must be empty for the call to be made

    def applies(self, params: Params) -> bool:
        return all(params.get(k) == v for k, v in self.on.items()) and not any(params.get(k) for k in self.without)

    def __str__(self) -> str:
        return f"{self.function}:{self.action}:{'+'.join(f'{k}={v}' for k, v in self.on.items()) or 'always'}"


def _needs() -> list[Need]:
    reactor, poller = REACTOR, POLLER
    needs = [
        # The reactor: a stopping task's service, its removal from Cloud Map, the operation's status.
        Need(reactor, "ecs:DescribeServices", ECS_SERVICE, ON_CLUSTER),
        Need(reactor, "servicediscovery:DeregisterInstance", CLOUDMAP_SERVICE),
        Need(reactor, "servicediscovery:GetOperation"),
        Need(reactor, "ecs:DescribeClusters", CLUSTER, on=BY_TAG, off={}),
        # ...and with readiness events, one service's tasks, instances and ledger records.
        Need(reactor, "ecs:ListTasks", "*", ON_CLUSTER, on=READINESS, off={}),
        Need(reactor, "ecs:DescribeTasks", ECS_TASK, ON_CLUSTER, on=READINESS, off={}),
        Need(reactor, "servicediscovery:ListInstances", CLOUDMAP_SERVICE, on=READINESS, off={}),
        Need(reactor, "servicediscovery:RegisterInstance", CLOUDMAP_SERVICE, on=READINESS, off={}),
        *(Need(reactor, f"dynamodb:{a}", LEDGER, on=READINESS, off={}) for a in ("Query", "PutItem", "DeleteItem")),
        # The poller.
        Need(poller, "ecs:ListClusters", without=("ClusterArns",), off=WITH_CLUSTERS),
        Need(poller, "ecs:DescribeClusters", CLUSTER, on=BY_TAG, off={}),
        Need(poller, "ecs:ListServices", "*", ON_CLUSTER),
        Need(poller, "ecs:ListTasks", "*", ON_CLUSTER),
        Need(poller, "ecs:DescribeServices", ECS_SERVICE, ON_CLUSTER),
        Need(poller, "ecs:DescribeTasks", ECS_TASK, ON_CLUSTER),
        # Start order: tagged services always; every service only with RedeployStaleClients=true.
        Need(poller, "ecs:UpdateService", ECS_SERVICE, {**ON_CLUSTER, REDEPLOY_TAG: "true"}),
        Need(poller, "ecs:UpdateService", ECS_SERVICE, ON_CLUSTER, on=HEAL_ALL, off={}),
        Need(poller, "ecs:StopTask", ECS_TASK, ON_CLUSTER, on=REPLACING, off={}),
        *(
            Need(poller, f"servicediscovery:{a}", CLOUDMAP_SERVICE)
            for a in ("DeregisterInstance", "ListInstances", "GetService", "RegisterInstance")
        ),
        Need(poller, "servicediscovery:GetOperation"),
        *(Need(poller, f"dynamodb:{a}", LEDGER) for a in ("Query", "GetItem", "PutItem", "DeleteItem")),
        # Whether a service's tasks have a container health check (no resource-level permissions).
        Need(poller, "ecs:DescribeTaskDefinition"),
    ]
    return needs + [d for n in needs for d in dependent_needs(n)]


# Granted before the code calls them (another branch adds the call): allowed to be absent from the code.
ANTICIPATED: set[str] = set()
HOSTED_ZONE = "arn:aws:route53:::hostedzone/Z0123456789ABCDEFGHIJ"
HEALTH_CHECK = "arn:aws:route53:::healthcheck/abcdef01-2345-6789-abcd-ef0123456789"
# What AWS performs with the caller's rights because of a call (AWS Cloud Map API permissions
# reference; DynamoDB with a customer managed key): (action, resource, context, extra parameters).
DEPENDENT: dict[str, list[tuple[str, str, dict[str, str], Params]]] = {
    "servicediscovery:DeregisterInstance": [
        ("route53:ChangeResourceRecordSets", HOSTED_ZONE, {}, DNS),
        ("route53:GetHealthCheck", HEALTH_CHECK, {}, DNS),
        ("route53:UpdateHealthCheck", HEALTH_CHECK, {}, DNS),
        ("route53:DeleteHealthCheck", HEALTH_CHECK, {}, DNS),
    ],
    "servicediscovery:RegisterInstance": [
        ("route53:ChangeResourceRecordSets", HOSTED_ZONE, {}, DNS),
        ("route53:CreateHealthCheck", "*", {}, DNS),
        ("route53:GetHealthCheck", HEALTH_CHECK, {}, DNS),
    ],
    **{
        f"dynamodb:{action}": [
            ("kms:Decrypt", "<LedgerTableKey.Arn>", {"kms:ViaService": f"dynamodb.{REGION}.amazonaws.com"}, {}),
            ("kms:GenerateDataKey", "<LedgerTableKey.Arn>", {"kms:ViaService": f"dynamodb.{REGION}.amazonaws.com"}, {}),
        ]
        for action in ("Query", "GetItem", "PutItem", "DeleteItem")
    },
}


def dependent_needs(need: Need) -> Iterator[Need]:
    for action, resource, context, extra in DEPENDENT.get(need.action, []):
        on = {**need.on, **extra}
        off = need.on if extra else need.off
        yield Need(need.function, action, resource, context, on=on, off=off, without=need.without)


NEEDS = _needs()
# Actions whose requests carry ecs:cluster (Service Authorization Reference for Amazon ECS).
CLUSTER_KEYED = {
    "ecs:ListServices", "ecs:ListTasks", "ecs:DescribeServices", "ecs:DescribeTasks", "ecs:UpdateService",
    "ecs:StopTask",
}  # fmt: skip
# Granted by SAM or the template for something other than an AWS call of the code.
NOT_CALLS = {"sqs:SendMessage"}  # the reactor's dead-letter queue (Lambda sends with the role)


# --------------------------------------------------------------------------------------------
# 3. What the template grants
# --------------------------------------------------------------------------------------------


def _values(value: Json) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _condition_holds(condition: Mapping[str, Json], context: Mapping[str, str]) -> bool:
    for operator, keys in condition.items():
        for key, wanted in keys.items():
            if key not in context:
                return False
            have, options = context[key], _values(wanted)
            if operator in {"ArnEquals", "ArnLike", "StringLike"}:
                ok = any(fnmatch.fnmatchcase(have, o) for o in options)
            elif operator == "StringEquals":
                ok = have in options
            elif operator == "StringEqualsIgnoreCase":
                ok = have.lower() in {o.lower() for o in options}
            else:
                raise AssertionError(f"the evaluator does not know the condition operator {operator}")
            if not ok:
                return False
    return True


def allowed(stack: Stack, function: str, action: str, resource: str, context: Mapping[str, str]) -> bool:
    """Whether the function's role allows the request (its inline policies hold only Allow statements)."""
    for statement in role_statements(stack, function):
        assert statement["Effect"] == "Allow"
        if not any(fnmatch.fnmatchcase(action, a) for a in _values(statement["Action"])):
            continue
        if not any(fnmatch.fnmatchcase(resource, r) for r in _values(statement["Resource"])):
            continue
        if _condition_holds(statement.get("Condition", {}), context):
            return True
    return False


@cache
def stack_for(frozen: tuple[tuple[str, str], ...]) -> Stack:
    return Stack(dict(frozen))


def stack(params: Params) -> Stack:
    return stack_for(tuple(sorted(params.items())))


def granted_actions(stack: Stack, function: str) -> set[str]:
    return {a for s in role_statements(stack, function) for a in _values(s["Action"])}


BASES = {"all-clusters": {}, "given-clusters": WITH_CLUSTERS}


def combine(need_params: Params, base: Params) -> Params | None:
    """The parameters of a deployment (None: ClusterArns with ClusterTag, which the template refuses)."""
    params = {**base, **need_params}
    return None if "ClusterTag" in params and "ClusterArns" in params else params


# --------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------


def test_the_deployed_code_is_read_and_its_clients_are_known() -> None:
    found = code_calls()
    assert not found.problems, found.problems
    assert {"cloudmap_reactor.adapters.ecs", "cloudmap_reactor.adapters.cloudmap"} <= deployed_modules()
    assert "cloudmap_reactor.cli" not in deployed_modules()  # the CLI runs with the operator's rights
    assert found.services_created == set(CLIENT_SERVICES), "a new kind of client: teach this test its types"
    assert {"ecs:ListTasks", "ecs:DescribeServices", "servicediscovery:DeregisterInstance"} <= found.actions.keys()


def test_every_call_in_the_code_is_a_need_and_every_need_a_call() -> None:
    called = set(code_calls().actions)
    needed = {n.action for n in NEEDS if n.action.split(":")[0] not in {"route53", "kms"}}
    missing = {a: sorted(code_calls().actions[a]) for a in called - needed}
    assert not missing, f"calls without a need (add them to NEEDS and grant them in template.yaml): {missing}"
    assert needed - called <= ANTICIPATED, f"needs the code no longer calls: {sorted(needed - called - ANTICIPATED)}"


def test_a_new_call_is_found() -> None:
    """A call added to any class holding a typed client is found, however it is spelled."""
    source = textwrap.dedent(
        """
        from typing import TYPE_CHECKING
        if TYPE_CHECKING:
            from mypy_boto3_servicediscovery import ServiceDiscoveryClient

        class Finder:
            def __init__(self, client: ServiceDiscoveryClient) -> None:
                self._client = client

            def find(self) -> None:
                self._client.discover_instances(NamespaceName="n", ServiceName="s")
                self._client.get_paginator("list_namespaces")
        """
    )
    found = Found()
    calls_in_source(source, "example", found)
    assert set(found.actions) == {"servicediscovery:DiscoverInstances", "servicediscovery:ListNamespaces"}
    assert not found.problems


def deployments_of(need: Need) -> Iterator[Any]:
    """The need in each base deployment where its call is made (ClusterTag with ClusterArns is refused)."""
    for name, base in BASES.items():
        on = combine(need.on, base)
        if on is not None and need.applies(on):
            yield pytest.param(need, base, id=f"{need}-{name}")


@pytest.mark.parametrize(("need", "base"), [p for need in NEEDS for p in deployments_of(need)])
def test_each_need_is_granted_when_its_feature_is_on_and_refused_when_off(need: Need, base: Params) -> None:
    on = combine(need.on, base)
    assert on is not None
    assert allowed(stack(on), need.function, need.action, need.resource, need.context), f"{need} not granted"
    if need.off is not None and (off := combine(need.off, base)) is not None and off != on:
        assert not allowed(stack(off), need.function, need.action, need.resource, need.context), (
            f"{need} granted without its feature ({off})"
        )
    if "ClusterArns" in on and need.action in CLUSTER_KEYED:
        elsewhere = {**need.context, "ecs:cluster": OTHER_CLUSTER}
        assert not allowed(stack(on), need.function, need.action, need.resource, elsewhere), (
            f"{need}: granted outside ClusterArns"
        )


def test_redeploying_untagged_services_needs_redeploy_stale_clients() -> None:
    untagged = {"ecs:cluster": CLUSTER}
    assert not allowed(stack({}), POLLER, "ecs:UpdateService", ECS_SERVICE, untagged)
    assert not allowed(stack({}), POLLER, "ecs:UpdateService", ECS_SERVICE, {**untagged, REDEPLOY_TAG: "false"})
    assert allowed(stack({}), POLLER, "ecs:UpdateService", ECS_SERVICE, {**untagged, REDEPLOY_TAG: "TRUE"})
    assert allowed(stack(HEAL_ALL), POLLER, "ecs:UpdateService", ECS_SERVICE, untagged)


DEPLOYMENTS = {
    "defaults": {},
    "given-clusters": WITH_CLUSTERS,
    "by-tag": BY_TAG,
    "everything-on": {**READINESS, **DNS, **HEAL_ALL, **REPLACING},
    "everything-on-given-clusters": {**READINESS, **DNS, **HEAL_ALL, **REPLACING, **WITH_CLUSTERS},
    "everything-on-by-tag": {**READINESS, **DNS, **HEAL_ALL, **REPLACING, **BY_TAG},
}


@pytest.mark.parametrize("params", list(DEPLOYMENTS.values()), ids=list(DEPLOYMENTS))
@pytest.mark.parametrize("function", [REACTOR, POLLER])
def test_nothing_is_granted_that_no_need_explains(function: str, params: Params) -> None:
    explained = {n.action for n in NEEDS if n.function == function and n.applies(params)} | NOT_CALLS
    extra = granted_actions(stack(params), function) - explained
    assert not extra, f"{function} is granted {sorted(extra)} under {params}, which nothing it does needs"


# --------------------------------------------------------------------------------------------
# 4. The table against the running code
# --------------------------------------------------------------------------------------------


@dataclass
class Recorder:
    """Every AWS call a function's clients make: (IAM action, request parameters)."""

    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def __call__(self, model: Any, params: dict[str, Any], **_: Any) -> None:
        self.calls.append((f"{model.service_model.signing_name}:{model.name}", params))

    def attach(self) -> Recorder:
        for client in (clients.ecs_client(), clients.cloudmap_client(), clients.dynamodb_client()):
            client.meta.events.register("before-call", self)
        return self


def deployed_env(env: pytest.MonkeyPatch, params: Params) -> None:
    """The functions' environment as the template sets it from these parameters."""
    for spec in fields(Policy):
        parameter = spec.metadata["parameter"]
        if parameter in params:
            env.setenv(spec.metadata["env"], params[parameter])


def assert_needed(function: str, params: Params, recorded: Recorder) -> None:
    explained = {n.action for n in NEEDS if n.function == function and n.applies(params)}
    made = {action for action, _ in recorded.calls}
    assert made, "the scenario made no AWS call"
    assert made <= explained, f"{function} called {sorted(made - explained)} under {params}: not in NEEDS"


SCENARIOS = {
    "defaults": {},
    "everything-on": {**READINESS, **HEAL_ALL, **REPLACING, "HoldUntilHealthy": "true"},
    "by-tag": BY_TAG,
}


@pytest.mark.parametrize("params", list(SCENARIOS.values()), ids=list(SCENARIOS))
def test_what_the_functions_call_is_what_the_table_says(
    aws: FleetBuilder, env: pytest.MonkeyPatch, lambda_context: FakeLambdaContext, params: Params
) -> None:
    prod = aws.create_cluster("prod")
    if "ClusterTag" in params:
        boto_ecs = clients.ecs_client()
        boto_ecs.tag_resource(resourceArn=prod, tags=[{"key": "team", "value": "payments"}])
    deployed_env(env, params)
    service = aws.create_service("prod", "orders", discovery_names=["orders"])
    tasks = aws.start_tasks(service, 3)
    for arn in tasks:
        aws.set_health(arn, "HEALTHY")
    aws.set_health(tasks[0], "UNHEALTHY")
    wiring.reset()

    poller_calls = Recorder().attach()
    poll(lambda_context)
    assert_needed(POLLER, params, poller_calls)
    poller_made = {action for action, _ in poller_calls.calls}
    assert {"ecs:DescribeTasks", "servicediscovery:DeregisterInstance"} <= poller_made  # it found and acted
    assert ("ecs:DescribeClusters" in poller_made) is ("ClusterTag" in params)

    wiring.reset()
    reactor_calls = Recorder().attach()
    group = "service:orders"
    task_state_change.lambda_handler(task_event(tasks[1], prod, group=group), lambda_context)
    if "ReadinessEvents" in params:
        started = task_event(tasks[2], prod, group=group, desired_status="RUNNING", template="task-running.json")
        task_state_change.lambda_handler(started, lambda_context)
    assert_needed(REACTOR, params, reactor_calls)
    reactor_made = {action for action, _ in reactor_calls.calls}
    assert "servicediscovery:DeregisterInstance" in reactor_made  # the stopping task is out
    assert ("dynamodb:Query" in reactor_made) is ("ReadinessEvents" in params)


# --------------------------------------------------------------------------------------------
# How many clusters ClusterArns can name (the README's limit)
# --------------------------------------------------------------------------------------------

CLUSTER_ARNS_LIMIT = 20  # clusters, with names of up to 32 characters (README "Configuration")
PARAMETER_VALUE_BYTES = 4096  # CloudFormation: a parameter's value
ENVIRONMENT_BYTES = 4096  # Lambda: all of a function's environment variables together
ROLE_INLINE_POLICY_CHARS = 10_240  # IAM: a role's inline policies together, whitespace not counted


def deployment_sizes(clusters: int, name_length: int = 32) -> dict[str, int]:
    """Sizes AWS limits, for the largest policies (every feature on) and a realistic table ARN."""
    names = [f"{'c' * (name_length - 3)}{i:03d}" for i in range(clusters)]
    arns = ",".join(f"arn:aws:ecs:{REGION}:{ACCOUNT}:cluster/{name}" for name in names)
    deployed = stack({**DEPLOYMENTS["everything-on"], "ClusterArns": arns})
    long_arns = {f"<{r}.Arn>": "x" * 100 for r in ("LedgerTable", "LedgerTableKey", "DeadLetterQueue")}
    sizes = {"parameter": len(arns)}
    for function in (REACTOR, POLLER):
        env = as_deployed(deployed.properties(function)["Environment"]["Variables"])
        sizes[f"{function} environment"] = sum(len(k) + len(v) for k, v in env.items())
        text = json.dumps(role_of(deployed, function).get("Policies", []), separators=(",", ":"))
        for placeholder, value in long_arns.items():
            text = text.replace(placeholder, value)
        sizes[f"{function} policies"] = len(text)
    return sizes


def test_cluster_arns_fits_aws_limits_up_to_the_documented_number() -> None:
    sizes = deployment_sizes(CLUSTER_ARNS_LIMIT)
    limits = {
        "parameter": PARAMETER_VALUE_BYTES,
        **{f"{f} environment": ENVIRONMENT_BYTES for f in (REACTOR, POLLER)},
        **{f"{f} policies": ROLE_INLINE_POLICY_CHARS for f in (REACTOR, POLLER)},
    }
    over = {name: (size, limits[name]) for name, size in sizes.items() if size > limits[name]}
    assert not over, over
    # The role's policy is what binds first: each cluster-scoped statement lists every cluster.
    assert deployment_sizes(2 * CLUSTER_ARNS_LIMIT)[f"{POLLER} policies"] > ROLE_INLINE_POLICY_CHARS
    readme = (PACKAGE.parent.parent / "README.md").read_text(encoding="utf-8")
    assert f"up to {CLUSTER_ARNS_LIMIT} clusters" in readme
