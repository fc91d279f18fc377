//! The GraphQL document check: what a document may cost, decided before
//! async-graphql validates or runs it.
//!
//! async-graphql's own validation walks every fragment spread again at every use
//! (no memoisation), so a kilobyte of fragments that each spread the one below
//! twice costs 2^n steps *before* its depth and complexity limits are compared
//! (review finding #2). This module owns the cheap check that runs first:
//!
//! 1. [`nesting_depth`] scans the raw text for bracket nesting, so neither the
//!    parser nor anything after it recurses deeper than [`MAX_NESTING`].
//! 2. The document is parsed once (`async_graphql::parser::parse_query`).
//! 3. [`check_document`] costs every operation with fragment spreads expanded,
//!    each fragment costed once and memoised (the fragment graph is a DAG; a
//!    cycle is refused). Counted: selections (fields, spreads, inline fragments,
//!    directives, argument values), nesting depth, aliases, root fields, and
//!    the root fields of a subscription operation (one at most, DESIGN "Topic
//!    policy and limits"). Fragments no operation uses are refused too (the spec
//!    forbids them, and it keeps every part of the document costed), and so are
//!    `__schema`/`__type` when introspection is off (`--graphql-introspection`),
//!    with an error rather than async-graphql's silent `null`.
//!
//! Data flow: [`CostGuard`] is an async-graphql extension installed by
//! [`super::schema::build`]. Its `prepare_request` hook runs for every request of
//! every transport (`Schema::execute` for `POST /graphql`, `execute_stream` for
//! the AppSync pump and graphql-transport-ws) before async-graphql parses,
//! checks recursion depth or validates; it parses the query, checks it, and
//! stores the parsed document in the request so it is not parsed again. A refused
//! document becomes a GraphQL error (`errorType` `ValidationError`, code 400)
//! and nothing of it is validated or executed. What a field's *arguments* cost
//! (`recent_events(limit)`) is async-graphql's complexity, which is cheap once
//! this check has bounded the document's size.

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextPrepareRequest,
};
use async_graphql::parser::types::{
    Directive, ExecutableDocument, OperationType, Selection, SelectionSet,
};
use async_graphql::{ErrorExtensionValues, Positioned, Request, ServerError, ServerResult, Value};

/// Deepest bracket nesting (`{`, `[`, `(`) of the query text.
pub const MAX_NESTING: usize = 96;

/// What one document may cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CostLimits {
    /// Selections over all operations, with every fragment spread expanded.
    pub max_selections: usize,
    /// Nesting depth, a fragment spread counting as one level (async-graphql's
    /// `limit_recursive_depth`).
    pub max_depth: usize,
    /// Aliased fields, expanded.
    pub max_aliases: usize,
    /// Root fields of one operation, expanded.
    pub max_root_fields: usize,
    /// Root fields of one subscription operation.
    pub max_subscription_root_fields: usize,
    /// Whether `__schema` and `__type` may be asked for.
    pub introspection: bool,
}

impl Default for CostLimits {
    fn default() -> CostLimits {
        CostLimits {
            max_selections: 1000,
            max_depth: 24,
            max_aliases: 100,
            max_root_fields: 50,
            max_subscription_root_fields: 1,
            introspection: true,
        }
    }
}

/// Why a document was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CostError {
    #[error("Query is nested too deep: more than {0} levels of brackets")]
    TooNested(usize),
    #[error("Query is too large: {count} selections once fragments are expanded (limit {max})")]
    TooLarge { count: usize, max: usize },
    #[error("Query is nested too deep: more than {0} levels (fragment spreads count as one)")]
    TooDeep(usize),
    #[error("Fragment cycle: \"{0}\" spreads itself")]
    FragmentCycle(String),
    #[error("Fragment \"{0}\" is never used")]
    UnusedFragment(String),
    #[error("Too many aliases: {count} (limit {max})")]
    TooManyAliases { count: usize, max: usize },
    #[error("Too many root fields in one operation: {count} (limit {max})")]
    TooManyRootFields { count: usize, max: usize },
    #[error("A subscription operation may hold one root field; this one has {0} (send one subscription per field)")]
    SubscriptionRootFields(usize),
    #[error("GraphQL introspection is disabled on this server (see --graphql-introspection)")]
    IntrospectionDisabled,
}

impl From<CostError> for ServerError {
    fn from(e: CostError) -> ServerError {
        let mut error = ServerError::new(e.to_string(), None);
        let mut ext = ErrorExtensionValues::default();
        ext.set("errorType", "ValidationError");
        ext.set("errorCode", 400);
        error.extensions = Some(ext);
        error
    }
}

/// The deepest nesting of `{`, `[` and `(` in `query`, outside strings and
/// comments; stops counting past `limit`.
pub fn nesting_depth(query: &str, limit: usize) -> usize {
    let bytes = query.as_bytes();
    let (mut depth, mut max, mut i) = (0usize, 0usize, 0usize);
    while i < bytes.len() {
        match bytes[i] {
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'"' if bytes[i..].starts_with(b"\"\"\"") => {
                i += 3;
                while i < bytes.len() && !bytes[i..].starts_with(b"\"\"\"") {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i += 2;
            }
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' && bytes[i] != b'\n' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'{' | b'[' | b'(' => {
                depth += 1;
                max = max.max(depth);
                if max > limit {
                    return max;
                }
            }
            b'}' | b']' | b')' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    max
}

/// Parses `query` and checks it against `limits`: the one function every
/// transport's document goes through (see [`CostGuard`]).
pub fn check_query(query: &str, limits: &CostLimits) -> ServerResult<ExecutableDocument> {
    if nesting_depth(query, MAX_NESTING) > MAX_NESTING {
        return Err(CostError::TooNested(MAX_NESTING).into());
    }
    let doc = async_graphql::parser::parse_query(query)?;
    check_document(&doc, limits)?;
    Ok(doc)
}

/// What a selection set costs with its fragment spreads expanded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Cost {
    selections: usize,
    /// Levels below this selection set (0 for one of leaves only).
    height: usize,
    aliases: usize,
    /// Fields at this level, through spreads and inline fragments.
    fields: usize,
}

impl Cost {
    fn add(&mut self, other: Cost) {
        self.selections = self.selections.saturating_add(other.selections);
        self.aliases = self.aliases.saturating_add(other.aliases);
    }
}

enum Memo {
    InProgress,
    Done(Cost),
}

struct Walker<'a> {
    doc: &'a ExecutableDocument,
    limits: &'a CostLimits,
    memo: HashMap<&'a str, Memo>,
    /// Whether a `__schema` or `__type` field was seen.
    introspects: bool,
}

/// Value nodes of the arguments `(name, value)` of a field or directive,
/// variables counting as one. (The parser's value type, which may hold
/// variables, is not exported by async-graphql; it is turned into the public
/// constant [`Value`] to be walked, once per fragment thanks to the memo.)
macro_rules! argument_nodes {
    ($arguments:expr) => {
        $arguments
            .iter()
            .map(|(_, v)| {
                let value: Value = v
                    .node
                    .clone()
                    .into_const_with(|_| Ok::<Value, ()>(Value::Null))
                    .unwrap_or_default();
                const_nodes(&value)
            })
            .fold(0usize, usize::saturating_add)
    };
}

/// Value nodes of a constant (iterative: values may nest deeply).
fn const_nodes(value: &Value) -> usize {
    let mut stack = vec![value];
    let mut n = 0usize;
    while let Some(v) = stack.pop() {
        n = n.saturating_add(1);
        match v {
            Value::List(items) => stack.extend(items.iter()),
            Value::Object(map) => stack.extend(map.values()),
            _ => {}
        }
    }
    n
}

fn directive_nodes(directives: &[Positioned<Directive>]) -> usize {
    directives
        .iter()
        .map(|d| argument_nodes!(d.node.arguments).saturating_add(1))
        .fold(0usize, usize::saturating_add)
}

impl<'a> Walker<'a> {
    fn selection_set(&mut self, set: &'a SelectionSet, depth: usize) -> Result<Cost, CostError> {
        if depth > self.limits.max_depth {
            return Err(CostError::TooDeep(self.limits.max_depth));
        }
        let mut cost = Cost::default();
        for item in &set.items {
            let (inner, own_fields) = match &item.node {
                Selection::Field(f) => {
                    let f = &f.node;
                    if matches!(f.name.node.as_str(), "__schema" | "__type") {
                        self.introspects = true;
                    }
                    let args = argument_nodes!(f.arguments);
                    let mut inner = if f.selection_set.node.items.is_empty() {
                        Cost::default()
                    } else {
                        let c = self.selection_set(&f.selection_set.node, depth + 1)?;
                        Cost {
                            height: c.height + 1,
                            ..c
                        }
                    };
                    inner.selections = inner
                        .selections
                        .saturating_add(args)
                        .saturating_add(directive_nodes(&f.directives))
                        .saturating_add(1);
                    inner.aliases = inner.aliases.saturating_add(usize::from(f.alias.is_some()));
                    (inner, 1)
                }
                Selection::FragmentSpread(s) => {
                    let name = s.node.fragment_name.node.as_str();
                    let mut inner = match self.fragment(name, depth + 1)? {
                        Some(c) => Cost {
                            height: c.height + 1,
                            ..c
                        },
                        None => Cost::default(),
                    };
                    inner.selections = inner
                        .selections
                        .saturating_add(1 + directive_nodes(&s.node.directives));
                    let fields = inner.fields;
                    (inner, fields)
                }
                Selection::InlineFragment(i) => {
                    let c = self.selection_set(&i.node.selection_set.node, depth + 1)?;
                    let mut inner = Cost {
                        height: c.height + 1,
                        ..c
                    };
                    inner.selections = inner
                        .selections
                        .saturating_add(1 + directive_nodes(&i.node.directives));
                    let fields = inner.fields;
                    (inner, fields)
                }
            };
            cost.add(inner);
            cost.height = cost.height.max(inner.height);
            cost.fields = cost.fields.saturating_add(own_fields);
        }
        Ok(cost)
    }

    /// A fragment's cost, computed once; `None` for an unknown fragment (which
    /// validation reports).
    fn fragment(&mut self, name: &'a str, depth: usize) -> Result<Option<Cost>, CostError> {
        match self.memo.get(name) {
            Some(Memo::Done(c)) => {
                if depth + c.height > self.limits.max_depth {
                    return Err(CostError::TooDeep(self.limits.max_depth));
                }
                return Ok(Some(*c));
            }
            Some(Memo::InProgress) => return Err(CostError::FragmentCycle(name.to_owned())),
            None => {}
        }
        let Some((key, fragment)) = self.doc.fragments.get_key_value(name) else {
            return Ok(None);
        };
        self.memo.insert(key.as_str(), Memo::InProgress);
        let cost = self.selection_set(&fragment.node.selection_set.node, depth)?;
        let cost = Cost {
            selections: cost
                .selections
                .saturating_add(directive_nodes(&fragment.node.directives)),
            ..cost
        };
        self.memo.insert(key.as_str(), Memo::Done(cost));
        Ok(Some(cost))
    }
}

/// Checks a parsed document against `limits` in time linear in its size.
pub fn check_document(doc: &ExecutableDocument, limits: &CostLimits) -> Result<(), CostError> {
    let mut walker = Walker {
        doc,
        limits,
        memo: HashMap::new(),
        introspects: false,
    };
    let mut total = Cost::default();
    let mut root_fields = Vec::new();
    for (_, op) in doc.operations.iter() {
        let op = &op.node;
        let mut cost = walker.selection_set(&op.selection_set.node, 0)?;
        cost.selections = cost
            .selections
            .saturating_add(directive_nodes(&op.directives));
        total.add(cost);
        root_fields.push((op.ty, cost.fields));
    }
    if let Some(name) = doc
        .fragments
        .keys()
        .find(|name| !walker.memo.contains_key(name.as_str()))
    {
        return Err(CostError::UnusedFragment(name.to_string()));
    }
    if walker.introspects && !limits.introspection {
        return Err(CostError::IntrospectionDisabled);
    }
    if total.selections > limits.max_selections {
        return Err(CostError::TooLarge {
            count: total.selections,
            max: limits.max_selections,
        });
    }
    if total.aliases > limits.max_aliases {
        return Err(CostError::TooManyAliases {
            count: total.aliases,
            max: limits.max_aliases,
        });
    }
    for (ty, fields) in root_fields {
        if ty == OperationType::Subscription && fields > limits.max_subscription_root_fields {
            return Err(CostError::SubscriptionRootFields(fields));
        }
        if fields > limits.max_root_fields {
            return Err(CostError::TooManyRootFields {
                count: fields,
                max: limits.max_root_fields,
            });
        }
    }
    Ok(())
}

/// The extension that runs [`check_query`] on every request before async-graphql
/// parses, validates or executes it (installed once, in `schema::build`, so
/// every transport is covered).
pub struct CostGuard(pub CostLimits);

impl ExtensionFactory for CostGuard {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(CostGuardExtension(self.0))
    }
}

struct CostGuardExtension(CostLimits);

#[async_trait::async_trait]
impl Extension for CostGuardExtension {
    async fn prepare_request(
        &self,
        ctx: &ExtensionContext<'_>,
        mut request: Request,
        next: NextPrepareRequest<'_>,
    ) -> ServerResult<Request> {
        let doc = check_query(&request.query, &self.0)?;
        request.set_parsed_query(doc);
        next.run(ctx, request).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(query: &str) -> Result<(), CostError> {
        let doc = async_graphql::parser::parse_query(query).expect("parses");
        check_document(&doc, &CostLimits::default())
    }

    fn bomb(n: usize) -> String {
        let mut q = format!("query {{ ...F{n} }} fragment F0 on Query {{ __typename }}");
        for i in 1..=n {
            q.push_str(&format!(
                " fragment F{i} on Query {{ ...F{} ...F{} }}",
                i - 1,
                i - 1
            ));
        }
        q
    }

    #[test]
    fn fragment_dag_is_costed_once_per_fragment() {
        // 2^20 expanded leaves within the depth limit: refused as too large, and
        // costed in linear time; the review's n = 30 is deeper than the limit too.
        let t = std::time::Instant::now();
        match check(&bomb(20)) {
            Err(CostError::TooLarge { count, .. }) => assert!(count > 1 << 20, "{count}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(check(&bomb(30)), Err(CostError::TooDeep(24)));
        assert!(t.elapsed() < std::time::Duration::from_secs(1));
        // Saturates instead of overflowing at any n.
        assert!(matches!(
            check(&bomb(200)),
            Err(CostError::TooLarge { .. } | CostError::TooDeep(_))
        ));
        // A small DAG passes, and the count is exact: F2 = 2 spreads of F1 = 2
        // spreads of F0 (1 field) → 4 leaves, 2 + 4 spreads, + the root spread.
        let doc = async_graphql::parser::parse_query(bomb(2)).expect("parse");
        let limits = CostLimits {
            max_selections: 11,
            ..CostLimits::default()
        };
        assert_eq!(check_document(&doc, &limits), Ok(()));
        let limits = CostLimits {
            max_selections: 10,
            ..CostLimits::default()
        };
        assert_eq!(
            check_document(&doc, &limits),
            Err(CostError::TooLarge { count: 11, max: 10 })
        );
    }

    #[test]
    fn cycles_unknown_and_unused_fragments() {
        assert_eq!(
            check("{ ...A } fragment A on Query { ...B } fragment B on Query { ...A }"),
            Err(CostError::FragmentCycle("A".into()))
        );
        assert_eq!(
            check("{ ...A } fragment A on Query { a { ...A } }"),
            Err(CostError::FragmentCycle("A".into()))
        );
        // Unknown fragments are validation's to report.
        assert_eq!(check("{ ...Nope }"), Ok(()));
        assert_eq!(
            check("{ a } fragment U on Query { a }"),
            Err(CostError::UnusedFragment("U".into()))
        );
    }

    #[test]
    fn aliases_root_fields_and_subscriptions() {
        let aliases: String = (0..101).map(|i| format!("a{i}: x ")).collect();
        assert_eq!(
            check(&format!("{{ {aliases} }}")),
            Err(CostError::TooManyAliases {
                count: 101,
                max: 100
            })
        );
        let fields = "x ".repeat(51);
        assert_eq!(
            check(&format!("{{ {fields} }}")),
            Err(CostError::TooManyRootFields { count: 51, max: 50 })
        );
        // Root fields through fragments and inline fragments count.
        assert_eq!(
            check(
                "subscription { ...S ... on Subscription { b } } fragment S on Subscription { a }"
            ),
            Err(CostError::SubscriptionRootFields(2))
        );
        assert_eq!(check("subscription { a(x: 1) { b c } }"), Ok(()));
        // Every operation of the document is costed (validation walks them all).
        assert_eq!(
            check("query A { x } subscription B { a b }"),
            Err(CostError::SubscriptionRootFields(2))
        );
    }

    /// What `tests/graphql-clients` (aws-amplify 6, graphql-ws) and
    /// `tests/graphql.rs` send passes.
    #[test]
    fn the_bundled_clients_documents_pass() {
        for q in [
            "subscription OnDeploymentUpdated($deploymentId: ID!) {\n  onDeploymentUpdated(deployment_id: $deploymentId) {\n    deployment_id\n    status\n    updated_at\n  }\n}\n",
            "mutation Publish($deploymentId: ID!, $status: String!) {\n  publishDeploymentUpdate(deployment_id: $deploymentId, status: $status) {\n    deployment_id\n    status\n    seq\n  }\n}",
            "{ deployment(deployment_id: \"dep-amplify\") { recent_events { timestamp } } }",
            "{ __schema { subscriptionType { name } types { name fields { name type { kind name ofType { kind name ofType { kind name ofType { kind name ofType { kind name ofType { kind name ofType { kind name ofType { kind name } } } } } } } } } } } }",
        ] {
            assert_eq!(check_query(q, &CostLimits::default()).map(|_| ()), Ok(()), "{q}");
        }
    }

    #[test]
    fn introspection_can_be_refused() {
        let off = CostLimits {
            introspection: false,
            ..CostLimits::default()
        };
        for q in [
            "{ __schema { queryType { name } } }",
            "{ ...I } fragment I on Query { __type(name: \"Query\") { name } }",
        ] {
            let doc = async_graphql::parser::parse_query(q).expect("parse");
            assert_eq!(
                check_document(&doc, &off),
                Err(CostError::IntrospectionDisabled)
            );
            assert_eq!(check_document(&doc, &CostLimits::default()), Ok(()));
        }
        let doc = async_graphql::parser::parse_query("{ __typename }").expect("parse");
        assert_eq!(check_document(&doc, &off), Ok(()));
    }

    #[test]
    fn depth_counts_fragment_spreads() {
        let deep = format!("{{ {}x{} }}", "a { ".repeat(25), " }".repeat(25));
        assert_eq!(check(&deep), Err(CostError::TooDeep(24)));
        let ok = format!("{{ {}x{} }}", "a { ".repeat(24), " }".repeat(24));
        assert_eq!(check(&ok), Ok(()));
        // A chain of fragments is as deep as its spreads.
        let mut chain = String::from("{ ...F0 }");
        for i in 0..30 {
            chain.push_str(&format!(" fragment F{i} on Query {{ ...F{} }}", i + 1));
        }
        chain.push_str(" fragment F30 on Query { x }");
        assert_eq!(check(&chain), Err(CostError::TooDeep(24)));
        // A memoised fragment used again deeper down is checked again.
        let q = format!(
            "{{ ...D a {{ {}...D{} }} }} fragment D on Query {{ {}x{} }}",
            "b { ".repeat(10),
            " }".repeat(10),
            "c { ".repeat(13),
            " }".repeat(13)
        );
        assert_eq!(check(&q), Err(CostError::TooDeep(24)));
    }

    #[test]
    fn argument_values_count_and_nesting_is_bounded_before_parsing() {
        let list = vec!["1"; 1200].join(",");
        assert!(matches!(
            check(&format!("{{ a(x: [{list}]) }}")),
            Err(CostError::TooLarge { .. })
        ));
        let deep = format!("{{ a(x: {}1{}) }}", "[".repeat(5000), "]".repeat(5000));
        let e = check_query(&deep, &CostLimits::default()).expect_err("too nested");
        assert!(e.message.contains("nested too deep"), "{}", e.message);
        // Brackets in strings and comments do not count.
        let text = format!(
            "{{ a(x: \"{}\") # {}\n }}",
            "[".repeat(500),
            "{".repeat(500)
        );
        assert_eq!(nesting_depth(&text, MAX_NESTING), 2);
        let block = format!("{{ a(x: \"\"\"{}\\\"\"\" still\"\"\") }}", "(".repeat(500));
        assert_eq!(nesting_depth(&block, MAX_NESTING), 2);
        let e = check_query(&bomb(30), &CostLimits::default()).expect_err("bomb");
        let ext = serde_json::to_value(&e).expect("json");
        assert_eq!(ext["extensions"]["errorType"], "ValidationError", "{ext}");
    }
}
