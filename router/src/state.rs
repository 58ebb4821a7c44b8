//! What every handler reaches: [`AppState`], a handle to the router's [`Services`]
//! (balancer, store, the client to nodes, metrics, keys, the operator's credentials,
//! clock, replicas) and settings, among them the proxy path's [`ProxySettings`].
//!
//! `app` builds it once at start; `proxy`, `api` and `dashboard` take it as their axum
//! state. It depends only on the modules below the handlers (balancer, store, upstream,
//! metrics, nodes, keys, auth, clock, config, cluster), never on `proxy`, `api`,
//! `dashboard` or `app`.

use std::sync::Arc;
use std::time::Duration;

use crate::auth::{AdminKey, LoginThrottle, Sessions};
use crate::balancer::Balancer;
use crate::clock::Clock;
use crate::cluster::Cluster;
use crate::config::MetricsAccess;
use crate::keys::{ClientAuth, KeyRing};
use crate::metrics::Metrics;
use crate::nodes::health::HealthChecker;
use crate::store::Store;
use crate::upstream::UpstreamClient;

/// What every handler can reach: a handle to [`Services`], cloned for every request
/// (one reference count, where cloning the fields was a dozen and an allocation).
#[derive(Clone)]
pub struct AppState(Arc<Services>);

impl AppState {
    pub fn new(services: Services) -> Self {
        AppState(Arc::new(services))
    }
}

impl std::ops::Deref for AppState {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.0
    }
}

/// The router's services and settings.
pub struct Services {
    pub balancer: Balancer,
    pub store: Store,
    pub client: UpstreamClient,
    pub metrics: Arc<Metrics>,
    pub health: HealthChecker,
    pub proxy: Arc<ProxySettings>,
    pub admin_key: AdminKey,
    pub keys: Arc<KeyRing>,
    pub client_auth: ClientAuth,
    pub clock: Clock,
    pub metrics_access: MetricsAccess,
    pub sessions: Arc<Sessions>,
    pub login_throttle: Arc<LoginThrottle>,
    /// This replica's view of the others, when the store is shared (PostgreSQL).
    pub cluster: Option<Arc<Cluster>>,
}

/// Limits and timeouts of the proxy path.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    pub max_body_bytes: usize,
    /// From sending the request to the node's response head.
    pub first_byte_timeout: Duration,
    /// Longest silence between two body chunks of a node's answer.
    pub idle_timeout: Duration,
    /// Longest wait for a record's commit before a response is released anyway.
    pub commit_wait: Duration,
    /// Records waiting for the store beyond which requests are refused.
    pub max_backlog: u64,
    /// A node's 429 or 503 sends the request to the next candidate.
    pub retry_refused: bool,
    /// The most bytes of each body (request, response) kept with its record; `None`:
    /// bodies are not stored.
    pub stored_body_max_bytes: Option<usize>,
}
