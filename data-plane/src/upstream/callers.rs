//! Which client session a message an upstream starts on its own belongs to.
//!
//! Upstreams are shared by every session of a config, and stdio carries no hint of whom a log
//! line, a sampling request or an elicitation is for. So the gateway attributes such a message
//! only when it can tell: a private (`per_session`) upstream belongs to its session; a shared one
//! to the single session that has requests in flight on it at that moment. Anything else is not
//! relayed: a message meant for one project must never reach another.
//!
//! Resource updates follow explicit subscriptions instead.

#![allow(deprecated)] // `LoggingLevel`: logging is part of the protocol versions clients speak today

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use rmcp::model::{LoggingLevel, RequestId};
use rmcp::{Peer, RoleServer};

/// What the gateway keeps of one client session for relaying to it.
pub struct ClientLink {
    id: u64,
    peer: OnceLock<Peer<RoleServer>>,
    /// Minimum level the client asked for with `logging/setLevel` (none: everything).
    log_level: Mutex<Option<LoggingLevel>>,
}

static NEXT_LINK: AtomicU64 = AtomicU64::new(1);

impl ClientLink {
    pub fn new() -> Arc<Self> {
        Arc::new(ClientLink {
            id: NEXT_LINK.fetch_add(1, Ordering::Relaxed),
            peer: OnceLock::new(),
            log_level: Mutex::new(None),
        })
    }

    /// The session's peer; the same for every request of one session.
    pub fn attach(&self, peer: &Peer<RoleServer>) {
        let _ = self.peer.set(peer.clone());
    }

    pub fn peer(&self) -> Option<&Peer<RoleServer>> {
        self.peer.get()
    }

    pub fn set_log_level(&self, level: LoggingLevel) {
        *self.log_level.lock().unwrap_or_else(|e| e.into_inner()) = Some(level);
    }

    /// Whether a log message at `level` reaches this client.
    pub fn wants_log(&self, level: LoggingLevel) -> bool {
        let threshold = *self.log_level.lock().unwrap_or_else(|e| e.into_inner());
        threshold.is_none_or(|t| severity(level) >= severity(t))
    }
}

fn severity(level: LoggingLevel) -> u8 {
    match level {
        LoggingLevel::Debug => 0,
        LoggingLevel::Info => 1,
        LoggingLevel::Notice => 2,
        LoggingLevel::Warning => 3,
        LoggingLevel::Error => 4,
        LoggingLevel::Critical => 5,
        LoggingLevel::Alert => 6,
        LoggingLevel::Emergency => 7,
    }
}

/// A client session and the request of it that a server-initiated message relates to.
#[derive(Clone)]
pub struct Caller {
    pub link: Arc<ClientLink>,
    /// The client's request in flight, if any: server requests ride its stream.
    pub request: Option<RequestId>,
}

struct Flight {
    link: Weak<ClientLink>,
    /// Requests in flight, oldest first.
    requests: Vec<(u64, RequestId)>,
}

#[derive(Default)]
pub struct Callers {
    /// Set for a private upstream: the session it belongs to.
    owner: OnceLock<Weak<ClientLink>>,
    in_flight: Mutex<HashMap<u64, Flight>>,
    next_entry: AtomicU64,
    /// Upstream URI -> the sessions subscribed to it, with the URI each was shown.
    subscriptions: Mutex<HashMap<String, Vec<Subscriber>>>,
}

/// A subscribed session and the URI it was shown.
type Subscriber = (Weak<ClientLink>, String);

/// Marks a client request as in flight on an upstream until dropped.
pub struct InFlight<'a> {
    callers: &'a Callers,
    link: u64,
    entry: u64,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut flights = self.callers.flights();
        if let Some(flight) = flights.get_mut(&self.link) {
            flight.requests.retain(|(entry, _)| *entry != self.entry);
            if flight.requests.is_empty() {
                flights.remove(&self.link);
            }
        }
    }
}

impl Callers {
    fn flights(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Flight>> {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn subscriptions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Subscriber>>> {
        self.subscriptions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes this (private) upstream belong to `link`.
    pub fn set_owner(&self, link: &Arc<ClientLink>) {
        let _ = self.owner.set(Arc::downgrade(link));
    }

    pub fn enter(&self, link: &Arc<ClientLink>, request: RequestId) -> InFlight<'_> {
        let entry = self.next_entry.fetch_add(1, Ordering::Relaxed);
        let mut flights = self.flights();
        let flight = flights.entry(link.id).or_insert_with(|| Flight { link: Arc::downgrade(link), requests: vec![] });
        flight.requests.push((entry, request));
        InFlight { callers: self, link: link.id, entry }
    }

    /// The session a message the upstream sends now belongs to, when that can be told.
    pub fn attributable(&self) -> Option<Caller> {
        let flights = self.flights();
        let latest = |f: &Flight| f.requests.last().map(|(_, id)| id.clone());
        if let Some(owner) = self.owner.get() {
            let link = owner.upgrade()?;
            let request = flights.get(&link.id).and_then(latest);
            return Some(Caller { link, request });
        }
        let mut sessions = flights.values();
        match (sessions.next(), sessions.next()) {
            (Some(flight), None) => Some(Caller { link: flight.link.upgrade()?, request: latest(flight) }),
            _ => None,
        }
    }

    /// Records a subscription; true when it is the first to `uri` (the upstream must be told).
    pub fn subscribe(&self, uri: &str, link: &Arc<ClientLink>, shown_as: String) -> bool {
        let mut subscriptions = self.subscriptions();
        let list = subscriptions.entry(uri.to_string()).or_default();
        list.retain(|(l, _)| l.strong_count() > 0);
        let first = list.is_empty();
        if !list.iter().any(|(l, _)| l.upgrade().is_some_and(|l| l.id == link.id)) {
            list.push((Arc::downgrade(link), shown_as));
        }
        first
    }

    /// Drops a subscription; true when no session is subscribed to `uri` any more.
    pub fn unsubscribe(&self, uri: &str, link: &Arc<ClientLink>) -> bool {
        let mut subscriptions = self.subscriptions();
        let Some(list) = subscriptions.get_mut(uri) else { return true };
        list.retain(|(l, _)| l.upgrade().is_some_and(|l| l.id != link.id));
        let last = list.is_empty();
        if last {
            subscriptions.remove(uri);
        }
        last
    }

    /// The sessions subscribed to `uri`, each with the URI it knows it by.
    pub fn subscribers(&self, uri: &str) -> Vec<(Arc<ClientLink>, String)> {
        let subscriptions = self.subscriptions();
        let Some(list) = subscriptions.get(uri) else { return vec![] };
        list.iter().filter_map(|(l, shown)| Some((l.upgrade()?, shown.clone()))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: i64) -> RequestId {
        RequestId::Number(n)
    }

    #[test]
    fn a_shared_upstream_attributes_only_to_a_single_session_in_flight() {
        let callers = Callers::default();
        let (a, b) = (ClientLink::new(), ClientLink::new());
        assert!(callers.attributable().is_none(), "nobody in flight");
        let first = callers.enter(&a, id(1));
        let second = callers.enter(&a, id(2));
        let caller = callers.attributable().expect("one session in flight");
        assert_eq!(caller.link.id, a.id);
        assert_eq!(caller.request, Some(id(2)), "the latest request");
        let other = callers.enter(&b, id(1));
        assert!(callers.attributable().is_none(), "two sessions: ambiguous");
        drop(other);
        drop(second);
        assert_eq!(callers.attributable().unwrap().request, Some(id(1)));
        drop(first);
        assert!(callers.attributable().is_none());
    }

    #[test]
    fn a_private_upstream_belongs_to_its_session() {
        let callers = Callers::default();
        let (a, b) = (ClientLink::new(), ClientLink::new());
        callers.set_owner(&a);
        let caller = callers.attributable().expect("the owner");
        assert_eq!((caller.link.id, caller.request.clone()), (a.id, None));
        let _flight = callers.enter(&b, id(7));
        assert_eq!(callers.attributable().unwrap().link.id, a.id, "never another session");
        drop((caller, a));
        assert!(callers.attributable().is_none(), "the session is gone");
    }

    #[test]
    fn subscriptions_tell_the_upstream_on_first_and_last() {
        let callers = Callers::default();
        let (a, b) = (ClientLink::new(), ClientLink::new());
        assert!(callers.subscribe("u://x", &a, "fx+u://x".into()));
        assert!(!callers.subscribe("u://x", &a, "fx+u://x".into()), "twice is once");
        assert!(!callers.subscribe("u://x", &b, "u://x".into()));
        let shown: Vec<String> = callers.subscribers("u://x").into_iter().map(|(_, s)| s).collect();
        assert_eq!(shown, ["fx+u://x", "u://x"]);
        assert!(!callers.unsubscribe("u://x", &a));
        assert!(callers.unsubscribe("u://x", &b));
        assert!(callers.subscribers("u://x").is_empty());
    }

    #[test]
    fn log_levels_filter_per_session() {
        let link = ClientLink::new();
        assert!(link.wants_log(LoggingLevel::Debug), "no level set: everything");
        link.set_log_level(LoggingLevel::Warning);
        assert!(!link.wants_log(LoggingLevel::Info));
        assert!(link.wants_log(LoggingLevel::Error));
    }
}
