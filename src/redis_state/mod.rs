//! What the Redis store, queue and limiter share (each of them imports this, none imports another): one connection (a single node or a cluster),
//! the key layout with its hash tags, the one pub/sub subscriber per replica, bounded calls.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ::redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use ::redis::cluster::ClusterClientBuilder;
use ::redis::cluster_async::ClusterConnection;
use ::redis::{Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, Value};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, OnceCell, broadcast};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::backend::BackendError;

/// Shards of the create path. Everything one create touches (record, idempotency key, the
/// provider streams) carries the tag `{<prefix>:<shard>}`, so it sits in one cluster slot,
/// while the shards spread purges over the cluster.
pub const SHARDS: u8 = 16;
/// Every shard set in a shard mask.
pub const ALL_SHARDS: u32 = (1 << SHARDS) - 1;

/// A connection to one node (reconnecting by itself) or to a cluster.
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

enum Source {
    Single(ConnectionManager),
    Cluster(Box<ClusterSource>),
}

/// Connected on first use, so a replica starts (NOT_SERVING) while the cluster is down.
struct ClusterSource {
    client: ::redis::cluster::ClusterClient,
    conn: OnceCell<ClusterConnection>,
}

/// Key names. `{...}` is the hash tag: only it decides the cluster slot.
#[derive(Clone, Debug)]
pub struct Keys {
    prefix: String,
    /// What each shard's record keys start with: a record key is made for every read and
    /// write of a purge, about a dozen times over its life.
    record_prefixes: Vec<String>,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        let record_prefixes = (0..SHARDS)
            .map(|shard| format!("{{{prefix}:{shard:02}}}:purge:"))
            .collect();
        Keys {
            prefix: prefix.to_owned(),
            record_prefixes,
        }
    }

    fn tag(&self, shard: u8) -> String {
        format!("{{{}:{shard:02}}}", self.prefix)
    }

    /// What a record key starts with; the create script appends an id of the same shard.
    pub fn record_prefix(&self, shard: u8) -> String {
        self.record_prefixes[usize::from(shard)].clone()
    }

    pub fn record(&self, id: &str) -> String {
        let prefix = &self.record_prefixes[usize::from(shard_of_id(id))];
        let mut key = String::with_capacity(prefix.len() + id.len());
        key.push_str(prefix);
        key.push_str(id);
        key
    }

    /// The listing index of `caller`'s purges (`None`: every caller's) in `shard`: a sorted
    /// set of purge ids, all scored 0 so they sort by id, which for UUIDv7s is creation order.
    /// The caller is hashed: bounded length, no caller text in key names.
    pub fn list_index(&self, shard: u8, caller: Option<&str>) -> String {
        match caller {
            Some(c) => {
                let digest = hex::encode(&Sha256::digest(c.as_bytes())[..12]);
                format!("{}:idx:c:{digest}", self.tag(shard))
            }
            None => format!("{}:idx:all", self.tag(shard)),
        }
    }

    /// The secret every replica signs page tokens with.
    pub fn page_token_secret(&self) -> String {
        format!("{{{}:secret}}:page-token", self.prefix)
    }

    /// The idempotency key of a caller scope (hashed: bounded length, no caller text).
    pub fn idempotency(&self, scope: &str) -> String {
        let digest = hex::encode(Sha256::digest(scope.as_bytes()));
        format!("{}:idem:{digest}", self.tag(shard_of_scope(scope)))
    }

    /// The work stream of `provider` in `shard`.
    pub fn stream(&self, shard: u8, provider: &str) -> String {
        format!("{}:q:{provider}", self.tag(shard))
    }

    /// A limiter key. Charge keys that differ only in a trailing `:<number>` (the rules of one
    /// provider API) share a tag, so one acquire touches one slot.
    ///
    /// A kind's own rates (`<budget>:submit-ALL:<n>`) are charged in the same call as the API's
    /// (`<budget>:submit:<n>`), so their tag drops the `-<KIND>`: one slot in a cluster.
    pub fn limit(&self, charge_key: &str) -> String {
        let group = match charge_key.rsplit_once(':') {
            Some((head, idx)) if !idx.is_empty() && idx.bytes().all(|b| b.is_ascii_digit()) => head,
            _ => charge_key,
        };
        let tag = match group.rsplit_once(':') {
            Some((budget, api)) => match api.split_once('-') {
                Some((base, _kind)) => format!("{budget}:{base}"),
                None => group.to_owned(),
            },
            None => group.to_owned(),
        };
        format!("{{{}:lim:{tag}}}:{charge_key}", self.prefix)
    }

    /// Wake-ups for watchers: the payload is a purge id, or several separated by spaces.
    pub fn events_channel(&self) -> String {
        format!("{}:events", self.prefix)
    }

    /// Wake-ups for claimers: the payload is `<shard> <provider> <provider>...`.
    pub fn work_channel(&self) -> String {
        format!("{}:work", self.prefix)
    }
}

/// The shard of a purge id: the low bits of its last byte (random in a UUIDv7).
pub fn shard_of_id(id: &str) -> u8 {
    match uuid::Uuid::parse_str(id) {
        Ok(u) => u.as_bytes()[15] % SHARDS,
        Err(_) => Sha256::digest(id.as_bytes())[0] % SHARDS,
    }
}

/// The shard an idempotency scope pins its purge to.
pub fn shard_of_scope(scope: &str) -> u8 {
    Sha256::digest(scope.as_bytes())[0] % SHARDS
}

/// `id` with its last byte's low bits set to `shard`: still a UUIDv7 of the same time.
pub fn pin_id(id: &str, shard: u8) -> String {
    match uuid::Uuid::parse_str(id) {
        Ok(u) => {
            let mut bytes = *u.as_bytes();
            bytes[15] = bytes[15] - bytes[15] % SHARDS + shard;
            uuid::Uuid::from_bytes(bytes).to_string()
        }
        Err(_) => id.to_owned(),
    }
}

/// Which shards of which provider may hold new work, fed by the work channel.
#[derive(Default)]
pub struct WorkSignal {
    pub arrived: Notify,
    dirty: Mutex<HashMap<String, u32>>,
}

impl WorkSignal {
    /// Takes the shards of `provider` to read; every shard the first time.
    pub fn take(&self, provider: &str) -> u32 {
        let mut dirty = self.dirty.lock().expect("work lock");
        std::mem::take(dirty.entry(provider.to_owned()).or_insert(ALL_SHARDS))
    }

    pub fn mark(&self, provider: &str, shards: u32) {
        *self
            .dirty
            .lock()
            .expect("work lock")
            .entry(provider.to_owned())
            .or_insert(0) |= shards;
        self.arrived.notify_waiters();
    }

    /// After a reconnect: wake-ups may have been missed, so read everything once.
    fn mark_all(&self) {
        for mask in self.dirty.lock().expect("work lock").values_mut() {
            *mask = ALL_SHARDS;
        }
        self.arrived.notify_waiters();
    }

    fn on_message(&self, payload: &str) {
        let mut parts = payload.split(' ');
        let Some(shard) = parts.next().and_then(|s| s.parse::<u8>().ok()) else {
            return;
        };
        if shard < SHARDS {
            for provider in parts {
                self.mark(provider, 1 << shard);
            }
        }
    }
}

/// Where Redis is and how long any call to it may take.
/// No `Debug`: the URLs may carry a password.
#[derive(Clone)]
pub struct RedisOptions {
    /// One node (or a primary behind a proxy); used when `cluster_urls` is empty.
    pub url: Option<String>,
    pub cluster_urls: Vec<String>,
    pub key_prefix: String,
    pub timeout: Duration,
    /// ACL user and password, over the URL's (managed services hand them out separately).
    pub username: Option<String>,
    pub password: Option<secrecy::SecretString>,
    /// CA and client certificate for `rediss://` URLs; the system roots when `None`.
    pub tls: Option<::redis::TlsCertificates>,
}

impl RedisOptions {
    /// A client of one node at `url`, with the configured user, password and certificates.
    pub fn client(&self, url: &str) -> Result<::redis::Client, RedisError> {
        use ::redis::IntoConnectionInfo;
        let info = url.into_connection_info()?;
        let mut settings = info.redis_settings().clone();
        if let Some(user) = &self.username {
            settings = settings.set_username(user);
        }
        if let Some(password) = &self.password {
            settings = settings.set_password(secrecy::ExposeSecret::expose_secret(password));
        }
        let info = info.set_redis_settings(settings);
        match &self.tls {
            Some(certs) if url.starts_with("rediss://") => {
                ::redis::Client::build_with_tls(info, certs.clone())
            }
            _ => ::redis::Client::open(info),
        }
    }
}

/// The connection, keys and wake-ups of one replica, shared by its store, queue and limiter.
pub struct Shared {
    source: Source,
    pub keys: Keys,
    pub timeout: Duration,
    pub events: broadcast::Sender<String>,
    pub work: Arc<WorkSignal>,
    /// Stops the subscriber task when the last user is gone.
    _subscriber: DropGuard,
}

impl Shared {
    /// Connects lazily (a replica starts while Redis is down) and starts the subscriber.
    pub fn connect(config: &RedisOptions) -> Result<Arc<Shared>, BackendError> {
        let timeout = config.timeout;
        let bad = |e: RedisError| BackendError::Corrupt(format!("invalid Redis address: {e}"));
        let (source, urls) = if config.cluster_urls.is_empty() {
            let url = config.url.clone().unwrap_or_default();
            let client = config.client(&url).map_err(bad)?;
            let manager_config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout))
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_secs(1));
            let manager =
                ConnectionManager::new_lazy_with_config(client, manager_config).map_err(bad)?;
            (Source::Single(manager), vec![url])
        } else {
            let mut builder = ClusterClientBuilder::new(config.cluster_urls.clone())
                .connection_timeout(timeout)
                .response_timeout(timeout)
                .retries(2);
            if let Some(user) = &config.username {
                builder = builder.username(user);
            }
            if let Some(password) = &config.password {
                builder = builder.password(secrecy::ExposeSecret::expose_secret(password));
            }
            if let Some(certs) = &config.tls {
                builder = builder.certs(certs.clone());
            }
            let client = builder.build().map_err(bad)?;
            let conn = OnceCell::new();
            (
                Source::Cluster(Box::new(ClusterSource { client, conn })),
                config.cluster_urls.clone(),
            )
        };
        for url in &urls {
            config.client(url).map_err(bad)?;
        }
        let keys = Keys::new(&config.key_prefix);
        let (events, _) = broadcast::channel(4096);
        let work = Arc::new(WorkSignal::default());
        let stop = CancellationToken::new();
        tokio::spawn(subscribe(
            config.clone(),
            urls,
            [keys.events_channel(), keys.work_channel()],
            events.clone(),
            work.clone(),
            timeout,
            stop.clone(),
        ));
        Ok(Arc::new(Shared {
            source,
            keys,
            timeout,
            events,
            work,
            _subscriber: stop.drop_guard(),
        }))
    }

    /// Whether keys of different shards may live on different nodes: a script call then
    /// touches one shard's keys only.
    pub fn is_cluster(&self) -> bool {
        matches!(self.source, Source::Cluster(_))
    }

    /// A handle on the shared multiplexed connection.
    pub async fn conn(&self) -> Result<Conn, BackendError> {
        match &self.source {
            Source::Single(m) => Ok(Conn::Single(m.clone())),
            Source::Cluster(cluster) => {
                let c = cluster
                    .conn
                    .get_or_try_init(|| self.bounded(cluster.client.get_async_connection()))
                    .await?;
                Ok(Conn::Cluster(c.clone()))
            }
        }
    }

    /// Runs one Redis operation within the configured timeout.
    pub async fn bounded<T>(
        &self,
        op: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, BackendError> {
        match tokio::time::timeout(self.timeout, op).await {
            Ok(r) => r.map_err(classify),
            Err(elapsed) => Err(BackendError::Unavailable(Box::new(elapsed))),
        }
    }

    /// Runs a prepared script call on a connection within the configured timeout.
    pub async fn invoke<T: ::redis::FromRedisValue>(
        &self,
        call: ::redis::ScriptInvocation<'_>,
    ) -> Result<T, BackendError> {
        self.with(|mut c| async move { call.invoke_async(&mut c).await })
            .await
    }

    /// Runs `f` on a connection within the configured timeout.
    pub async fn with<T, F, Fut>(&self, f: F) -> Result<T, BackendError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let conn = self.conn().await?;
        self.bounded(f(conn)).await
    }
}

/// Replies we cannot read mean corrupt data; anything else means Redis cannot serve now.
pub fn classify(e: RedisError) -> BackendError {
    match e.kind() {
        ErrorKind::Parse | ErrorKind::UnexpectedReturnType => {
            BackendError::Corrupt(format!("unexpected Redis reply: {e}"))
        }
        _ => BackendError::Unavailable(Box::new(e)),
    }
}

/// How often the subscriber connection is checked with a PING.
const HEARTBEAT: Duration = Duration::from_secs(5);

/// The one subscriber connection of a replica: forwards event ids to `events` and work
/// wake-ups to `work`, reconnecting (to the next node, in a cluster) whenever it drops.
async fn subscribe(
    options: RedisOptions,
    urls: Vec<String>,
    channels: [String; 2],
    events: broadcast::Sender<String>,
    work: Arc<WorkSignal>,
    timeout: Duration,
    stop: CancellationToken,
) {
    let [events_channel, work_channel] = &channels;
    let mut delay = Duration::from_millis(100);
    for url in urls.iter().cycle() {
        let connect = async {
            let client = options.client(url)?;
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channels).await?;
            Ok::<_, RedisError>(pubsub)
        };
        let connected = tokio::select! {
            _ = stop.cancelled() => return,
            c = tokio::time::timeout(timeout, connect) => c,
        };
        match connected {
            Ok(Ok(pubsub)) => {
                tracing::debug!("subscribed to Redis wake-ups");
                delay = Duration::from_millis(100);
                // Anything published while we were away is found by reading everything once.
                work.mark_all();
                let (mut sink, mut messages) = pubsub.split();
                let mut heartbeat = tokio::time::interval(HEARTBEAT);
                heartbeat.tick().await;
                loop {
                    let msg = tokio::select! {
                        _ = stop.cancelled() => return,
                        m = messages.next() => m,
                        _ = heartbeat.tick() => {
                            // A connection that died without a word is found by its silence.
                            match tokio::time::timeout(timeout, sink.ping::<Value>()).await {
                                Ok(Ok(_)) => continue,
                                _ => break,
                            }
                        }
                    };
                    let Some(msg) = msg else { break };
                    let Ok(payload) = msg.get_payload::<String>() else {
                        continue;
                    };
                    let channel = msg.get_channel_name();
                    if channel == events_channel {
                        // One id, or several separated by spaces (a batch of updates), as
                        // the store's wake-ups carry them.
                        if !payload.is_empty() {
                            let _ = events.send(payload);
                        }
                    } else if channel == work_channel {
                        work.on_message(&payload);
                    }
                }
                tracing::warn!("Redis subscriber connection lost; reconnecting");
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "cannot subscribe to Redis; retrying"),
            Err(_) => tracing::debug!("subscribing to Redis timed out; retrying"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_ids_keep_their_time_and_land_in_the_shard() {
        let id = uuid::Uuid::now_v7().to_string();
        for shard in 0..SHARDS {
            let pinned = pin_id(&id, shard);
            assert_eq!(shard_of_id(&pinned), shard);
            assert_eq!(pinned[..24], id[..24]);
            assert_eq!(uuid::Uuid::parse_str(&pinned).unwrap().get_version_num(), 7);
        }
    }

    #[test]
    fn keys_of_one_create_share_a_tag() {
        let keys = Keys::new("p");
        let shard = shard_of_scope("alice\u{1f}k");
        let id = pin_id(&uuid::Uuid::now_v7().to_string(), shard);
        let tag = format!("{{p:{shard:02}}}");
        assert!(keys.record(&id).starts_with(&tag));
        assert!(keys.idempotency("alice\u{1f}k").starts_with(&tag));
        assert!(keys.stream(shard, "edgeone").starts_with(&tag));
    }

    #[test]
    fn limiter_rules_of_one_api_share_a_tag() {
        let keys = Keys::new("p");
        assert_eq!(
            keys.limit("cdn:submit:0"),
            "{p:lim:cdn:submit}:cdn:submit:0"
        );
        assert_eq!(
            keys.limit("cdn:submit:1"),
            "{p:lim:cdn:submit}:cdn:submit:1"
        );
        assert_eq!(
            keys.limit("caller:alice"),
            "{p:lim:caller:alice}:caller:alice"
        );
        // A kind's own rates are charged with the API's (Fastly's purge_all): one slot.
        assert_eq!(
            keys.limit("cdn:submit-ALL:0"),
            "{p:lim:cdn:submit}:cdn:submit-ALL:0"
        );
    }
}
