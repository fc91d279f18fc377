//! Real Cognito tokens from moto (user pool, app clients, users in groups, sign-in
//! with USER_PASSWORD_AUTH) against the real binary, configured the Cognito way:
//! region + pool id (issuer derived) and moto's JWKS URL.

mod common;

use common::*;
use serde_json::{json, Value};
use stackpulse_protocol::ServerMessage;
use stackpulse_testkit::Moto;

struct Cognito {
    moto: Moto,
    http: reqwest::Client,
}

impl Cognito {
    async fn call(&self, action: &str, body: Value) -> Value {
        let resp = self
            .http
            .post(format!("{}/", self.moto.endpoint))
            .header("x-amz-target", format!("AWSCognitoIdentityProviderService.{action}"))
            .header("content-type", "application/x-amz-json-1.1")
            .header(
                "authorization",
                "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/cognito-idp/aws4_request, SignedHeaders=host, Signature=0",
            )
            .body(body.to_string())
            .send()
            .await
            .expect("cognito call");
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        assert!(status.is_success(), "{action}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    async fn pool(&self) -> String {
        let r = self
            .call("CreateUserPool", json!({"PoolName": "stackpulse"}))
            .await;
        r["UserPool"]["Id"].as_str().expect("pool id").to_owned()
    }

    async fn client(&self, pool: &str, name: &str) -> String {
        let r = self
            .call(
                "CreateUserPoolClient",
                json!({"UserPoolId": pool, "ClientName": name, "ExplicitAuthFlows": ["USER_PASSWORD_AUTH"]}),
            )
            .await;
        r["UserPoolClient"]["ClientId"]
            .as_str()
            .expect("client id")
            .to_owned()
    }

    async fn user(&self, pool: &str, name: &str, groups: &[&str]) {
        self.call(
            "AdminCreateUser",
            json!({"UserPoolId": pool, "Username": name, "TemporaryPassword": "Tmp-Passw0rd!",
                   "MessageAction": "SUPPRESS",
                   "UserAttributes": [{"Name": "email", "Value": format!("{name}@example.test")}]}),
        )
        .await;
        self.call(
            "AdminSetUserPassword",
            json!({"UserPoolId": pool, "Username": name, "Password": "Passw0rd!xx", "Permanent": true}),
        )
        .await;
        for g in groups {
            let _ = self
                .http
                .post(format!("{}/", self.moto.endpoint))
                .header(
                    "x-amz-target",
                    "AWSCognitoIdentityProviderService.CreateGroup",
                )
                .header("content-type", "application/x-amz-json-1.1")
                .body(json!({"UserPoolId": pool, "GroupName": g}).to_string())
                .send()
                .await;
            self.call(
                "AdminAddUserToGroup",
                json!({"UserPoolId": pool, "Username": name, "GroupName": g}),
            )
            .await;
        }
    }

    /// Signs in; returns (id token, access token).
    async fn sign_in(&self, client: &str, name: &str) -> (String, String) {
        let r = self
            .call(
                "InitiateAuth",
                json!({"ClientId": client, "AuthFlow": "USER_PASSWORD_AUTH",
                       "AuthParameters": {"USERNAME": name, "PASSWORD": "Passw0rd!xx"}}),
            )
            .await;
        let result = &r["AuthenticationResult"];
        (
            result["IdToken"].as_str().expect("id token").to_owned(),
            result["AccessToken"]
                .as_str()
                .expect("access token")
                .to_owned(),
        )
    }
}

#[tokio::test]
async fn cognito_id_and_access_tokens_from_moto() {
    let cognito = Cognito {
        moto: Moto::start().await,
        http: http_client(),
    };
    let pool = cognito.pool().await;
    let web = cognito.client(&pool, "web").await;
    let other_app = cognito.client(&pool, "other-app").await;
    cognito.user(&pool, "alice", &["ops"]).await;
    cognito.user(&pool, "eve", &[]).await;
    cognito.user(&pool, "ci", &["publishers"]).await;
    let (alice_id, alice_access) = cognito.sign_in(&web, "alice").await;
    let (eve_id, _) = cognito.sign_in(&web, "eve").await;
    let (_, ci_access) = cognito.sign_in(&web, "ci").await;
    let (foreign_id, foreign_access) = cognito.sign_in(&other_app, "alice").await;

    let jwks = format!("{}/{pool}/.well-known/jwks.json", cognito.moto.endpoint);
    let server = Server::start(&[
        "--cognito-region",
        "us-east-1",
        "--cognito-user-pool-id",
        &pool,
        "--cognito-client-id",
        &web,
        "--jwks-url",
        &jwks,
    ])
    .await;

    // A JWT publisher in the publisher group attaches an ACL for group ops.
    let resp = server
        .http
        .post(server.url("/v1/events"))
        .bearer_auth(&ci_access)
        .json(&json!({"type":"deployment.status","deployment_id":"D-ops",
            "data":{"status":"deploying"},"acl":{"groups":["ops"]}}))
        .send()
        .await
        .expect("publish");
    assert_eq!(resp.status().as_u16(), 202);

    // Alice (group ops) may subscribe, with her id token or her access token.
    for token in [&alice_id, &alice_access] {
        let mut c = server.connect_as(token).await;
        c.subscribe("D-ops", None, None).await.expect("send");
        assert_eq!(subscribed(&mut c).await.0, 1);
    }
    // Eve is authenticated but not in ops.
    let mut eve = server.connect_as(&eve_id).await;
    eve.subscribe("D-ops", None, None).await.expect("send");
    assert!(matches!(
        next_control(&mut eve).await,
        ServerMessage::Error { code: 403, .. }
    ));
    // Tokens of another app client of the same pool are refused, id and access.
    for token in [&foreign_id, &foreign_access] {
        let (status, body) = server
            .upgrade_status(&format!("?token={token}"), None)
            .await;
        assert_eq!(
            (status, body.as_str()),
            (401, r#"{"message":"Unauthorized: Invalid token"}"#)
        );
    }
    // A user outside the publisher group cannot publish with their token.
    let resp = server
        .http
        .post(server.url("/v1/events"))
        .bearer_auth(&alice_access)
        .json(&json!({"type":"deployment.status","deployment_id":"D-ops","data":{"status":"x"}}))
        .send()
        .await
        .expect("publish");
    assert_eq!(resp.status().as_u16(), 403);
}

#[tokio::test]
async fn tokens_of_another_pool_are_refused() {
    let cognito = Cognito {
        moto: Moto::start().await,
        http: http_client(),
    };
    let pool = cognito.pool().await;
    let web = cognito.client(&pool, "web").await;
    let other_pool = cognito.pool().await;
    let other_web = cognito.client(&other_pool, "web").await;
    cognito.user(&other_pool, "mallory", &[]).await;
    let (id, access) = cognito.sign_in(&other_web, "mallory").await;
    let jwks = format!("{}/{pool}/.well-known/jwks.json", cognito.moto.endpoint);
    // Even listing the other pool's client: moto signs every pool with one key,
    // so only the issuer check can tell the pools apart.
    let server = Server::start(&[
        "--cognito-region",
        "us-east-1",
        "--cognito-user-pool-id",
        &pool,
        "--cognito-client-id",
        &web,
        "--cognito-client-id",
        &other_web,
        "--jwks-url",
        &jwks,
    ])
    .await;
    for token in [&id, &access] {
        let (status, _) = server
            .upgrade_status(&format!("?token={token}"), None)
            .await;
        assert_eq!(status, 401);
    }
    assert!(
        server
            .metric("stackpulse_auth_failures_total{reason=\"issuer\"}")
            .await
            >= 2.0
    );
}
