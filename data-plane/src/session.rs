//! Who opened each streamable-HTTP session, and how many sessions each credential holds.
//!
//! rmcp's `LocalSessionManager` runs the sessions; `Sessions` wraps it as the service's session
//! manager and adds what the MCP specification asks of a server that authenticates: a session is
//! bound to the credential that opened it (key id and the key's stored hash, so a rotated key is a
//! different credential). Requests on it with any other credential are answered exactly as for an
//! unknown session, so ids cannot be probed. Sessions end when their key is disabled, rotated or
//! deleted, and each key may hold only so many at once.
//!
//! Session ids are sealed (see `sealed_session`): any replica sharing the session secret can take a
//! session over, for the credential that opened it only. They are bearer secrets and never logged:
//! `short_id` is what logs and the audit trail carry.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::Stream;
use rmcp::model::{ClientJsonRpcMessage, InitializeRequestParams, ServerJsonRpcMessage};
use rmcp::transport::streamable_http_server::session::local::{LocalSessionManager, LocalSessionManagerError};
use rmcp::transport::streamable_http_server::session::{RestoreOutcome, ServerSseMessage, SessionId, SessionManager};
use sha2::{Digest, Sha256};

use crate::auth::Principal;
use crate::catalog::Catalog;
use crate::direct::Direct;
use crate::sealed_session::{Sealer, Unopenable};

/// How long a finished response can still be resumed by a client that lost it.
const RESUMABLE_FOR: Duration = Duration::from_secs(10);
/// A session with no request for this long is over (rmcp's own idle limit for its workers).
const IDLE: Duration = Duration::from_secs(300);
/// A session's requests go through rmcp at least this often, so that rmcp, which does not see the
/// requests served directly, keeps the session.
const RMCP_TOUCH: Duration = Duration::from_secs(60);
/// Expired sessions are looked for at most this often, when a new one is opened.
const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// Bound on remembered ended sessions; past it the oldest are forgotten first.
const MAX_ENDED: usize = 100_000;
/// Longest session id opened: ours are a few hundred bytes.
const MAX_ID_LEN: usize = 8 * 1024;

/// The credential a session belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// The key id; for OAuth, `oauth:<user id>` (what the per-key limit counts).
    pub key_id: Arc<str>,
    /// The key's stored hash when the session opened: a rotation makes it another credential.
    /// For OAuth, the token's issuer and subject.
    credential: Arc<str>,
    /// For OAuth: the user and project, whose membership (or the group that admitted the user)
    /// keeps the session open.
    member: Option<(uuid::Uuid, uuid::Uuid, Option<Arc<str>>)>,
}

impl Owner {
    pub fn of(principal: &Principal) -> Self {
        if principal.oauth {
            return Owner {
                key_id: format!("oauth:{}", principal.user_id).into(),
                credential: principal.credential.clone(),
                member: Some((principal.user_id, principal.project_id, principal.oauth_group.clone())),
            };
        }
        Owner { key_id: principal.key_id.clone(), credential: principal.credential.clone(), member: None }
    }

    #[cfg(test)]
    pub fn new(key_id: Arc<str>, credential: Arc<str>) -> Self {
        Owner { key_id, credential, member: None }
    }

    /// What the session is bound to besides the key id: the key's stored hash, or for OAuth the
    /// token's issuer and subject.
    pub fn credential(&self) -> &str {
        &self.credential
    }

    /// Whether the catalog still admits this credential as it was when the session opened.
    fn still_valid(&self, catalog: &Catalog) -> bool {
        match &self.member {
            Some((_, project, Some(group))) => catalog.admits_group(*project, group),
            Some((user, project, None)) => catalog.is_member(*user, *project),
            None => catalog.key(&self.key_id).is_some_and(|k| !k.disabled && k.hash == self.credential),
        }
    }
}

/// Caps on open sessions (`MCPGW_MAX_SESSIONS_PER_KEY`, `MCPGW_MAX_SESSIONS`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub per_key: usize,
    pub total: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// No such session (never opened, ended, expired, or not an id this deployment issued).
    #[error("session not found")]
    Unknown,
    /// The session exists but belongs to another credential; answered as `Unknown`.
    #[error("session belongs to another credential")]
    Foreign,
    /// A session opened elsewhere would be one too many here.
    #[error(transparent)]
    Limit(#[from] LimitReached),
}

tokio::task_local! {
    /// The session the current request opens: who opens it, with which `initialize`. rmcp asks for
    /// a new id within the request, and the id seals both.
    static OPENING: (Owner, InitializeRequestParams);
}

/// Runs `request` (an `initialize`) so that the session it opens is sealed for `owner` and `params`.
pub async fn opening<F: std::future::Future>(owner: Owner, params: InitializeRequestParams, request: F) -> F::Output {
    OPENING.scope((owner, params), request).await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LimitReached {
    #[error(
        "this API key has {0} open sessions, the most it may hold; close one (HTTP DELETE) or wait for one to expire"
    )]
    PerKey(usize),
    #[error("the gateway holds {0} open sessions, the most it serves; try again later")]
    Total(usize),
}

impl LimitReached {
    /// Metric label.
    pub fn reason(self) -> &'static str {
        match self {
            LimitReached::PerKey(_) => "per_key_limit",
            LimitReached::Total(_) => "total_limit",
        }
    }
}

struct Entry {
    owner: Owner,
    last_seen: Instant,
    /// When the session's id expires: the session ends then, however busy.
    expires: Instant,
    /// The session's handler, once its handshake is done, for requests served without rmcp.
    direct: Option<Arc<Direct>>,
    /// When rmcp last saw a request of this session: it ends sessions it has not seen for `IDLE`.
    rmcp_seen: Instant,
}

#[derive(Default)]
struct Owners {
    by_id: HashMap<Arc<str>, Entry>,
    per_key: HashMap<Arc<str>, usize>,
    last_sweep: Option<Instant>,
    /// Sessions ended here (closed by their client, or their key revoked), until their ids would
    /// have expired: their sealed ids must not bring them back. Keyed by a digest of the id, in the
    /// order they ended, which is also the order they stop mattering.
    ended: HashSet<[u8; 16]>,
    ended_order: VecDeque<([u8; 16], Instant)>,
}

impl Owners {
    fn remove(&mut self, id: &str) -> Option<Entry> {
        let entry = self.by_id.remove(id)?;
        if let Some(n) = self.per_key.get_mut(&entry.owner.key_id) {
            *n -= 1;
            if *n == 0 {
                self.per_key.remove(&entry.owner.key_id);
            }
        }
        Some(entry)
    }

    fn remember_ended(&mut self, id: &str, until: Instant) {
        self.forget_ended(Instant::now());
        if self.ended.len() >= MAX_ENDED
            && let Some((oldest, _)) = self.ended_order.pop_front()
        {
            self.ended.remove(&oldest);
        }
        let digest = digest(id);
        if self.ended.insert(digest) {
            self.ended_order.push_back((digest, until));
        }
    }

    /// Drops the ended sessions whose ids have expired by `now` (they open nothing anyway).
    fn forget_ended(&mut self, now: Instant) {
        while let Some((digest, until)) = self.ended_order.front().copied()
            && until <= now
        {
            self.ended_order.pop_front();
            self.ended.remove(&digest);
        }
    }

    fn has_ended(&self, id: &str) -> bool {
        self.ended.contains(&digest(id))
    }

    /// Admits `owner` on `id`, inserting it within the limits unless it is there already. One lock
    /// for the whole decision, so concurrent takeovers of one session count it once.
    fn insert(&mut self, id: &str, owner: Owner, expires: Instant, limits: Limits) -> Result<(), Refused> {
        if self.has_ended(id) {
            return Err(Refused::Unknown);
        }
        let now = Instant::now();
        if let Some(entry) = self.by_id.get_mut(id) {
            if entry.owner != owner {
                return Err(Refused::Foreign);
            }
            entry.last_seen = now;
            return Ok(());
        }
        let held = self.per_key.get(&owner.key_id).copied().unwrap_or(0);
        if held >= limits.per_key {
            return Err(LimitReached::PerKey(limits.per_key).into());
        }
        if self.by_id.len() >= limits.total {
            return Err(LimitReached::Total(limits.total).into());
        }
        *self.per_key.entry(owner.key_id.clone()).or_default() += 1;
        self.by_id.insert(id.into(), Entry { owner, last_seen: now, expires, direct: None, rmcp_seen: now });
        Ok(())
    }

    /// Removes the sessions `ended` picks and returns their ids.
    fn take_where(&mut self, mut ended: impl FnMut(&Entry) -> bool) -> Vec<Arc<str>> {
        let ids: Vec<Arc<str>> = self.by_id.iter().filter(|(_, e)| ended(e)).map(|(id, _)| id.clone()).collect();
        for id in &ids {
            self.remove(id);
        }
        ids
    }
}

pub struct Sessions {
    inner: Arc<LocalSessionManager>,
    owners: Mutex<Owners>,
    limits: Limits,
    sealer: Arc<Sealer>,
}

impl Sessions {
    pub fn new(limits: Limits, sealer: Arc<Sealer>) -> Self {
        let mut inner = LocalSessionManager::default();
        // rmcp keeps every finished response of a session for late resumption and scans them all on
        // each session event; its 60 s default made a busy session's calls slower the longer it ran
        // and held a minute of responses in memory. Clients retry after 3 s.
        inner.session_config.completed_cache_ttl = RESUMABLE_FOR;
        inner.session_config.keep_alive = Some(IDLE);
        Sessions { inner: Arc::new(inner), owners: Mutex::default(), limits, sealer }
    }

    fn owners(&self) -> std::sync::MutexGuard<'_, Owners> {
        self.owners.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a request on session `id` by `owner`: a session of this replica, or one opened on
    /// another replica (or before a restart), which this replica then takes over. The session's
    /// handler comes with it when the request may be served without rmcp.
    pub fn admit(&self, id: &str, owner: &Owner) -> Result<Option<Arc<Direct>>, Refused> {
        {
            let mut owners = self.owners();
            if let Some(entry) = owners.by_id.get_mut(id) {
                if entry.owner != *owner {
                    return Err(Refused::Foreign);
                }
                let now = Instant::now();
                if entry.expires <= now {
                    owners.remove(id);
                    drop(owners);
                    self.close_later(vec![id.into()]);
                    return Err(Refused::Unknown);
                }
                entry.last_seen = now;
                if now.duration_since(entry.rmcp_seen) >= RMCP_TOUCH {
                    // This one goes through rmcp (and anything else reaches rmcp anyway).
                    entry.rmcp_seen = now;
                    return Ok(None);
                }
                return Ok(entry.direct.clone());
            }
            if owners.has_ended(id) {
                return Err(Refused::Unknown);
            }
        }
        // Ids are at most a few hundred bytes; anything much longer is not one of ours.
        if id.len() > MAX_ID_LEN {
            return Err(Refused::Unknown);
        }
        let opened = self.sealer.open(id, Utc::now()).map_err(|e| match e {
            Unopenable::Forged | Unopenable::Expired => Refused::Unknown,
        })?;
        if !opened.belongs_to(owner) {
            return Err(Refused::Foreign);
        }
        let left = (opened.expires_at() - Utc::now()).to_std().unwrap_or_default();
        let expires = Instant::now() + left.min(self.sealer.lifetime());
        self.owners().insert(id, owner.clone(), expires, self.limits)?;
        tracing::info!(session = %short_id(id), key_id = %owner.key_id, "session taken over");
        Ok(None)
    }

    /// Makes session `id`'s handler available for the requests it can serve without rmcp; false
    /// when this replica does not hold the session (yet).
    pub fn attach_direct(&self, id: &str, direct: Arc<Direct>) -> bool {
        match self.owners().by_id.get_mut(id) {
            Some(entry) => {
                entry.direct.get_or_insert(direct);
                true
            }
            None => false,
        }
    }

    pub fn sealer(&self) -> &Arc<Sealer> {
        &self.sealer
    }

    /// Records that `owner` opened session `id`; over a limit the caller must end the session.
    pub fn register(&self, id: &str, owner: Owner) -> Result<(), LimitReached> {
        let (verdict, expired) = {
            let mut owners = self.owners();
            let now = Instant::now();
            let expired = if owners.last_sweep.is_none_or(|t| now.duration_since(t) >= SWEEP_EVERY) {
                owners.last_sweep = Some(now);
                owners.forget_ended(now);
                // Idle sessions stop their workers; their clients may come back and take them over.
                owners.take_where(|e| now.duration_since(e.last_seen) > IDLE || e.expires <= now)
            } else {
                Vec::new()
            };
            let expires = now.checked_add(self.sealer.lifetime()).unwrap_or(now + IDLE);
            let verdict = match owners.insert(id, owner, expires, self.limits) {
                Ok(()) => Ok(()),
                Err(Refused::Limit(limit)) => Err(limit),
                // A brand-new id is neither ended nor anyone else's.
                Err(Refused::Unknown | Refused::Foreign) => Ok(()),
            };
            (verdict, expired)
        };
        self.close_later(expired);
        verdict
    }

    /// Ends the sessions whose credential `catalog` no longer admits (disabled, rotated, deleted).
    pub fn end_revoked(&self, catalog: &Catalog) {
        let ended = {
            let mut owners = self.owners();
            let ended = owners.take_where(|e| !e.owner.still_valid(catalog));
            let until = self.ended_until();
            for id in &ended {
                owners.remember_ended(id, until);
            }
            ended
        };
        if !ended.is_empty() {
            tracing::info!(sessions = ended.len(), "ended sessions of revoked keys");
        }
        self.close_later(ended);
    }

    /// Ends session `id` for good (its streams close, its per-session upstreams stop, and its id
    /// opens nothing here any more).
    pub fn end(&self, id: &str) {
        {
            let mut owners = self.owners();
            owners.remove(id);
            owners.remember_ended(id, self.ended_until());
        }
        self.close_later(vec![id.into()]);
    }

    /// Until when an id sealed now could be presented.
    fn ended_until(&self) -> Instant {
        let now = Instant::now();
        now.checked_add(self.sealer.lifetime()).unwrap_or(now + IDLE)
    }

    fn close_later(&self, ids: Vec<Arc<str>>) {
        if ids.is_empty() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let inner = self.inner.clone();
        rt.spawn(async move {
            for id in ids {
                let _ = inner.close_session(&SessionId::from(id.to_string())).await;
            }
        });
    }

    #[cfg(test)]
    fn open(&self) -> usize {
        self.owners().by_id.len()
    }
}

fn digest(id: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    out.copy_from_slice(&Sha256::digest(id.as_bytes())[..16]);
    out
}

/// A short, stable, non-reversible name for a session id, for logs and the audit trail.
pub fn short_id(id: &str) -> String {
    hex::encode(&Sha256::digest(id.as_bytes())[..6])
}

/// rmcp's session manager, with the owners kept in step when a session is closed.
impl SessionManager for Sessions {
    type Error = LocalSessionManagerError;
    type Transport = <LocalSessionManager as SessionManager>::Transport;

    async fn create_session(&self) -> Result<(SessionId, Self::Transport), Self::Error> {
        let sealed = OPENING.try_with(|(owner, params)| self.sealer.seal(owner, params.clone(), Utc::now()));
        let Ok(id) = sealed else {
            // Not reached through the gateway's listener (which always says who opens a session).
            return self.inner.create_session().await;
        };
        let id = SessionId::from(id);
        match self.inner.restore_session(id.clone()).await? {
            RestoreOutcome::Restored(transport) => Ok((id, transport)),
            // A fresh sealing (random nonce) cannot already be in use.
            _ => self.inner.create_session().await,
        }
    }

    async fn restore_session(&self, id: SessionId) -> Result<RestoreOutcome<Self::Transport>, Self::Error> {
        self.inner.restore_session(id).await
    }

    async fn initialize_session(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<ServerJsonRpcMessage, Self::Error> {
        self.inner.initialize_session(id, message).await
    }

    async fn has_session(&self, id: &SessionId) -> Result<bool, Self::Error> {
        self.inner.has_session(id).await
    }

    async fn close_session(&self, id: &SessionId) -> Result<(), Self::Error> {
        self.owners().remove(id);
        self.inner.close_session(id).await
    }

    async fn create_stream(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        self.inner.create_stream(id, message).await
    }

    async fn accept_message(&self, id: &SessionId, message: ClientJsonRpcMessage) -> Result<(), Self::Error> {
        self.inner.accept_message(id, message).await
    }

    async fn create_standalone_stream(
        &self,
        id: &SessionId,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        self.inner.create_standalone_stream(id).await
    }

    async fn resume(
        &self,
        id: &SessionId,
        last_event_id: String,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        self.inner.resume(id, last_event_id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(key: &str, hash: &str) -> Owner {
        Owner { key_id: key.into(), credential: hash.into(), member: None }
    }

    fn sealer() -> Arc<Sealer> {
        Arc::new(Sealer::new(None, Duration::from_secs(60)))
    }

    #[test]
    fn sessions_admit_only_their_owner_and_count_per_key() {
        let sessions = Sessions::new(Limits { per_key: 2, total: 3 }, sealer());
        let (a, b) = (owner("a", "h1"), owner("b", "h2"));
        sessions.register("s1", a.clone()).unwrap();
        assert!(matches!(sessions.admit("s1", &a), Ok(None)));
        assert!(matches!(sessions.admit("s1", &b), Err(Refused::Foreign)));
        assert!(matches!(sessions.admit("s1", &owner("a", "rotated")), Err(Refused::Foreign)));
        assert!(matches!(sessions.admit("nope", &a), Err(Refused::Unknown)));

        sessions.register("s2", a.clone()).unwrap();
        assert_eq!(sessions.register("s3", a.clone()), Err(LimitReached::PerKey(2)));
        sessions.register("s3", b.clone()).unwrap();
        assert_eq!(sessions.register("s4", owner("c", "h3")), Err(LimitReached::Total(3)));
        assert!(matches!(sessions.admit("s3", &b), Ok(None)), "a refused registration leaves others alone");

        sessions.end("s1");
        assert!(matches!(sessions.admit("s1", &a), Err(Refused::Unknown)));
        sessions.register("s5", a).unwrap();
        assert_eq!(sessions.open(), 3);
    }

    #[tokio::test]
    async fn taken_over_sessions_count_once_expire_on_time_and_stay_ended() {
        let sealer = Arc::new(Sealer::new(None, Duration::from_secs(60)));
        let sessions = Sessions::new(Limits { per_key: 1, total: 10 }, sealer.clone());
        let a = owner("a", "h1");
        let params = rmcp::model::InitializeRequestParams::new(
            rmcp::model::ClientCapabilities::default(),
            rmcp::model::Implementation::new("c", "1"),
        );
        let id = sealer.seal(&a, params.clone(), Utc::now());
        // Two requests taking the same session over at once: one slot, not two.
        let far = Instant::now() + Duration::from_secs(60);
        sessions.owners().insert(&id, a.clone(), far, sessions.limits).unwrap();
        sessions.owners().insert(&id, a.clone(), far, sessions.limits).unwrap();
        assert_eq!(sessions.owners().per_key.get("a"), Some(&1));
        assert!(matches!(sessions.admit(&id, &a), Ok(None)));
        sessions.end(&id);
        assert!(matches!(sessions.admit(&id, &a), Err(Refused::Unknown)), "an ended session stays ended");
        assert_eq!(sessions.owners().per_key.get("a"), None);

        // A session whose id has expired ends, however busy it is here.
        let short = Sessions::new(Limits { per_key: 5, total: 10 }, Arc::new(Sealer::new(None, Duration::ZERO)));
        short.register("s", a.clone()).unwrap();
        assert!(matches!(short.admit("s", &a), Err(Refused::Unknown)));
        assert_eq!(short.open(), 0);
    }

    #[test]
    fn short_ids_are_stable_and_short() {
        let id = uuid::Uuid::new_v4().to_string();
        assert_eq!(short_id(&id), short_id(&id));
        assert_eq!(short_id(&id).len(), 12);
    }
}
