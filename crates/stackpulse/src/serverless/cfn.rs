//! EventBridge in serverless mode: CloudFormation status changes and the
//! scheduled safety-net poll.

use serde_json::{json, Value};

use super::Serverless;

impl Serverless {
    /// One EventBridge event.
    pub async fn eventbridge(&self, payload: Value) -> Value {
        let detail_type = payload
            .get("detail-type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        json!({"ignored": format!("detail-type {detail_type:?} is not handled")})
    }
}
