//! The tracker's one look at a stack's earlier operations, for the estimates of
//! [`crate::estimate`].
//!
//! Data flow: the first poll of a stack ([`Run::scan_feed`]) keeps every event of the
//! pages it read; [`Run::learn_history`] keeps those older than the operation, reads
//! at most [`HISTORY_PAGES`] further pages while fewer than
//! [`crate::estimate::HISTORY_OPERATIONS`] earlier operations have begun, and gives
//! the medians to the stack's [`crate::estimate::Timing`]. Once per stack and
//! tracking session; a failed page only means fewer estimates (the run goes on).

use std::collections::HashSet;

use super::{Run, Stop};
use crate::estimate::{Action, Estimates, History, HISTORY_PAGES};
use crate::events::Event;
use crate::scope::{OperationKind, ScopedEvents};

impl Run {
    /// See the module docs. `pages` are the events the scan read (newest first),
    /// `token` the next page after them.
    pub(super) async fn learn_history(
        &mut self,
        i: usize,
        pages: Vec<Event>,
        scoped: &ScopedEvents,
        mut token: Option<String>,
    ) -> Result<(), Stop> {
        let current: HashSet<&str> = scoped.events.iter().map(|e| e.id.as_str()).collect();
        let mut history = History::new();
        history.offer(&pages, &current);
        let mut read = 0;
        while history.wants_more() && read < HISTORY_PAGES {
            let Some(t) = token.take() else { break };
            let page = self
                .optional_call(
                    "DescribeStackEvents",
                    move |api, arn| {
                        let t = t.clone();
                        async move { api.events_page(&arn, Some(t)).await }
                    },
                    i,
                )
                .await;
            let page = match page {
                Ok(p) => p,
                Err(Stop::Aws(e)) => {
                    tracing::debug!(stack = %self.feeds[i].name, "earlier events not readable: {e}");
                    break;
                }
                Err(e) => return Err(e),
            };
            read += 1;
            history.offer(&page.events, &current);
            token = page.next_token;
        }
        let estimates = Estimates::learn(&history);
        tracing::debug!(stack = %self.feeds[i].name, events = history.len(), operations = history.operations_begun(), "history read for estimates");
        let action = match scoped.kind {
            OperationKind::Create => Some(Action::Create),
            OperationKind::Update => Some(Action::Update),
            OperationKind::Delete => Some(Action::Delete),
            OperationKind::Import => Some(Action::Import),
            OperationKind::Unknown => None,
        };
        if let Some(f) = self.feeds.get_mut(i) {
            f.timing.set_estimates(estimates, action);
        }
        Ok(())
    }
}
