//! What `--web.config.file` asks of every request on the main listener except the push
//! endpoint: a rate limit (`rate_limit`), basic authentication (`basic_auth_users`, bcrypt)
//! and extra response headers (`http_server_config.headers`), in exporter-toolkit's order.
//!
//! bcrypt is slow on purpose (~70 ms at cost 10), so a flood of wrong passwords must not
//! take the runtime with it. As in exporter-toolkit, results are cached by user and
//! password (here a SHA-256 of it, never the password itself), an unknown user is checked
//! against a decoy hash of the same cost (no user enumeration by timing), and checks run
//! one or a few at a time; unlike it, they run on `spawn_blocking` (never on a runtime
//! worker), a request waits at most [`BCRYPT_WAIT`] for its turn (then 503), and
//! successes are cached apart from failures, so a flood of wrong passwords cannot evict
//! the scraper's cached credentials.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tokio::time::Instant;

/// How long a request waits for a free bcrypt check before it is answered 503.
const BCRYPT_WAIT: Duration = Duration::from_secs(5);
/// Entries in each cache (exporter-toolkit keeps 100).
const CACHE_SIZE: usize = 100;

/// The web config's rules for requests; empty means none.
#[derive(Debug, Clone, Default)]
pub(crate) struct Policy {
    /// User → bcrypt hash.
    pub users: BTreeMap<String, String>,
    /// Checked for unknown users: a bcrypt hash of the same cost as the users' hashes.
    pub decoy: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// `rate_limit`: one request per interval, bursts of `burst`.
    pub rate: Option<(Duration, u32)>,
}

impl Policy {
    /// Whether it asks anything of a request.
    pub(crate) fn is_active(&self) -> bool {
        !self.users.is_empty() || !self.headers.is_empty() || self.rate.is_some()
    }
}

struct Active {
    policy: Policy,
    bucket: Option<Mutex<Bucket>>,
}

/// Applies a [`Policy`]; the policy can be replaced on reload.
pub(crate) struct Guard {
    active: RwLock<Arc<Active>>,
    cache: Mutex<Cache>,
    bcrypt: Arc<Semaphore>,
}

impl Guard {
    pub(crate) fn new(policy: Policy) -> Arc<Self> {
        let parallel = std::thread::available_parallelism().map_or(1, |n| n.get());
        Arc::new(Guard {
            active: RwLock::new(Arc::new(Active::new(policy))),
            cache: Mutex::new(Cache::default()),
            // Half the cores at most: the rest keep serving scrapes and probes.
            bcrypt: Arc::new(Semaphore::new((parallel / 2).max(1))),
        })
    }

    /// A new policy (reload); cached results are forgotten.
    pub(crate) fn replace(&self, policy: Policy) {
        *self.active.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(Active::new(policy));
        *self.cache.lock().unwrap_or_else(|p| p.into_inner()) = Cache::default();
    }

    fn current(&self) -> Arc<Active> {
        self.active
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether `user` and `password` are valid; `Err` when no check was free in time.
    async fn verify(&self, active: &Active, user: &str, password: &[u8]) -> Result<bool, Busy> {
        let key: Key = (user.to_owned(), Sha256::digest(password).into());
        if let Some(ok) = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(ok);
        }
        let known = active.policy.users.get(user);
        let hash = known.unwrap_or(&active.policy.decoy).clone();
        let permit = tokio::time::timeout(BCRYPT_WAIT, self.bcrypt.clone().acquire_owned())
            .await
            .map_err(|_| Busy)?
            .map_err(|_| Busy)?;
        let password = password.to_vec();
        let matches = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            bcrypt::verify(&password, &hash).unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        let ok = matches && known.is_some();
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, ok);
        Ok(ok)
    }
}

struct Busy;

impl Active {
    fn new(policy: Policy) -> Self {
        let bucket = policy.rate.map(|(every, burst)| {
            Mutex::new(Bucket {
                tokens: f64::from(burst),
                last: Instant::now(),
                per_second: 1.0 / every.as_secs_f64(),
                burst: f64::from(burst),
            })
        });
        Active { policy, bucket }
    }
}

/// A token bucket, as Go's `rate.Limiter` that exporter-toolkit uses.
struct Bucket {
    tokens: f64,
    last: Instant,
    per_second: f64,
    burst: f64,
}

impl Bucket {
    fn allow(&mut self, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.per_second).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

type Key = (String, [u8; 32]);

/// Results by user and password digest; successes and failures apart, each bounded, a
/// tenth dropped when full (exporter-toolkit drops at random; any will do).
#[derive(Default)]
struct Cache {
    good: HashMap<Key, ()>,
    bad: HashMap<Key, ()>,
}

impl Cache {
    fn get(&self, key: &Key) -> Option<bool> {
        if self.good.contains_key(key) {
            Some(true)
        } else if self.bad.contains_key(key) {
            Some(false)
        } else {
            None
        }
    }

    fn insert(&mut self, key: Key, ok: bool) {
        let map = if ok { &mut self.good } else { &mut self.bad };
        if map.len() >= CACHE_SIZE {
            let drop: Vec<Key> = map.keys().take(CACHE_SIZE / 10).cloned().collect();
            for k in drop {
                map.remove(&k);
            }
        }
        map.insert(key, ());
    }
}

/// User and password of a `Basic` Authorization header.
fn credentials(headers: &HeaderMap) -> Option<(String, Vec<u8>)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    let user = String::from_utf8(decoded[..colon].to_vec()).ok()?;
    Some((user, decoded[colon + 1..].to_vec()))
}

/// The middleware: rate limit, then basic auth, then the handler; headers on every answer.
pub(crate) async fn layer(State(guard): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    let active = guard.current();
    let mut resp = check(&guard, &active, req, next).await;
    let h = resp.headers_mut();
    for (name, value) in &active.policy.headers {
        h.insert(name.clone(), value.clone());
    }
    resp
}

async fn check(guard: &Guard, active: &Active, req: Request, next: Next) -> Response {
    if let Some(b) = &active.bucket
        && !b
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .allow(Instant::now())
    {
        return (StatusCode::TOO_MANY_REQUESTS, "Too Many Requests\n").into_response();
    }
    if active.policy.users.is_empty() {
        return next.run(req).await;
    }
    if let Some((user, password)) = credentials(req.headers()) {
        match guard.verify(active, &user, &password).await {
            Ok(true) => return next.run(req).await,
            Ok(false) => {}
            Err(Busy) => {
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [(header::RETRY_AFTER, "5")],
                    "too many password checks at once; try again\n",
                )
                    .into_response();
            }
        }
    }
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Basic")],
        "Unauthorized\n",
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_parse() {
        let mut h = HeaderMap::new();
        assert!(credentials(&h).is_none());
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic dXNlcjpwYTpzcw=="),
        );
        assert_eq!(
            credentials(&h),
            Some(("user".to_string(), b"pa:ss".to_vec()))
        );
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer dXNlcjpwYXNz"),
        );
        assert!(credentials(&h).is_none());
    }

    #[test]
    fn bucket_allows_a_burst_then_one_per_interval() {
        let t0 = Instant::now();
        let mut b = Bucket {
            tokens: 2.0,
            last: t0,
            per_second: 1.0,
            burst: 2.0,
        };
        assert!(b.allow(t0) && b.allow(t0));
        assert!(!b.allow(t0));
        assert!(b.allow(t0 + Duration::from_secs(1)));
        assert!(!b.allow(t0 + Duration::from_millis(1500)));
    }

    #[test]
    fn failures_never_evict_successes() {
        let mut c = Cache::default();
        c.insert(("u".into(), [0; 32]), true);
        for i in 1..1000u32 {
            let mut k = [0u8; 32];
            k[..4].copy_from_slice(&i.to_be_bytes());
            c.insert(("u".into(), k), false);
        }
        assert_eq!(c.get(&("u".into(), [0; 32])), Some(true));
        assert!(c.bad.len() <= CACHE_SIZE);
    }
}
