//! CloudFormation deployment tracking for stackpulse: polls one stack's current
//! operation and turns it into typed messages (`resource_update`,
//! `deployment_complete`, `error` with a stable code, `recovered`), and creates stacks.
//!
//! This crate knows nothing of sockets, HTTP servers or the hub: the server, the CLI's
//! `watch --direct` and a future serverless mode all drive a [`Tracker`] and forward
//! what it sends.
//!
//! ```no_run
//! # async fn demo(client: aws_sdk_cloudformation::Client) {
//! use stackpulse_cfn::{Outcome, Tracker, TrackerConfig, TrackerMessage};
//! let (tx, mut rx) = tokio::sync::mpsc::channel(256);
//! let tracker = Tracker::new(client, TrackerConfig::new("my-stack"));
//! let run = tokio::spawn(tracker.run(tx));
//! while let Some(msg) = rx.recv().await {
//!     if let TrackerMessage::ResourceUpdate(u) = msg {
//!         println!("{} {} {}%", u.resource.logical_id, u.resource.status, u.stack.progress);
//!     }
//! }
//! let outcome: Option<Outcome> = run.await.ok();
//! # }
//! ```
//!
//! # Layout
//! - [`wire`]: the JSON message types of the stack tracker endpoint (serde, camelCase).
//! - [`tracker`]: [`Tracker`], its config, messages, state and outcome; the poll loop.
//! - [`events`]: our copy of a stack event; paging and dedup by `EventId`.
//! - [`scope`]: which events belong to the current operation.
//! - [`progress`]: latest status per resource, counts and percentage.
//! - [`status`]: terminal / successful stack statuses, resource status classes.
//! - [`estimate`]: resource and operation timing, medians of earlier operations, the
//!   ETA.
//! - [`rootcause`]: the first real failure, deepest nested stack first.
//! - [`template`]: counting a template's resources (the progress total).
//! - [`nested`]: finding nested stacks in a parent's events.
//! - [`backoff`]: exponential backoff with jitter, slower polling after throttling.
//! - [`aws`]: every CloudFormation call, counted, with errors sorted by what to do.
//! - [`create`]: `CreateStack` with a generated name and typed validation errors.
//! - [`scripted`]: a scripted CloudFormation endpoint (the tests' fake, the demo's
//!   stacks).

#![forbid(unsafe_code)]

pub mod aws;
pub mod backoff;
pub mod changeset;
pub mod create;
pub mod estimate;
pub mod events;
pub mod nested;
pub mod progress;
pub mod rootcause;
pub mod scope;
pub mod scripted;
pub mod status;
pub mod template;
pub mod tracker;
pub mod wake;
pub mod wire;

pub use aws::{AwsError, CallCounter};
pub use backoff::BackoffConfig;
pub use create::{
    create_stack, generate_stack_name, CreateStackError, CreateStackRequest, CreatedStack,
};
pub use tracker::{
    NestedStackState, Outcome, Tracker, TrackerConfig, TrackerMessage, TrackerState,
};
pub use wake::Wake;
pub use wire::{
    DeploymentComplete, ErrorCode, ResourceSummary, ResourceUpdate, RootCause, Seconds,
    StackOutput, StackSummary, TrackerError, TrackerProblem, TrackerRecovered,
};
