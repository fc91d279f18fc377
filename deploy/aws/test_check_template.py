"""Tests of deploy/aws/check_template.py: the real template passes, and each way of
breaking it that cfn-lint lets through is reported.

Run: python -m unittest deploy/aws/test_check_template.py (scripts/test-specs.sh).
Each case edits the template's text (so the short-tag loader and the SAM
transform run on it too) and expects a failure line containing a phrase.
"""

from __future__ import annotations

import sys
import tempfile
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import check_template  # noqa: E402

TEXT = check_template.TEMPLATE.read_text()
SERVE_ENV = {
    "STACKPULSE_LOG_FORMAT", "STACKPULSE_STACK_ALLOW", "STACKPULSE_COGNITO_REGION",
    "STACKPULSE_COGNITO_USER_POOL_ID", "STACKPULSE_COGNITO_CLIENT_IDS", "STACKPULSE_JWT_ISSUER", "STACKPULSE_JWKS_URL",
    "STACKPULSE_PUBLISHER_KEY_HASHES", "STACKPULSE_PUBLISHER_KEYS",
    # `lambda` only (the template's AllowAnonymous=true).
    "STACKPULSE_ALLOW_ANONYMOUS",
}


def edit(old: str, new: str, text: str = TEXT, count: int = 1) -> str:
    """`text` with `old` replaced; fails the test when `old` is not there `count` times."""
    found = text.count(old)
    if found != count:
        raise AssertionError(f"the template has {found} copies of {old!r}, the test expects {count}")
    return text.replace(old, new)


def failures(text: str, root: Path | None = None) -> list[str]:
    return check_template.check_text(text, SERVE_ENV, root or check_template.ROOT)


class TemplateBreakages(unittest.TestCase):
    def assert_reported(self, text: str, phrase: str, root: Path | None = None) -> None:
        found = failures(text, root)
        self.assertTrue(any(phrase in f for f in found), f"expected a failure with {phrase!r}, got {found}")

    def test_the_template_passes(self) -> None:
        self.assertEqual(failures(TEXT), [])

    def test_protocol_must_be_websocket(self) -> None:
        self.assert_reported(edit("ProtocolType: WEBSOCKET", "ProtocolType: WEBSOCKETS"), "not WEBSOCKET")

    def test_route_selection_expression(self) -> None:
        self.assert_reported(edit("RouteSelectionExpression: $request.body.action",
                                  "RouteSelectionExpression: $request.body.type"), "RouteSelectionExpression")

    def test_route_keys(self) -> None:
        self.assert_reported(edit("RouteKey: $disconnect", "RouteKey: $disconnected"), "route keys")

    def test_integration_must_be_a_proxy(self) -> None:
        self.assert_reported(edit("IntegrationType: AWS_PROXY", "IntegrationType: AWS"), "not AWS_PROXY")

    def test_every_route_needs_its_permission(self) -> None:
        # The $disconnect permission scoped to $default instead: $default has two, $disconnect none.
        broken = edit("${StageName}/$disconnect", "${StageName}/$default")
        self.assert_reported(broken, "route $disconnect: expected one")
        self.assert_reported(broken, "route $default: expected one")

    def test_permission_for_the_right_principal(self) -> None:
        self.assert_reported(edit("Principal: apigateway.amazonaws.com", "Principal: events.amazonaws.com", count=3),
                             "route $connect: expected one")

    def test_deployment_depends_on_routes(self) -> None:
        self.assert_reported(edit("DependsOn: [ConnectRoute, DisconnectRoute, DefaultRoute]",
                                  "DependsOn: [ConnectRoute, DefaultRoute]"), "does not depend on every route")

    def test_ttl_attribute_name(self) -> None:
        self.assert_reported(edit("AttributeName: ttl\n        Enabled: true",
                                  "AttributeName: expires\n        Enabled: true", count=2), "not enabled on attribute 'ttl'")

    def test_table_keys(self) -> None:
        self.assert_reported(edit("{AttributeName: sk, KeyType: RANGE}", "{AttributeName: sk, KeyType: HASH}"),
                             "key schema")

    def test_runtime_and_handler(self) -> None:
        self.assert_reported(edit("Runtime: provided.al2023", "Runtime: provided.al2"), "not provided.al2023")
        self.assert_reported(edit("Handler: bootstrap", "Handler: main"), "not bootstrap")

    def test_arm64_by_default(self) -> None:
        self.assert_reported(edit("    Default: arm64\n", "    Default: x86_64\n"), "defaulting to arm64")

    def test_env_vars_are_set(self) -> None:
        self.assert_reported(edit("          STACKPULSE_TOPICS_TABLE: !Ref TopicsTable\n", ""),
                             "STACKPULSE_TOPICS_TABLE is not set")

    def test_env_var_names_are_read_by_the_binary(self) -> None:
        self.assert_reported(edit("STACKPULSE_LOG_FORMAT: json", "STACKPULSE_LOGFORMAT: json"),
                             "STACKPULSE_LOGFORMAT is not a variable stackpulse reads")

    def test_management_endpoint(self) -> None:
        self.assert_reported(edit("STACKPULSE_WS_ENDPOINT: !Sub https://${WebSocketApi}",
                                  "STACKPULSE_WS_ENDPOINT: !Sub wss://${WebSocketApi}"), "STACKPULSE_WS_ENDPOINT is")

    def test_iam_action_spelling(self) -> None:
        self.assert_reported(edit("- dynamodb:GetItem", "- dynamodb:GetItems"), "'dynamodb:GetItems' is not a known")
        self.assert_reported(edit("Action: execute-api:ManageConnections", "Action: execute-api:ManageConnection"),
                             "not a known action")

    def test_no_star_resources(self) -> None:
        self.assert_reported(edit("              Resource: !Sub arn:${AWS::Partition}:cloudformation:"
                                  "${AWS::Region}:${AWS::AccountId}:stack/${StackAllow}/*",
                                  '              Resource: "*"'), "on every resource")

    def test_no_extra_managed_policies(self) -> None:
        self.assert_reported(edit("      Policies:\n", "      Policies:\n        - arn:aws:iam::aws:policy/AdministratorAccess\n"),
                             "managed policies beyond AWSLambdaBasicExecutionRole")

    def test_manage_connections_only_on_this_api(self) -> None:
        self.assert_reported(edit("${WebSocketApi}/${StageName}/POST/@connections/*", "*/*/POST/@connections/*"),
                             "not on this API's @connections")

    def test_dynamodb_only_on_these_tables(self) -> None:
        self.assert_reported(edit("                - !GetAtt TopicsTable.Arn\n",
                                  "                - !Sub arn:${AWS::Partition}:dynamodb:${AWS::Region}:"
                                  "${AWS::AccountId}:table/other\n"), "not only on this stack's tables")

    def test_tracker_calls_are_allowed(self) -> None:
        self.assert_reported(edit("                - cloudformation:GetTemplateSummary\n", ""),
                             "the stack tracker calls get_template_summary")

    def test_cloudformation_rule(self) -> None:
        self.assert_reported(edit("                - CloudFormation Resource Status Change\n", ""),
                             "no EventBridge rule")

    def test_schedule(self) -> None:
        self.assert_reported(edit("rate(1 minute)", "rate(5 minutes)"), "rate(1 minute) schedule")

    def test_publish_route(self) -> None:
        self.assert_reported(edit("Path: /v1/events", "Path: /v1/event"), "POST /v1/events")
        self.assert_reported(edit('PayloadFormatVersion: "2.0"', 'PayloadFormatVersion: "1.0"'), "payload 2.0")

    def test_publisher_keys_are_noecho(self) -> None:
        self.assert_reported(edit("    NoEcho: true\n", ""), "PublisherKeySha256 looks secret")

    def test_no_raw_publisher_keys(self) -> None:
        self.assert_reported(edit("STACKPULSE_PUBLISHER_KEY_HASHES: !If", "STACKPULSE_PUBLISHER_KEYS: !If"),
                             "raw keys")

    def test_anonymous_is_refused_by_default(self) -> None:
        self.assert_reported(edit('    Default: "false"\n    AllowedValues: ["false", "true"]',
                                  '    Default: "true"\n    AllowedValues: ["false", "true"]'), "AllowAnonymous")
        self.assert_reported(edit("          - !Equals [!Ref AllowAnonymous, \"true\"]\n", ""), "no Rules assertion")

    def test_outputs(self) -> None:
        self.assert_reported(edit("Value: !Sub wss://", "Value: !Sub https://"), "WebSocketUrl")

    def test_sam_errors_are_reported(self) -> None:
        self.assert_reported(edit("Type: EventBridgeRule", "Type: EventBridgeRules"), "cannot load or transform")


class ShortTags(unittest.TestCase):
    def test_short_tags_become_long_forms(self) -> None:
        doc = check_template.load(
            "a: !Ref P\nb: !GetAtt T.Arn\nc: !Sub [\"${X}\", {X: !Ref Y}]\n"
            "d: !If [C, !Ref AWS::Region, !Ref AWS::NoValue]\ne: !Condition C\n")
        self.assertEqual(doc, {
            "a": {"Ref": "P"},
            "b": {"Fn::GetAtt": ["T", "Arn"]},
            "c": {"Fn::Sub": ["${X}", {"X": {"Ref": "Y"}}]},
            "d": {"Fn::If": ["C", {"Ref": "AWS::Region"}, {"Ref": "AWS::NoValue"}]},
            "e": {"Condition": "C"},
        })


class CodeCrossChecks(unittest.TestCase):
    """The role must allow every AWS call the Rust code makes (a fake crates/ tree)."""

    def fake_root(self, files: dict[str, str]) -> Path:
        tmp = Path(tempfile.mkdtemp(prefix="stackpulse-check-"))
        self.addCleanup(lambda: __import__("shutil").rmtree(tmp, ignore_errors=True))
        for name, body in files.items():
            path = tmp / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(body)
        return tmp

    def test_calls_within_the_role_pass(self) -> None:
        root = self.fake_root({"crates/x/src/store.rs": (
            'use aws_sdk_dynamodb::Client;\n// "connectionId" "pk" "sk" "ttl"\n'
            "c.update_item().send(); c.query().send(); c.transact_write_items().send();\n"
            "c.create_table().send(); c.describe_table().send();\n"
            "use aws_sdk_apigatewaymanagement::Client as M;\nm.post_to_connection().send(); m.delete_connection();\n")})
        self.assertEqual(failures(TEXT, root), [])

    def test_a_dynamodb_call_the_role_lacks(self) -> None:
        root = self.fake_root({"crates/x/src/store.rs":
                               'use aws_sdk_dynamodb::Client;\n// "connectionId" "pk" "sk" "ttl"\nc.scan().send();\n'})
        found = failures(TEXT, root)
        self.assertTrue(any("calls DynamoDB scan" in f for f in found), found)

    def test_partiql_is_not_granted(self) -> None:
        root = self.fake_root({"crates/x/src/store.rs":
                               'use aws_sdk_dynamodb::Client;\n// "connectionId" "pk" "sk" "ttl"\nc.execute_statement();\n'})
        found = failures(TEXT, root)
        self.assertTrue(any("calls DynamoDB execute_statement" in f for f in found), found)

    def test_a_management_call_the_role_lacks(self) -> None:
        root = self.fake_root({"crates/x/src/push.rs":
                               "use aws_sdk_apigatewaymanagement::Client;\nm.get_connection().send();\n"})
        found = failures(TEXT, root)
        self.assertTrue(any("calls get_connection" in f for f in found), found)

    def test_attribute_names_must_appear_in_the_code(self) -> None:
        root = self.fake_root({"crates/x/src/store.rs":
                               'use aws_sdk_dynamodb::Client;\n// "connectionId" "pk" "sk" "expires_at"\n'})
        found = failures(TEXT, root)
        self.assertTrue(any("attribute 'ttl' never appears" in f for f in found), found)


if __name__ == "__main__":
    unittest.main()
