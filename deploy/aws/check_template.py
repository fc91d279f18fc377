"""Checks deploy/aws/serverless.yaml for what cfn-lint cannot know.

Usage: python deploy/aws/check_template.py [--bin STACKPULSE_BIN] [--translated OUT.json]
                                            [TEMPLATE]

cfn-lint (run before this by scripts/test-specs.sh) validates the template against
the CloudFormation and SAM schemas. It accepts `ProtocolType: WEBSOCKETS`, a
misspelt IAM action, a route without an invoke permission or a TTL attribute the
code never writes. This script:

1. loads the template with a YAML loader that understands the short tags
   (`!Ref`, `!Sub`, `!GetAtt`, `!If`, ...) and expands the SAM transform with
   aws-sam-translator (the library CloudFormation's own transform is built from),
   so the checks see the resources SAM generates (the role, the EventBridge rules,
   the HTTP API, their invoke permissions) as CloudFormation will;
2. checks the contract of serverless mode (DESIGN, "Serverless mode"): a WEBSOCKET
   API routed on `$request.body.action` with `$connect`/`$disconnect`/`$default`
   proxied to the function and one invoke permission per route; the function on
   provided.al2023 as `bootstrap`, arm64 by default; the tables' keys, billing and
   TTL attribute; the EventBridge rule, the one-minute schedule and
   `POST /v1/events`; the function's environment (every STACKPULSE_* name is one
   the binary reads);
3. checks IAM: every action is spelt as AWS spells it (a vetted list), every
   resource is this stack's (no `*`), and every AWS SDK call the Rust code makes
   (DynamoDB and API Gateway Management calls anywhere in crates/, the stack
   tracker's CloudFormation calls in crates/stackpulse-cfn/src/aws.rs) is allowed;
   the attribute names the tables declare appear in the code that talks to DynamoDB.

Exits 1 with one line per failure. deploy/aws/test_check_template.py breaks the
template in each of these ways and expects a failure for each.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable

import yaml

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "deploy" / "aws" / "serverless.yaml"

# The variables only serverless mode reads (DESIGN, "Serverless mode"); every other
# STACKPULSE_* variable must be one `stackpulse serve` reads.
LAMBDA_ENV = ("STACKPULSE_CONNECTIONS_TABLE", "STACKPULSE_TOPICS_TABLE", "STACKPULSE_WS_ENDPOINT")
ROUTES = ("$connect", "$disconnect", "$default")
CFN_DETAIL_TYPES = {"CloudFormation Stack Status Change", "CloudFormation Resource Status Change"}

# IAM actions this template may grant, spelt as in the Service Authorization
# Reference (DynamoDB, API Gateway execute-api, CloudFormation). A typo is not an
# error to IAM, just a permission that never matches.
KNOWN_ACTIONS = {
    "dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem",
    "dynamodb:Query", "dynamodb:Scan", "dynamodb:BatchGetItem", "dynamodb:BatchWriteItem",
    "dynamodb:ConditionCheckItem", "dynamodb:DescribeTable", "dynamodb:PartiQLSelect",
    "execute-api:ManageConnections",
    "cloudformation:DescribeStacks", "cloudformation:DescribeStackEvents",
    "cloudformation:ListStackResources", "cloudformation:GetTemplate",
    "cloudformation:GetTemplateSummary", "cloudformation:DescribeStackResources",
    "cloudformation:ListChangeSets",
    "lambda:InvokeFunction", "sts:AssumeRole",
}

# Rust SDK operation (the fluent builder's method) -> the IAM actions it needs.
# A transaction needs the actions of the items in it; the role's item actions cover
# any mix. PartiQL (`execute_statement`) needs PartiQL* actions, which are not
# granted, so a call to it is reported.
DYNAMODB_OPS: dict[str, tuple[str, ...]] = {
    "get_item": ("dynamodb:GetItem",), "put_item": ("dynamodb:PutItem",),
    "update_item": ("dynamodb:UpdateItem",), "delete_item": ("dynamodb:DeleteItem",),
    "query": ("dynamodb:Query",), "scan": ("dynamodb:Scan",),
    "batch_get_item": ("dynamodb:BatchGetItem",), "batch_write_item": ("dynamodb:BatchWriteItem",),
    "transact_get_items": ("dynamodb:GetItem",),
    "transact_write_items": ("dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem",
                             "dynamodb:ConditionCheckItem"),
    "execute_statement": ("dynamodb:PartiQLSelect",),
}
# Table administration, done only by `lambda-local` against moto (the stack creates
# the real tables), so the function is not granted it. If `stackpulse lambda` ever
# makes one of these calls in AWS, grant it and move it to DYNAMODB_OPS.
DYNAMODB_LOCAL_ONLY = {"create_table", "describe_table", "update_time_to_live", "describe_time_to_live",
                       "list_tables", "delete_table"}
# PostToConnection, DeleteConnection, GetConnection are POST, DELETE, GET on @connections.
MANAGEMENT_OPS = {"post_to_connection": "POST", "delete_connection": "DELETE", "get_connection": "GET"}
CLOUDFORMATION_OPS = {
    "describe_stacks": "cloudformation:DescribeStacks",
    "describe_stack_events": "cloudformation:DescribeStackEvents",
    "list_stack_resources": "cloudformation:ListStackResources",
    "get_template": "cloudformation:GetTemplate",
    "get_template_summary": "cloudformation:GetTemplateSummary",
    "describe_stack_resources": "cloudformation:DescribeStackResources",
    "list_change_sets": "cloudformation:ListChangeSets",
}
# The tracker's crate: aws.rs and changeset.rs make its CloudFormation calls.
TRACKER_SOURCE = Path("crates/stackpulse-cfn/src")


# --- Loading ------------------------------------------------------------------------


class CfnLoader(yaml.SafeLoader):
    """A YAML loader that turns CloudFormation's short tags into their long form."""


def _short_tag(loader: CfnLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    elif isinstance(node, yaml.MappingNode):
        value = loader.construct_mapping(node, deep=True)
    else:
        raise yaml.constructor.ConstructorError(None, None, f"unexpected node for !{suffix}", node.start_mark)
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "Condition":
        return {"Condition": value}
    if suffix == "GetAtt" and isinstance(value, str):
        resource, _, attribute = value.partition(".")
        return {"Fn::GetAtt": [resource, attribute]}
    return {f"Fn::{suffix}": value}


CfnLoader.add_multi_constructor("!", _short_tag)


def load(text: str) -> dict[str, Any]:
    document = yaml.load(text, Loader=CfnLoader)  # noqa: S506 (a SafeLoader subclass)
    if not isinstance(document, dict):
        raise ValueError("the template is not a YAML mapping")
    return document


def translate(template: dict[str, Any]) -> dict[str, Any]:
    """The SAM transform's output, as CloudFormation would deploy it.

    The local CodeUri (a zip that `sam deploy` uploads) is swapped for an S3 URI
    first, as `sam package` does.
    """
    # The translator asks boto3 for a region to build partition-specific ARNs; any
    # commercial region gives the same output (it does not call AWS).
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    logging.getLogger("samtranslator").setLevel(logging.ERROR)  # "unpublished metrics" noise
    from samtranslator.translator.transform import transform

    template = json.loads(json.dumps(template))
    for resource in template.get("Resources", {}).values():
        if resource.get("Type") == "AWS::Serverless::Function":
            resource.setdefault("Properties", {})["CodeUri"] = "s3://stackpulse-check/bootstrap.zip"

    class NoManagedPolicies:
        def load(self) -> dict[str, str]:
            return {}

    return dict(transform(template, {}, NoManagedPolicies()))


# --- Helpers ------------------------------------------------------------------------


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def sub_text(value: Any) -> str | None:
    """The text of a string or of an `Fn::Sub` (either form)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and "Fn::Sub" in value:
        sub = value["Fn::Sub"]
        return sub if isinstance(sub, str) else sub[0]
    return None


def refers_to(value: Any, name: str) -> bool:
    """Whether `value` is `Ref name` or `GetAtt name.X`."""
    if not isinstance(value, dict):
        return False
    if value.get("Ref") == name:
        return True
    getatt = value.get("Fn::GetAtt")
    return isinstance(getatt, list) and bool(getatt) and getatt[0] == name


def resources_of(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {
        name: resource.get("Properties", {})
        for name, resource in template.get("Resources", {}).items()
        if resource.get("Type") == kind
    }


def sdk_calls(files: Iterable[Path], table: dict[str, Any] | set[str]) -> dict[str, set[str]]:
    """Operation name -> the files calling it as `.op(` (fluent builder calls)."""
    found: dict[str, set[str]] = {}
    for path in files:
        text = path.read_text(errors="replace")
        for op in re.findall(r"\.([a-z_]+)\(\)", text):
            if op in table:
                found.setdefault(op, set()).add(str(path))
    return found


# --- Checks -------------------------------------------------------------------------


class Checker:
    def __init__(self, source: dict[str, Any], template: dict[str, Any], env_names: set[str] | None,
                 root: Path) -> None:
        self.source = source
        self.t = template
        self.env_names = env_names
        self.root = root
        self.crates = root / "crates"
        self.failures: list[str] = []

    def check(self, ok: bool, message: str) -> bool:
        if not ok:
            self.failures.append(message)
        return ok

    def run(self) -> list[str]:
        function = self.function()
        if function is None:
            return self.failures
        api = self.websocket(function)
        self.tables(function)
        self.environment(function, api)
        self.events(function)
        self.publish_api(function)
        self.iam(function, api)
        self.parameters()
        self.outputs()
        return self.failures

    def function(self) -> str | None:
        functions = resources_of(self.t, "AWS::Lambda::Function")
        if not self.check(len(functions) == 1, f"expected one Lambda function, found {sorted(functions)}"):
            return None
        name, props = next(iter(functions.items()))
        self.check(props.get("Runtime") == "provided.al2023",
                   f"{name}: Runtime is {props.get('Runtime')!r}, not provided.al2023")
        self.check(props.get("Handler") == "bootstrap", f"{name}: Handler is {props.get('Handler')!r}, not bootstrap")
        arch = as_list(props.get("Architectures"))
        param = arch[0].get("Ref") if len(arch) == 1 and isinstance(arch[0], dict) else None
        spec = self.t.get("Parameters", {}).get(param or "", {})
        self.check(param is not None and spec.get("Default") == "arm64"
                   and set(spec.get("AllowedValues", [])) == {"arm64", "x86_64"},
                   f"{name}: Architectures must be a parameter defaulting to arm64 (allowed: arm64, x86_64)")
        return name

    def websocket(self, function: str) -> str | None:
        apis = {n: p for n, p in resources_of(self.t, "AWS::ApiGatewayV2::Api").items()
                if p.get("ProtocolType") != "HTTP" and "Body" not in p}
        if not self.check(len(apis) == 1, f"expected one WebSocket API, found {sorted(apis)}"):
            return None
        api, props = next(iter(apis.items()))
        self.check(props.get("ProtocolType") == "WEBSOCKET",
                   f"{api}: ProtocolType is {props.get('ProtocolType')!r}, not WEBSOCKET")
        self.check(props.get("RouteSelectionExpression") == "$request.body.action",
                   f"{api}: RouteSelectionExpression is not $request.body.action")

        integrations = {n: p for n, p in resources_of(self.t, "AWS::ApiGatewayV2::Integration").items()
                        if refers_to(p.get("ApiId"), api)}
        routes = {p.get("RouteKey"): (n, p) for n, p in resources_of(self.t, "AWS::ApiGatewayV2::Route").items()
                  if refers_to(p.get("ApiId"), api)}
        self.check(set(routes) == set(ROUTES), f"{api}: route keys are {sorted(map(str, routes))}, not {list(ROUTES)}")
        for key, (name, route) in routes.items():
            target = sub_text(route.get("Target")) or ""
            m = re.fullmatch(r"integrations/\$\{(\w+)\}", target)
            integration = integrations.get(m.group(1)) if m else None
            if not self.check(integration is not None, f"{name}: Target is not an integration of {api}"):
                continue
            assert integration is not None
            self.check(integration.get("IntegrationType") == "AWS_PROXY",
                       f"{name}: its integration is {integration.get('IntegrationType')!r}, not AWS_PROXY")
            uri = sub_text(integration.get("IntegrationUri")) or ""
            self.check(f"${{{function}.Arn}}" in uri and uri.endswith("/invocations"),
                       f"{name}: its integration does not invoke {function}")

        stages = {n: p for n, p in resources_of(self.t, "AWS::ApiGatewayV2::Stage").items()
                  if refers_to(p.get("ApiId"), api)}
        stage_ref = None
        if self.check(len(stages) == 1, f"{api}: expected one stage, found {sorted(stages)}"):
            stage = next(iter(stages.values()))
            stage_ref = stage.get("StageName", {}).get("Ref") if isinstance(stage.get("StageName"), dict) else None
            self.check(stage_ref is not None, f"{api}: the stage name is not a parameter")
            deployment = stage.get("DeploymentId", {}).get("Ref") if isinstance(stage.get("DeploymentId"), dict) else None
            resource = self.t["Resources"].get(deployment or "", {})
            depends = set(as_list(resource.get("DependsOn", [])))
            self.check(resource.get("Type") == "AWS::ApiGatewayV2::Deployment"
                       and {n for n, _ in routes.values()} <= depends,
                       f"{api}: the stage's deployment does not depend on every route")

        # One invoke permission per route, scoped to that route of this API's stage.
        permissions = resources_of(self.t, "AWS::Lambda::Permission")
        for key in ROUTES:
            suffix = f"${{{api}}}/${{{stage_ref}}}/{key}"
            matching = [n for n, p in permissions.items()
                        if p.get("Action") == "lambda:InvokeFunction"
                        and p.get("Principal") == "apigateway.amazonaws.com"
                        and refers_to(p.get("FunctionName"), function)
                        and (sub_text(p.get("SourceArn")) or "").endswith(suffix)
                        and (sub_text(p.get("SourceArn")) or "").startswith(
                            "arn:${AWS::Partition}:execute-api:${AWS::Region}:${AWS::AccountId}:")]
            self.check(len(matching) == 1,
                       f"route {key}: expected one lambda:InvokeFunction permission for apigateway.amazonaws.com "
                       f"with SourceArn ending {suffix}, found {matching}")
        return api

    def tables(self, function: str) -> None:
        env = self.t["Resources"][function]["Properties"].get("Environment", {}).get("Variables", {})
        expected = {
            "STACKPULSE_CONNECTIONS_TABLE": [("connectionId", "HASH", "S")],
            "STACKPULSE_TOPICS_TABLE": [("pk", "HASH", "S"), ("sk", "RANGE", "S")],
        }
        code_text = self.dynamodb_code_text()
        for variable, keys in expected.items():
            table = env.get(variable, {}).get("Ref") if isinstance(env.get(variable), dict) else None
            props = resources_of(self.t, "AWS::DynamoDB::Table").get(table or "")
            if not self.check(props is not None, f"{variable} does not name a DynamoDB table of this stack"):
                continue
            assert props is not None
            types = {a["AttributeName"]: a["AttributeType"] for a in props.get("AttributeDefinitions", [])}
            schema = [(k["AttributeName"], k["KeyType"], types.get(k["AttributeName"])) for k in props.get("KeySchema", [])]
            self.check(schema == keys, f"{table}: key schema is {schema}, not {keys}")
            self.check(props.get("BillingMode") == "PAY_PER_REQUEST", f"{table}: BillingMode is not PAY_PER_REQUEST")
            ttl = props.get("TimeToLiveSpecification", {})
            self.check(ttl.get("AttributeName") == "ttl" and ttl.get("Enabled") is True,
                       f"{table}: TTL is {ttl}, not enabled on attribute 'ttl'")
            if code_text is not None:
                for name in [k for k, _, _ in keys] + [ttl.get("AttributeName")]:
                    self.check(f'"{name}"' in code_text,
                               f"{table}: attribute {name!r} never appears as a string in the DynamoDB code")

    def environment(self, function: str, api: str | None) -> None:
        env = self.t["Resources"][function]["Properties"].get("Environment", {}).get("Variables", {})
        for name in LAMBDA_ENV:
            self.check(name in env, f"{function}: {name} is not set")
        # Raw keys would sit readable in the function's configuration; hashes cannot publish.
        self.check("STACKPULSE_PUBLISHER_KEYS" not in env,
                   f"{function}: STACKPULSE_PUBLISHER_KEYS puts raw keys in the configuration; "
                   "use STACKPULSE_PUBLISHER_KEY_HASHES")
        endpoint = sub_text(env.get("STACKPULSE_WS_ENDPOINT")) or ""
        self.check(api is not None and re.fullmatch(
            rf"https://\$\{{{api}\}}\.execute-api\.\$\{{AWS::Region\}}\.(\$\{{AWS::URLSuffix\}}|amazonaws\.com)/\$\{{\w+\}}",
            endpoint) is not None,
            f"{function}: STACKPULSE_WS_ENDPOINT is {endpoint!r}, not https://{{api}}.execute-api.{{region}}.amazonaws.com/{{stage}}")
        if self.env_names is not None:
            for name in env:
                self.check(name in self.env_names or name in LAMBDA_ENV,
                           f"{function}: {name} is not a variable stackpulse reads")

    def events(self, function: str) -> None:
        rules = resources_of(self.t, "AWS::Events::Rule")
        permissions = resources_of(self.t, "AWS::Lambda::Permission")

        def targets_function(props: dict[str, Any]) -> bool:
            return any(refers_to(t.get("Arn"), function) for t in props.get("Targets", []))

        def invokable(rule: str) -> bool:
            return any(p.get("Principal") == "events.amazonaws.com" and refers_to(p.get("SourceArn"), rule)
                       and refers_to(p.get("FunctionName"), function) for p in permissions.values())

        cfn = [n for n, p in rules.items() if targets_function(p)
               and p.get("EventPattern", {}).get("source") == ["aws.cloudformation"]
               and set(p.get("EventPattern", {}).get("detail-type", [])) == CFN_DETAIL_TYPES]
        self.check(len(cfn) == 1 and invokable(cfn[0]),
                   "no EventBridge rule sends source aws.cloudformation with both status-change detail-types "
                   "to the function (with its invoke permission)")
        schedule = [n for n, p in rules.items() if targets_function(p)
                    and p.get("ScheduleExpression") == "rate(1 minute)" and p.get("State", "ENABLED") == "ENABLED"]
        self.check(len(schedule) == 1 and invokable(schedule[0]),
                   "no enabled rate(1 minute) schedule invokes the function (the safety-net poll)")

    def publish_api(self, function: str) -> None:
        found = False
        for name, props in resources_of(self.t, "AWS::ApiGatewayV2::Api").items():
            post = props.get("Body", {}).get("paths", {}).get("/v1/events", {}).get("post", {})
            integration = post.get("x-amazon-apigateway-integration", {})
            if f"${{{function}.Arn}}" in (sub_text(integration.get("uri")) or ""):
                found = True
                self.check(integration.get("type") == "aws_proxy" and integration.get("payloadFormatVersion") == "2.0",
                           f"{name}: POST /v1/events is not a payload 2.0 Lambda proxy")
                permitted = any(
                    p.get("Principal") == "apigateway.amazonaws.com" and refers_to(p.get("FunctionName"), function)
                    and (sub_text(p.get("SourceArn")) or "").endswith("/POST/v1/events")
                    for p in resources_of(self.t, "AWS::Lambda::Permission").values())
                self.check(permitted, f"{name}: no invoke permission for POST /v1/events")
        self.check(found, "no HTTP API routes POST /v1/events to the function")

    def statements(self, function: str) -> list[dict[str, Any]]:
        role = self.t["Resources"][function]["Properties"].get("Role", {})
        role_name = role.get("Fn::GetAtt", [None])[0] if isinstance(role, dict) else None
        role_props = self.t["Resources"].get(role_name or "", {}).get("Properties", {})
        out = []
        for policy in role_props.get("Policies", []):
            out.extend(as_list(policy.get("PolicyDocument", {}).get("Statement", [])))
        for name, policy in resources_of(self.t, "AWS::IAM::Policy").items():
            out.extend(as_list(policy.get("PolicyDocument", {}).get("Statement", [])))
        assume = role_props.get("AssumeRolePolicyDocument", {}).get("Statement", [])
        self.check(all(s.get("Principal") == {"Service": ["lambda.amazonaws.com"]} for s in as_list(assume)),
                   f"{role_name}: may be assumed by someone other than lambda.amazonaws.com")
        managed = set(map(str, role_props.get("ManagedPolicyArns", [])))
        self.check(all(re.fullmatch(r"arn:aws(-[a-z-]+)?:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole", m)
                       for m in managed),
                   f"{role_name}: managed policies beyond AWSLambdaBasicExecutionRole: {sorted(managed)}")
        return out

    def iam(self, function: str, api: str | None) -> None:
        granted: dict[str, list[str]] = {}
        tables = set(resources_of(self.t, "AWS::DynamoDB::Table"))
        for statement in self.statements(function):
            self.check(statement.get("Effect") == "Allow" and "NotAction" not in statement
                       and "NotResource" not in statement,
                       f"statement {statement.get('Sid')}: only plain Allow statements are expected")
            resources = [sub_text(r) if sub_text(r) is not None else r for r in as_list(statement.get("Resource"))]
            for action in as_list(statement.get("Action")):
                self.check(action in KNOWN_ACTIONS, f"IAM action {action!r} is not a known action spelling")
                for resource in resources:
                    granted.setdefault(action, []).append(resource if isinstance(resource, str) else json.dumps(resource))
                    self.check(resource != "*" and not (isinstance(resource, str) and resource.endswith(":*")),
                               f"IAM action {action} is granted on every resource ({resource!r})")
                    service = action.split(":")[0]
                    if service == "dynamodb":
                        self.check(isinstance(resource, dict) and any(refers_to(resource, t) for t in tables),
                                   f"{action} is granted on {resource!r}, not only on this stack's tables")
                    elif service == "execute-api":
                        self.check(isinstance(resource, str) and api is not None and re.fullmatch(
                            rf"arn:\$\{{AWS::Partition\}}:execute-api:\$\{{AWS::Region\}}:\$\{{AWS::AccountId\}}:"
                            rf"\$\{{{api}\}}/\$\{{\w+\}}/(POST|DELETE|GET)/@connections/\*", resource) is not None,
                            f"{action} is granted on {resource!r}, not on this API's @connections")
                    elif service == "cloudformation":
                        self.check(isinstance(resource, str) and resource.startswith(
                            "arn:${AWS::Partition}:cloudformation:${AWS::Region}:${AWS::AccountId}:stack/"),
                            f"{action} is granted on {resource!r}, not on this account's stacks")
        self.code_calls(granted)

    def code_files(self, marker: str) -> list[Path]:
        if not self.crates.is_dir():
            return []
        return [p for p in sorted(self.crates.rglob("*.rs")) if marker in p.read_text(errors="replace")]

    def dynamodb_code_text(self) -> str | None:
        files = self.code_files("aws_sdk_dynamodb")
        return "\n".join(p.read_text(errors="replace") for p in files) if files else None

    def code_calls(self, granted: dict[str, list[str]]) -> None:
        """Every AWS call the Rust code makes is allowed by the role."""
        dynamo_files = self.code_files("aws_sdk_dynamodb")
        for op, files in sorted(sdk_calls(dynamo_files, set(DYNAMODB_OPS) | DYNAMODB_LOCAL_ONLY).items()):
            if op in DYNAMODB_LOCAL_ONLY:
                continue
            missing = [a for a in DYNAMODB_OPS[op] if a not in granted]
            self.check(not missing, f"the code calls DynamoDB {op} ({', '.join(sorted(files))}) "
                                    f"but the role does not allow {', '.join(missing)}")
        management = self.code_files("aws_sdk_apigatewaymanagement")
        allowed = granted.get("execute-api:ManageConnections", [])
        for op, files in sorted(sdk_calls(management, MANAGEMENT_OPS).items()):
            method = MANAGEMENT_OPS[op]
            self.check(any(f"/{method}/@connections/" in r for r in allowed),
                       f"the code calls {op} ({', '.join(sorted(files))}) but execute-api:ManageConnections "
                       f"is not granted on {method}/@connections/*")
        tracker = self.root / TRACKER_SOURCE
        tracker_files = sorted(tracker.rglob("*.rs")) if tracker.is_dir() else []
        for op, files in sorted(sdk_calls(tracker_files, CLOUDFORMATION_OPS).items()):
            self.check(CLOUDFORMATION_OPS[op] in granted,
                       f"the stack tracker calls {op} ({', '.join(sorted(str(f) for f in files))}) "
                       f"but the role does not allow {CLOUDFORMATION_OPS[op]}")

    def parameters(self) -> None:
        params = self.source.get("Parameters", {})
        # Secure by default: no stack without an issuer unless anonymity is asked for.
        self.check(params.get("AllowAnonymous", {}).get("Default") == "false",
                   "parameter AllowAnonymous must exist and default to \"false\"")
        asserts = json.dumps([a.get("Assert") for rule in self.source.get("Rules", {}).values()
                              for a in rule.get("Assertions", [])])
        self.check(all(f'"Ref": "{p}"' in asserts for p in ("CognitoUserPoolId", "JwtIssuer", "AllowAnonymous")),
                   "no Rules assertion refuses a stack without CognitoUserPoolId, JwtIssuer or AllowAnonymous")
        for name, spec in params.items():
            if re.search(r"key|secret|password|token", name, re.I):
                self.check(spec.get("NoEcho") is True, f"parameter {name} looks secret but is not NoEcho")

    def outputs(self) -> None:
        outputs = self.t.get("Outputs", {})
        ws = sub_text(outputs.get("WebSocketUrl", {}).get("Value")) or ""
        self.check(ws.startswith("wss://"), "output WebSocketUrl is not a wss:// URL")
        publish = sub_text(outputs.get("PublishUrl", {}).get("Value")) or ""
        self.check(publish.startswith("https://") and publish.endswith("/v1/events"),
                   "output PublishUrl is not the https URL of /v1/events")
        for name in ("ConnectionsTableName", "TopicsTableName"):
            self.check(name in outputs, f"output {name} is missing")


def serve_env_names(binary: str) -> set[str]:
    # `lambda` takes every `serve` variable plus its own (tables, endpoint, anonymity).
    help_text = subprocess.run([binary, "lambda", "--help"], capture_output=True, text=True, check=True).stdout
    return set(re.findall(r"env: (STACKPULSE_[A-Z_]+)", help_text))


def check_text(text: str, env_names: set[str] | None = None, root: Path = ROOT,
               translated_out: Path | None = None) -> list[str]:
    """All failures of the template `text` (empty when it passes)."""
    try:
        source = load(text)
        template = translate(source)
    except Exception as err:  # the loader's or SAM's own message says what is wrong
        return [f"cannot load or transform the template: {err}"]
    if translated_out is not None:
        translated_out.parent.mkdir(parents=True, exist_ok=True)
        translated_out.write_text(json.dumps(template, indent=1))
    return Checker(source, template, env_names, root).run()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("template", nargs="?", default=str(TEMPLATE))
    parser.add_argument("--bin", help="stackpulse binary: check env names against `lambda --help`")
    parser.add_argument("--translated", help="write the SAM-expanded template here (for cfn-lint)")
    args = parser.parse_args()
    env_names = serve_env_names(args.bin) if args.bin else None
    failures = check_text(Path(args.template).read_text(), env_names,
                          translated_out=Path(args.translated) if args.translated else None)
    for failure in failures:
        print(f"{args.template}: {failure}", file=sys.stderr)
    if not failures:
        print(f"{args.template}: serverless contract, IAM and code cross-checks pass")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
