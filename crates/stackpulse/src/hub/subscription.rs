//! One connection's subscription to one topic, and the rule that makes it gap-free.
//!
//! A subscription is *syncing* while the hub reads history and replays it, and
//! *live* afterwards. Live events offered by the fan-out while syncing wait in a
//! bounded `pending` list; when the replay is done, [`Subscription::finish_sync`]
//! sends the pending events that follow the replay and turns live. A live
//! subscription remembers the last seq it queued: an older or equal seq is a
//! duplicate and is skipped; a seq that jumps ahead (a lost cross-node message) or an
//! epoch change sends it back to syncing, and the hub repairs it from history. So
//! each subscription sees every seq once, in order, whatever the timing.
//!
//! Each subscription knows its [`Reader`] (for the live ACL check) and its session
//! (so the hub can end it alone when the reader loses access).

use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use super::event::StampedEvent;
use super::outbox::{Delivery, Outbox};
use super::policy::Reader;
use super::Session;

/// Live events buffered during a replay before the replay is redone from history.
const PENDING_LIMIT: usize = 4096;

enum State {
    Syncing {
        pending: Vec<Arc<StampedEvent>>,
        overflowed: bool,
    },
    Live {
        last_seq: u64,
        epoch: Arc<str>,
    },
    Ended,
}

/// What the fan-out must do after offering an event.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer {
    Done,
    /// A gap or an epoch change: repair from history after `from` (in `epoch`).
    NeedsRepair {
        from: u64,
        epoch: Arc<str>,
    },
}

/// The result of trying to go live after a replay.
#[derive(Debug, PartialEq, Eq)]
pub enum SyncStep {
    Live,
    /// Pending events do not follow on from `last_seq`: read history again from it.
    Again {
        last_seq: u64,
    },
    Ended,
}

pub struct Subscription {
    pub topic: Arc<str>,
    pub outbox: Arc<Outbox>,
    reader: Mutex<Arc<Reader>>,
    session: Weak<Session>,
    state: Mutex<State>,
}

fn same_epoch(a: &Arc<str>, b: &Arc<str>) -> bool {
    Arc::ptr_eq(a, b) || a == b
}

impl Subscription {
    /// A new subscription, syncing until the hub has replayed what it needs; read
    /// by the server itself and owned by no session.
    pub fn new(topic: Arc<str>, outbox: Arc<Outbox>) -> Subscription {
        Subscription {
            topic,
            outbox,
            reader: Mutex::new(Arc::new(Reader::System)),
            session: Weak::new(),
            state: Mutex::new(State::Syncing {
                pending: Vec::new(),
                overflowed: false,
            }),
        }
    }

    /// A new subscription of `session`'s connection, read by `reader`.
    pub fn for_session(
        topic: Arc<str>,
        session: &Arc<Session>,
        reader: Arc<Reader>,
    ) -> Subscription {
        Subscription {
            reader: Mutex::new(reader),
            session: Arc::downgrade(session),
            ..Subscription::new(topic, session.outbox.clone())
        }
    }

    /// Who reads through this subscription.
    pub fn reader(&self) -> Arc<Reader> {
        self.reader.lock().clone()
    }

    /// The connection re-authenticated as `reader`.
    pub fn set_reader(&self, reader: Arc<Reader>) {
        *self.reader.lock() = reader;
    }

    /// The session that holds it, while it is open.
    pub fn session(&self) -> Option<Arc<Session>> {
        self.session.upgrade()
    }

    /// Offers a live event from the fan-out. Never blocks. `direct`: the event's
    /// remaining direct-write budget ([`Outbox::push_event`]).
    pub fn offer(&self, event: &Arc<StampedEvent>, direct: &mut usize) -> Offer {
        let mut state = self.state.lock();
        match &mut *state {
            State::Ended => Offer::Done,
            State::Syncing {
                pending,
                overflowed,
            } => {
                if pending.len() < PENDING_LIMIT {
                    pending.push(event.clone());
                } else {
                    *overflowed = true;
                }
                Offer::Done
            }
            State::Live { last_seq, epoch } => {
                if !same_epoch(epoch, &event.epoch) || event.seq > *last_seq + 1 {
                    let from = *last_seq;
                    let epoch = epoch.clone();
                    *state = State::Syncing {
                        pending: vec![event.clone()],
                        overflowed: false,
                    };
                    return Offer::NeedsRepair { from, epoch };
                }
                if event.seq <= *last_seq {
                    return Offer::Done;
                }
                *last_seq = event.seq;
                if self.outbox.push_event(event, direct).is_err() {
                    *state = State::Ended;
                }
                Offer::Done
            }
        }
    }

    /// After a replay that ended at `last_seq` in `epoch`: queue the pending events
    /// that follow on and go live, or say why another read is needed.
    pub fn finish_sync(&self, mut last_seq: u64, epoch: &Arc<str>) -> SyncStep {
        let mut state = self.state.lock();
        let State::Syncing {
            pending,
            overflowed,
        } = &mut *state
        else {
            return SyncStep::Ended;
        };
        if *overflowed {
            pending.clear();
            *overflowed = false;
            return SyncStep::Again { last_seq };
        }
        let items = std::mem::take(pending);
        for (i, event) in items.iter().enumerate() {
            if !same_epoch(epoch, &event.epoch) || event.seq > last_seq + 1 {
                *pending = items[i..].to_vec();
                return SyncStep::Again { last_seq };
            }
            if event.seq <= last_seq {
                continue;
            }
            if self.outbox.push(Delivery::Event(event.clone())).is_err() {
                *state = State::Ended;
                return SyncStep::Ended;
            }
            last_seq = event.seq;
        }
        *state = State::Live {
            last_seq,
            epoch: epoch.clone(),
        };
        SyncStep::Live
    }

    /// Sends a live subscription back to syncing (events may have been lost
    /// upstream); returns where to repair from. `None` when it is not live.
    pub fn force_repair(&self) -> Option<(u64, Arc<str>)> {
        let mut state = self.state.lock();
        let State::Live { last_seq, epoch } = &*state else {
            return None;
        };
        let from = (*last_seq, epoch.clone());
        *state = State::Syncing {
            pending: Vec::new(),
            overflowed: false,
        };
        Some(from)
    }

    /// Stops all further deliveries; false when it had ended already.
    pub fn end(&self) -> bool {
        !matches!(
            std::mem::replace(&mut *self.state.lock(), State::Ended),
            State::Ended
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Map;

    fn ev(seq: u64, epoch: &Arc<str>) -> Arc<StampedEvent> {
        Arc::new(StampedEvent::new(
            "T".into(),
            seq,
            epoch.clone(),
            "x.y",
            "t",
            &Map::new(),
        ))
    }

    fn drain(rx: &mut crate::hub::outbox::Receiver) -> Vec<u64> {
        let mut seqs = Vec::new();
        while let Ok(d) = rx.try_recv() {
            if let Delivery::Event(e) = d {
                seqs.push(e.seq);
            }
        }
        seqs
    }

    #[test]
    fn pending_events_follow_the_replay_without_duplicates() {
        let (outbox, mut rx) = Outbox::new(64);
        let epoch: Arc<str> = "e1".into();
        let sub = Subscription::new("T".into(), outbox);
        // Published while the history read was running: 4 and 5 are also in history.
        for s in [4, 5, 6, 7] {
            assert_eq!(sub.offer(&ev(s, &epoch), &mut 0), Offer::Done);
        }
        assert!(drain(&mut rx).is_empty(), "nothing goes out while syncing");
        assert_eq!(sub.finish_sync(5, &epoch), SyncStep::Live);
        assert_eq!(drain(&mut rx), vec![6, 7]);
        sub.offer(&ev(7, &epoch), &mut 0);
        sub.offer(&ev(8, &epoch), &mut 0);
        assert_eq!(drain(&mut rx), vec![8], "a redelivered 7 is skipped");
    }

    #[test]
    fn a_gap_while_live_asks_for_repair() {
        let (outbox, mut rx) = Outbox::new(64);
        let epoch: Arc<str> = "e1".into();
        let sub = Subscription::new("T".into(), outbox);
        assert_eq!(sub.finish_sync(3, &epoch), SyncStep::Live);
        assert_eq!(
            sub.offer(&ev(6, &epoch), &mut 0),
            Offer::NeedsRepair {
                from: 3,
                epoch: epoch.clone()
            }
        );
        sub.offer(&ev(7, &epoch), &mut 0);
        // The repair read history 4..=6; 6 and 7 were pending.
        assert_eq!(sub.finish_sync(6, &epoch), SyncStep::Live);
        assert_eq!(drain(&mut rx), vec![7]);
    }

    #[test]
    fn a_gap_in_pending_needs_another_read() {
        let (outbox, _rx) = Outbox::new(64);
        let epoch: Arc<str> = "e1".into();
        let sub = Subscription::new("T".into(), outbox);
        sub.offer(&ev(9, &epoch), &mut 0);
        assert_eq!(sub.finish_sync(5, &epoch), SyncStep::Again { last_seq: 5 });
        assert_eq!(sub.finish_sync(8, &epoch), SyncStep::Live);
    }

    #[test]
    fn an_epoch_change_asks_for_repair() {
        let (outbox, _rx) = Outbox::new(64);
        let old: Arc<str> = "e1".into();
        let new: Arc<str> = "e2".into();
        let sub = Subscription::new("T".into(), outbox);
        assert_eq!(sub.finish_sync(10, &old), SyncStep::Live);
        assert_eq!(
            sub.offer(&ev(1, &new), &mut 0),
            Offer::NeedsRepair {
                from: 10,
                epoch: old.clone()
            }
        );
    }

    #[test]
    fn ended_subscriptions_take_nothing() {
        let (outbox, mut rx) = Outbox::new(64);
        let epoch: Arc<str> = "e1".into();
        let sub = Subscription::new("T".into(), outbox);
        assert_eq!(sub.finish_sync(0, &epoch), SyncStep::Live);
        sub.end();
        sub.offer(&ev(1, &epoch), &mut 0);
        assert!(drain(&mut rx).is_empty());
        assert_eq!(sub.finish_sync(1, &epoch), SyncStep::Ended);
    }
}
