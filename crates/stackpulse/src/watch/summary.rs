//! The lines `watch` prints when the operation ends, for both views: the verdict
//! with status, duration and counts, the outputs on success, the root cause on
//! failure. Each line has a [`Tone`]; the terminal view colours it, the plain view
//! does not.

use stackpulse_cfn::DeploymentComplete;

/// How a summary line should look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    Good,
    Bad,
    Plain,
}

/// The summary of a finished operation of `stack`.
pub fn lines(stack: &str, d: &DeploymentComplete) -> Vec<(Tone, String)> {
    let s = &d.stack;
    let verdict = if d.success { "succeeded" } else { "failed" };
    let mut out = vec![(
        if d.success { Tone::Good } else { Tone::Bad },
        format!(
            "Stack {stack} {} {verdict} in {} s ({}/{} resources)",
            s.status, d.duration_seconds, s.completed_resources, s.total_resources
        ),
    )];
    for o in &d.outputs {
        out.push((
            Tone::Plain,
            if o.description.is_empty() {
                format!("  Output {} = {}", o.key, o.value)
            } else {
                format!("  Output {} = {}  ({})", o.key, o.value, o.description)
            },
        ));
    }
    if let Some(c) = &d.root_cause {
        out.push((
            Tone::Bad,
            format!(
                "  Root cause: {} ({}) {}: {}",
                c.logical_id, c.resource_type, c.status, c.reason
            ),
        ));
    }
    out
}
