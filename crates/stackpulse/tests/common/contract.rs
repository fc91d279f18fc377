//! Contract checks: every `/ws` frame, close code and HTTP response the integration
//! tests see is checked against the machine-readable contract in `docs/`.
//!
//! - `docs/schemas/stackpulse.json`: the one JSON Schema source of the message
//!   shapes (its `$defs`), also referenced by both specs;
//! - `docs/asyncapi.yaml`: which event types the server may emit
//!   (`x-event-types`) and the close codes of each socket (`x-close-codes`);
//! - `docs/openapi.yaml`: for each path, method and status, the body's schema.
//!
//! A frame that matches no schema, an event type the spec lacks (unless the test
//! itself published that custom type through [`super::Server::publish_raw`]), a
//! close code or an HTTP status the spec does not list: each panics, failing the
//! test that saw it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock, Mutex};

use serde_json::Value;

const DOCS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs");

/// The contract, loaded once per test binary.
pub struct Contract {
    schemas: Value,
    asyncapi: Value,
    openapi: Value,
    validators: Mutex<HashMap<String, Arc<jsonschema::Validator>>>,
    /// Custom event types the tests published themselves.
    published: Mutex<HashSet<String>>,
}

static CONTRACT: LazyLock<Contract> = LazyLock::new(Contract::load);

/// The loaded contract.
pub fn contract() -> &'static Contract {
    &CONTRACT
}

fn read(name: &str) -> String {
    let path = format!("{DOCS}/{name}");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

fn yaml(name: &str) -> Value {
    serde_yaml::from_str(&read(name)).unwrap_or_else(|e| panic!("parse docs/{name}: {e}"))
}

/// The `$defs` name of a `./schemas/stackpulse.json#/$defs/X` reference.
pub fn def_name(reference: &str) -> Option<&str> {
    reference.strip_prefix("./schemas/stackpulse.json#/$defs/")
}

impl Contract {
    fn load() -> Contract {
        Contract {
            schemas: serde_json::from_str(&read("schemas/stackpulse.json"))
                .expect("docs/schemas/stackpulse.json is JSON"),
            asyncapi: yaml("asyncapi.yaml"),
            openapi: yaml("openapi.yaml"),
            validators: Mutex::default(),
            published: Mutex::default(),
        }
    }

    pub fn schemas(&self) -> &Value {
        &self.schemas
    }

    pub fn asyncapi(&self) -> &Value {
        &self.asyncapi
    }

    pub fn openapi(&self) -> &Value {
        &self.openapi
    }

    /// A validator for `$defs/<name>` (the whole document, so internal `$ref`s resolve).
    pub fn validator(&self, name: &str) -> Arc<jsonschema::Validator> {
        let mut cache = self.validators.lock().expect("validators");
        if let Some(v) = cache.get(name) {
            return v.clone();
        }
        assert!(
            self.schemas["$defs"].get(name).is_some(),
            "docs/schemas/stackpulse.json has no $defs/{name}"
        );
        let mut schema = self.schemas.clone();
        schema["$ref"] = Value::from(format!("#/$defs/{name}"));
        let validator = Arc::new(
            jsonschema::draft202012::new(&schema)
                .unwrap_or_else(|e| panic!("$defs/{name} is not a valid schema: {e}")),
        );
        cache.insert(name.to_owned(), validator.clone());
        validator
    }

    /// The errors of `instance` against `$defs/<name>` (empty when it conforms).
    pub fn errors(&self, name: &str, instance: &Value) -> Vec<String> {
        self.validator(name)
            .iter_errors(instance)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect()
    }

    /// Panics unless `instance` conforms to `$defs/<name>`.
    pub fn assert_conforms(&self, name: &str, instance: &Value, what: &str) {
        let errors = self.errors(name, instance);
        assert!(
            errors.is_empty(),
            "contract: {what} does not match $defs/{name} of docs/schemas/stackpulse.json:\n{instance}\n{}",
            errors.join("\n")
        );
    }

    /// The event types the spec says the server emits (`x-event-types` of `/ws`).
    pub fn event_types(&self) -> Vec<String> {
        self.asyncapi["channels"]["ws"]["x-event-types"]
            .as_array()
            .expect("asyncapi.yaml: channels.ws.x-event-types")
            .iter()
            .filter_map(|t| t.as_str().map(str::to_owned))
            .collect()
    }

    /// The close codes a channel's `x-close-codes` lists.
    pub fn close_codes(&self, channel: &str) -> Vec<u16> {
        self.asyncapi["channels"][channel]["x-close-codes"]
            .as_array()
            .unwrap_or_else(|| panic!("asyncapi.yaml: channels.{channel}.x-close-codes"))
            .iter()
            .filter_map(|c| c["code"].as_u64())
            .map(|c| c as u16)
            .collect()
    }

    /// Records a custom event type a test published (so its frames are expected).
    pub fn published(&self, event_type: &str) {
        self.published
            .lock()
            .expect("published")
            .insert(event_type.to_owned());
    }

    /// Checks one server frame of `/ws`.
    pub fn ws_frame(&self, frame: &Value) {
        self.assert_conforms("ServerFrame", frame, "a /ws frame");
        let Some(t) = frame["type"].as_str() else {
            return;
        };
        if !t.contains('.') {
            return; // a control reply
        }
        let known = self.event_types().iter().any(|k| k == t);
        let published = self.published.lock().expect("published").contains(t);
        assert!(
            known || published,
            "contract: event type {t} is not in docs/asyncapi.yaml (channels.ws.x-event-types) \
             and no test published it: {frame}"
        );
    }

    /// Checks a close code seen on `channel` (an asyncapi.yaml channel id).
    pub fn close_code(&self, channel: &str, code: u16) {
        let codes = self.close_codes(channel);
        assert!(
            codes.contains(&code),
            "contract: close code {code} is not in docs/asyncapi.yaml channels.{channel}.x-close-codes {codes:?}"
        );
    }

    /// The OpenAPI path template that `path` matches (`/v1/topics/{id}`).
    fn path_template(&self, path: &str) -> Option<String> {
        let path = path.split('?').next().unwrap_or(path);
        let want: Vec<&str> = path.split('/').collect();
        let paths = self.openapi["paths"].as_object()?;
        paths
            .keys()
            .find(|template| {
                let have: Vec<&str> = template.split('/').collect();
                have.len() == want.len()
                    && have.iter().zip(&want).all(|(h, w)| {
                        (h.starts_with('{') && h.ends_with('}') && !w.is_empty()) || h == w
                    })
            })
            .cloned()
    }

    /// Follows a `#/components/...` reference inside openapi.yaml.
    fn resolve<'a>(&'a self, mut v: &'a Value) -> &'a Value {
        while let Some(r) = v.get("$ref").and_then(Value::as_str) {
            let Some(pointer) = r.strip_prefix('#') else {
                break;
            };
            v = self
                .openapi
                .pointer(pointer)
                .unwrap_or_else(|| panic!("openapi.yaml: dangling $ref {r}"));
        }
        v
    }

    /// Checks an HTTP response against openapi.yaml: the status must be listed for
    /// the path and method, and a JSON body must match the listed schema. A path
    /// the document lacks must be the router's 404 `{"message"}`.
    pub fn http(&self, method: &str, path: &str, status: u16, body: &str) {
        let what = format!("{method} {path} → {status}");
        let Some(template) = self.path_template(path) else {
            assert_eq!(
                status, 404,
                "contract: {what}: path not in docs/openapi.yaml"
            );
            let json: Value = serde_json::from_str(body)
                .unwrap_or_else(|e| panic!("contract: {what}: body is not JSON ({e}): {body}"));
            return self.assert_conforms("MessageBody", &json, &what);
        };
        let operation = &self.openapi["paths"][&template][method.to_ascii_lowercase()];
        assert!(
            operation.is_object(),
            "contract: {what}: docs/openapi.yaml has no {method} {template}"
        );
        let response = operation["responses"]
            .get(status.to_string())
            .unwrap_or_else(|| {
                panic!("contract: {what}: status {status} is not in docs/openapi.yaml for {method} {template}")
            });
        let response = self.resolve(response);
        let Some(json_schema) = response
            .pointer("/content/application~1json/schema/$ref")
            .and_then(Value::as_str)
        else {
            return; // no body, or not JSON (text, HTML, the WebSocket upgrade)
        };
        let name = def_name(json_schema).unwrap_or_else(|| {
            panic!("openapi.yaml: {template} {status}: unexpected $ref {json_schema}")
        });
        let json: Value = serde_json::from_str(body)
            .unwrap_or_else(|e| panic!("contract: {what}: body is not JSON ({e}): {body}"));
        self.assert_conforms(name, &json, &what);
    }
}
