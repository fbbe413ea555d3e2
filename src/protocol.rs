//! The wire constants of the Beskedfordeler and its token service: exchange, reply-to and
//! header names, namespaces, StatusKoder, the services and their entity ids, defaults of
//! the Afsend retry policy, and the one HTTP header Prometheus sends on `/probe`.
//!
//! Names, namespaces and codes come from KOMBIT's public samples and schemas for BFO 5.10
//! and SF1461/SF1462 (ARCHITECTURE.md §2). Correct them here, from KOMBIT's current
//! documentation, without touching probe logic. Test fixtures spell some of them out on
//! purpose: a test must fail when a constant drifts.

/// The Alive beskedtype (AliveBesked integration 1.0).
pub const ALIVE_BESKEDTYPE: &str = "f7e84a06-c47e-42e8-a864-fb4095d7f520";

/// AMQP virtual host of the Beskedfordeler.
pub const VHOST: &str = "BF";
/// Exchange that the Afsend service consumes.
pub const AFSEND_EXCHANGE: &str = "AFSEND_BESKED_EXCHANGE";
/// Routing key used when publishing to [`AFSEND_EXCHANGE`].
pub const AFSEND_ROUTING_KEY: &str = "";
/// RabbitMQ direct reply-to pseudo queue.
pub const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";
/// AMQP header that carries the decoded SAML token.
pub const TOKEN_HEADER: &str = "token";
/// Attempts for one Afsend message (KOMBIT's samples use 3).
pub const DEFAULT_SEND_ATTEMPTS: u32 = 3;
/// Time to wait for the StandardRetur reply of one attempt (KOMBIT's samples use 10 s).
pub const DEFAULT_SEND_TIMEOUT_SECS: u64 = 10;
/// How long KOMBIT's connection authoriser grants an AMQP connection; the broker ends it
/// then.
pub const CONNECTION_LIFETIME_SECS: u64 = 3600;
/// The exporter replaces a connection at this age (`[broker] max_connection_age`): five
/// minutes under [`CONNECTION_LIFETIME_SECS`], room for attempts on the old connection to
/// finish.
pub const DEFAULT_MAX_CONNECTION_AGE_SECS: u64 = 55 * 60;

/// Namespace of the Haendelsesbesked envelope.
pub const NS_KUVERT: &str = "urn:oio:besked:kuvert:1.0";
/// Namespace of the id, time and actor leaves, and of StandardRetur.
pub const NS_SAGDOK: &str = "urn:oio:sagdok:3.0.0";
/// A variant of [`NS_SAGDOK`] written by one public push receiver: accepted, never written.
pub const NS_SAGDOK_VARIANT: &str = "urn:oio:sag-dok:3.0.0";
/// Namespace of ModtagBeskedInput / ModtagBeskedOutput (push).
pub const NS_STS: &str = "urn:oio:sts:1.0.0";
/// Namespace of this exporter's probe payload inside Beskeddata.
pub const NS_PROBE: &str = "urn:bfo-alive-exporter:probe:1";

/// Version written into BeskedVersion.
pub const BESKED_VERSION: &str = "1.0";
/// URN prefix of a CVR number (TilladtModtager, ObjektAnsvarligMyndighed).
pub const CVR_URN_PREFIX: &str = "urn:oio:cvr-nr:";

/// StandardRetur status codes.
pub mod status {
    /// Accepted.
    pub const OK: i32 = 20;
    /// The request was invalid (used for unexpected push bodies).
    pub const INVALID_INPUT: i32 = 40;
    /// The token expired or is not valid for the service.
    pub const TOKEN_EXPIRED: i32 = 41;
    /// Not found (unknown dueslag on the push endpoint).
    pub const NOT_FOUND: i32 = 44;
    /// Internal error.
    pub const INTERNAL_ERROR: i32 = 50;
}

/// Service entity ids used to ask the STS for a token, per environment host.
pub fn service_entity_id(bfo_host: &str, service: &str) -> String {
    format!("http://{bfo_host}/service/{service}/1")
}

/// Header the Prometheus server sends with its scrape timeout.
pub const SCRAPE_TIMEOUT_HEADER: &str = "X-Prometheus-Scrape-Timeout-Seconds";

/// The two Beskedfordeler services the exporter uses: one token, one AMQP connection and
/// one label value (`service`, `connection`) each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    /// Sending (AMQP publish to the afsend exchange).
    Afsend,
    /// Receiving (pull consumer on a dueslag).
    Afhent,
}

impl Service {
    pub const ALL: [Service; 2] = [Service::Afsend, Service::Afhent];

    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Service::Afsend => "afsend",
            Service::Afhent => "afhent",
        }
    }

    /// A dense index, for per-service arrays.
    pub fn index(self) -> usize {
        match self {
            Service::Afsend => 0,
            Service::Afhent => 1,
        }
    }
}

impl std::fmt::Display for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
