//! The tracker and `create_stack` against a moto server: the real CloudFormation
//! wire format (moto completes operations synchronously and records only the stack's
//! own events, so the timing-dependent behaviour is covered by `fake_cfn.rs`).
//!
//! moto comes from `STACKPULSE_MOTO_SERVER` or `scripts/ensure-moto.sh`.

mod support;

use std::time::Duration;

use stackpulse_cfn::{
    create_stack, CreateStackError, CreateStackRequest, Outcome, Tracker, TrackerMessage,
};
use support::moto::Moto;
use support::{client, fast_config, run_built, run_tracker};

const LIMIT: Duration = Duration::from_secs(60);

fn template(with_topic: bool) -> String {
    let mut resources = serde_json::json!({
        "Bucket": {"Type": "AWS::S3::Bucket"},
        "Queue": {"Type": "AWS::SQS::Queue"}
    });
    if with_topic {
        resources["Topic"] = serde_json::json!({"Type": "AWS::SNS::Topic"});
    }
    serde_json::json!({
        "Parameters": {"Env": {"Type": "String"}},
        "Resources": resources,
        "Outputs": {
            "BucketName": {"Value": {"Ref": "Bucket"}, "Description": "Where files go"},
            "Env": {"Value": {"Ref": "Env"}}
        }
    })
    .to_string()
}

#[tokio::test]
async fn create_update_delete_with_outputs_on_moto() {
    let moto = Moto::start().await;
    let cfn = client(&moto.endpoint);

    // Create, with a generated name and a parameter.
    let created = create_stack(
        &cfn,
        CreateStackRequest {
            template_body: template(false),
            parameters: [("Env".to_string(), "test".to_string())].into(),
            ..CreateStackRequest::default()
        },
    )
    .await
    .expect("create_stack");
    assert!(
        created.stack_name.starts_with("stackpulse-"),
        "{}",
        created.stack_name
    );
    assert_eq!(created.stack_name.len(), "stackpulse-".len() + 8);
    assert!(
        created
            .stack_id
            .starts_with("arn:aws:cloudformation:us-east-1:"),
        "{}",
        created.stack_id
    );

    let tracker = Tracker::new(cfn.clone(), fast_config(&created.stack_name));
    let calls = tracker.calls();
    let c = run_built(tracker, LIMIT).await;
    let statuses: Vec<&str> = c
        .updates
        .iter()
        .map(|u| u.resource.status.as_str())
        .collect();
    assert_eq!(statuses, ["CREATE_IN_PROGRESS", "CREATE_COMPLETE"]);
    assert!(c.errors.is_empty(), "{:?}", c.errors);
    let done = c.complete.expect("deployment_complete");
    assert!(done.success);
    assert_eq!(done.root_cause, None);
    assert_eq!(done.stack.name, created.stack_name);
    assert_eq!(done.stack.status, "CREATE_COMPLETE");
    assert_eq!(
        (
            done.stack.total_resources,
            done.stack.completed_resources,
            done.stack.progress
        ),
        (2, 2, 100)
    );
    let bucket = done
        .outputs
        .iter()
        .find(|o| o.key == "BucketName")
        .expect("BucketName output");
    assert!(!bucket.value.is_empty());
    assert_eq!(bucket.description, "Where files go");
    assert_eq!(
        done.outputs
            .iter()
            .find(|o| o.key == "Env")
            .map(|o| o.value.as_str()),
        Some("test")
    );
    eprintln!("moto create: {} AWS calls", calls.total());

    // Update: only the update's events, not the create's.
    cfn.update_stack()
        .stack_name(&created.stack_name)
        .template_body(template(true))
        .parameters(
            aws_sdk_cloudformation::types::Parameter::builder()
                .parameter_key("Env")
                .parameter_value("prod")
                .build(),
        )
        .send()
        .await
        .expect("update_stack");
    let c = run_tracker(cfn.clone(), fast_config(&created.stack_name), LIMIT).await;
    let statuses: Vec<&str> = c
        .updates
        .iter()
        .map(|u| u.resource.status.as_str())
        .collect();
    assert_eq!(statuses, ["UPDATE_IN_PROGRESS", "UPDATE_COMPLETE"]);
    let done = c.complete.expect("deployment_complete");
    assert!(done.success);
    assert_eq!(done.stack.status, "UPDATE_COMPLETE");
    assert_eq!((done.stack.total_resources, done.stack.progress), (3, 100));
    assert_eq!(
        done.outputs
            .iter()
            .find(|o| o.key == "Env")
            .map(|o| o.value.as_str()),
        Some("prod")
    );

    // Delete, then track the deleted stack by ARN (by name it is gone).
    cfn.delete_stack()
        .stack_name(&created.stack_name)
        .send()
        .await
        .expect("delete_stack");
    let c = run_tracker(cfn.clone(), fast_config(&created.stack_id), LIMIT).await;
    let statuses: Vec<&str> = c
        .updates
        .iter()
        .map(|u| u.resource.status.as_str())
        .collect();
    assert!(
        statuses.iter().all(|s| s.starts_with("DELETE_")),
        "{statuses:?}"
    );
    assert_eq!(statuses.last(), Some(&"DELETE_COMPLETE"));
    let done = c.complete.expect("deployment_complete");
    assert!(done.success, "DELETE_COMPLETE is a success");
    assert_eq!(done.stack.status, "DELETE_COMPLETE");
    assert_eq!(done.root_cause, None);

    let mut by_name = fast_config(&created.stack_name);
    by_name.wait_for_stack = Duration::from_millis(100);
    let c = run_tracker(cfn.clone(), by_name, LIMIT).await;
    assert_eq!(
        c.outcome,
        Some(Outcome::StackNotFound {
            stack: created.stack_name.clone()
        })
    );
}

#[tokio::test]
async fn stack_created_after_the_tracker_started_on_moto() {
    let moto = Moto::start().await;
    let cfn = client(&moto.endpoint);
    let name = "stackpulse-late-1";
    let tracker = Tracker::new(cfn.clone(), fast_config(name));
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let run = tokio::spawn(tracker.run(tx));
    // The tracker says it is waiting; then the stack is created.
    match tokio::time::timeout(LIMIT, rx.recv())
        .await
        .expect("a message")
    {
        Some(TrackerMessage::Problem(e)) => {
            assert!(e.retrying);
            assert_eq!(e.code, stackpulse_cfn::ErrorCode::NotFound);
            assert!(e.message.contains("does not exist yet"), "{}", e.message);
        }
        other => panic!("expected the waiting report, got {other:?}"),
    }
    create_stack(
        &cfn,
        CreateStackRequest {
            template_body: template(false),
            stack_name: Some(name.to_string()),
            parameters: [("Env".to_string(), "dev".to_string())].into(),
            ..CreateStackRequest::default()
        },
    )
    .await
    .expect("create_stack");
    let mut done = None;
    while let Some(m) = tokio::time::timeout(LIMIT, rx.recv())
        .await
        .expect("messages")
    {
        if let TrackerMessage::DeploymentComplete(d) = m {
            done = Some(d);
        }
    }
    let done = done.expect("deployment_complete");
    assert!(done.success);
    assert_eq!(done.stack.name, name);
    assert!(matches!(run.await, Ok(Outcome::Completed(_))));
}

#[tokio::test]
async fn create_stack_validation_errors_carry_aws_message_on_moto() {
    let moto = Moto::start().await;
    let cfn = client(&moto.endpoint);
    let err = create_stack(
        &cfn,
        CreateStackRequest {
            template_body: r#"{"Outputs": {}}"#.into(),
            stack_name: Some("bad-template".into()),
            ..CreateStackRequest::default()
        },
    )
    .await
    .expect_err("a template without resources is refused");
    match err {
        CreateStackError::Invalid(m) => assert!(m.contains("Resources"), "{m}"),
        other => panic!("expected Invalid, got {other:?}"),
    }
    let err = create_stack(
        &cfn,
        CreateStackRequest {
            template_body: template(false),
            stack_name: Some("needs-param".into()),
            ..CreateStackRequest::default()
        },
    )
    .await
    .expect_err("a missing parameter is refused");
    assert!(
        matches!(&err, CreateStackError::Invalid(m) if m.contains("Env")),
        "{err:?}"
    );

    let req = CreateStackRequest {
        template_body: template(false),
        stack_name: Some("twice".into()),
        parameters: [("Env".to_string(), "x".to_string())].into(),
        ..CreateStackRequest::default()
    };
    create_stack(&cfn, req.clone()).await.expect("first create");
    let err = create_stack(&cfn, req)
        .await
        .expect_err("the name is taken");
    assert!(
        matches!(&err, CreateStackError::Invalid(m) if m.contains("already exists")),
        "{err:?}"
    );
}
