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

/// AMQP virtual host of the Beskedfordeler; also what a broker URL without one means.
pub const VHOST: &str = "BF";
/// The Beskedfordeler's AMQP port (AMQP over TLS, `amqps://`).
pub const AMQPS_PORT: u16 = 5671;
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
/// The largest AMQP frame the exporter asks for (the lower of this and the broker's
/// `frame_max` is used), unless the URL names one. lapin keeps a send and a receive buffer
/// of 32 frames per connection, zero-filled to size once the connection is tuned: at
/// RabbitMQ's default of 128 KiB that is 8 MiB per connection, 1.6 GB for the 200
/// connections of 100 municipalities (BENCHMARKS.md, "Many municipalities"); at 32 KiB it
/// is 2 MiB. 32 KiB still carries a token of up to about 30 KB in a publish's `token`
/// header (the content header frame is not split), several times a KOMBIT token; the SASL
/// response goes before tuning and is not bounded by it.
pub const FRAME_MAX: u32 = 32 * 1024;

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
/// Namespace of the Beskedfordeler's own operations: AfsendBeskedOutput, the BasicOutput
/// wrapping the StandardRetur that KOMBIT's schemas define as the Afsend answer.
pub const NS_STS_BESKEDFORDELER: &str = "urn:oio:sts:beskedfordeler:1.0.0";
/// Namespace of this exporter's probe payload inside Beskeddata.
pub const NS_PROBE: &str = "urn:bfo-alive-exporter:probe:1";

/// The default `ObjektType` of the `RelateretObjekt` that addresses each Alive message to its
/// dueslag (`ObjektId` = the dueslag's UUID), and on which each dueslag's abonnement filters
/// (ARCHITECTURE.md §2, routing by abonnement); `[exporter] objekt_type` overrides it.
///
/// A URN, not a UUID: the abonnement and every message show it, and an operator reading
/// `urn:bfo-alive-exporter:dueslag` in the Administrationsmodul or a message dump knows what
/// the RelateretObjekt is, where a UUID would say nothing. It is in the project's own URN
/// family (as [`NS_PROBE`]), never under `urn:oio:`, whose names belong to the public
/// authorities' registries: a business object type can never be mistaken for it. No KOMBIT
/// value list names a type for a dueslag, so the project defines one; should the
/// Administrationsmodul accept only types from a value list, configure that value (a UUID is
/// written as `UUIDIdentifikator`, a URN as `URNIdentifikator`).
pub const DUESLAG_OBJEKT_TYPE: &str = "urn:bfo-alive-exporter:dueslag";

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
}

/// The BFO 5.x entity id of a service (`afsend`, `afhent`) on a Beskedfordeler host, as
/// KOMBIT's BFO 5.10 samples spell it: what the STS is asked for a token for. The BFO 2.0
/// form (`http://entityid.kombit.dk/service/<name>/<version>`) is not derived from anything:
/// the service agreement names it, so it is configured.
pub fn service_entity_id(bfo_host: &str, service: Service) -> String {
    format!("http://{bfo_host}/service/{}/1", service.as_str())
}

/// KOMBIT's environments, as `[broker] environment` presets them (ARCHITECTURE.md §2, §6).
///
/// A preset holds only what public sources agree on. Where they disagree or say nothing,
/// the field is `None` with the reason, and the configuration must name the value itself:
/// a guessed production host would fail in ways that look like a broken dueslag.
pub mod environment {
    use super::{AMQPS_PORT, Service, VHOST, service_entity_id};

    /// One environment's endpoints.
    #[derive(Debug, PartialEq, Eq)]
    pub struct Preset {
        /// The value of `[broker] environment`.
        pub name: &'static str,
        /// Host of the Beskedfordeler's AMQP broker (port [`AMQPS_PORT`], vhost [`VHOST`]).
        pub amqp_host: Option<&'static str>,
        /// Host in the BFO 5.x service entity ids ([`service_entity_id`]).
        pub entity_id_host: Option<&'static str>,
        /// Why a host above is `None`: said in the configuration error and the README.
        pub unknown_because: &'static str,
        /// The STS base URL; [`super::sts::ISSUE_PATH`] is appended.
        pub sts_url: &'static str,
    }

    impl Preset {
        /// `amqps://<host>:5671/BF`, when the host is known.
        pub fn amqp_url(&self) -> Option<String> {
            self.amqp_host
                .map(|h| format!("amqps://{h}:{AMQPS_PORT}/{VHOST}"))
        }

        /// The BFO 5.x entity id of `service`, when the host is known.
        pub fn entity_id(&self, service: Service) -> Option<String> {
            self.entity_id_host.map(|h| service_entity_id(h, service))
        }
    }

    /// KOMBIT's external test environment. Broker host and entity ids: KOMBIT's Java
    /// samples for BFO 5.10 and the public Python clients agree. STS: the `n2adgangsstyring`
    /// host that public clients moved to in 2025 (python-serviceplatformen 2.1, May 2025;
    /// the `adgangsstyring.` host of older samples is being retired).
    pub const EKSTERNTEST: Preset = Preset {
        name: "eksterntest",
        amqp_host: Some("beskedfordeler.eksterntest-stoettesystemerne.dk"),
        entity_id_host: Some("beskedfordeler.eksterntest-stoettesystemerne.dk"),
        unknown_because: "",
        sts_url: "https://n2adgangsstyring.eksterntest-stoettesystemerne.dk/runtime",
    };

    /// KOMBIT's production. Only the STS host is agreed on. For the broker, one public
    /// client connects to `beskedfordeler.stoettesystemerne.dk` while another asks the STS
    /// for `http://beskedfordeler.prod-stoettesystemerne.dk/service/afhent/1`, and KOMBIT's
    /// samples leave production to the reader.
    pub const PRODUKTION: Preset = Preset {
        name: "produktion",
        amqp_host: None,
        entity_id_host: None,
        unknown_because: "public sources disagree on the production Beskedfordeler host \
            (beskedfordeler.stoettesystemerne.dk or beskedfordeler.prod-stoettesystemerne.dk), \
            so the preset does not guess; take it from KOMBIT's material for your service \
            agreement",
        sts_url: "https://n2adgangsstyring.stoettesystemerne.dk/runtime",
    };
}

/// KOMBIT STS ("adgangsstyring") REST issue call: every path, JSON field name and URI.
///
/// Request (POST, JSON, mutual TLS with the system certificate):
/// `{ RequestType, AppliesTo: { EndpointReference: { Address } }, TokenType, KeyType,
///    UseKey, Anvenderkontekst: { Cvr } }`.
/// Response: `{ RequestedSecurityToken: { Assertion: <base64 XML> }, Lifetime }`, where
/// `Lifetime` is a string (`MM/DD/YYYY HH:MM:SS`, UTC: the expiry) or an object
/// (`{ Created, Expires }`); it is read only when the assertion has no
/// `Conditions/@NotOnOrAfter`. Response field names are matched case-insensitively as a
/// fallback.
pub mod sts {
    /// Appended to the configured `sts_url`
    /// (e.g. `https://n2adgangsstyring.eksterntest-stoettesystemerne.dk/runtime`).
    pub const ISSUE_PATH: &str = "/api/rest/wstrust/v1/issue";

    pub const REQUEST_TYPE: &str = "RequestType";
    pub const REQUEST_TYPE_ISSUE: &str = "http://docs.oasis-open.org/ws-sx/ws-trust/200512/Issue";
    pub const APPLIES_TO: &str = "AppliesTo";
    pub const ENDPOINT_REFERENCE: &str = "EndpointReference";
    pub const ADDRESS: &str = "Address";
    pub const TOKEN_TYPE: &str = "TokenType";
    pub const TOKEN_TYPE_SAML2: &str =
        "http://docs.oasis-open.org/wss/oasis-wss-saml-token-profile-1.1#SAMLV2.0";
    pub const KEY_TYPE: &str = "KeyType";
    pub const KEY_TYPE_PUBLIC_KEY: &str =
        "http://docs.oasis-open.org/ws-sx/ws-trust/200512/PublicKey";
    /// Base64 of the DER client certificate.
    pub const USE_KEY: &str = "UseKey";
    /// The authority the token is for. Public sources spell it two ways:
    ///
    /// - `Anvenderkontekst`: KOMBIT's Java sample for BFO 5.10, whose STS client uses a model
    ///   (`Anvenderkontekst`, `apiRestWstrustV1IssuePost`) generated from the STS's own REST
    ///   API description; KOMBIT's adgangsstyring administration API uses the same name; so
    ///   does a PHP client on the 2025 `n2adgangsstyring` host (a Nextcloud app for municipal
    ///   organisation data).
    /// - `AnvenderKontekst`: python-serviceplatformen (1.0, 2024, and 2.1+, May 2025, on the
    ///   `n2adgangsstyring` host), its fork q-serviceplatformen, and the PHP library
    ///   itk-dev/serviceplatformen.
    ///
    /// No public text of KOMBIT's STS documentation was found. Clients with either spelling
    /// get tokens from the same host, so the STS evidently reads the name case-insensitively.
    /// We keep the spelling of the STS's generated model, the closest thing to its documented
    /// schema (ARCHITECTURE.md §2); correct it here if KOMBIT's STS documentation says
    /// otherwise.
    pub const ANVENDERKONTEKST: &str = "Anvenderkontekst";
    pub const CVR: &str = "Cvr";

    pub const REQUESTED_SECURITY_TOKEN: &str = "RequestedSecurityToken";
    pub const ASSERTION: &str = "Assertion";
    /// A string (the expiry, [`LIFETIME_STRING_FORMAT`]) or an object with [`EXPIRES`].
    pub const LIFETIME: &str = "Lifetime";
    pub const EXPIRES: &str = "Expires";
    /// The string form of `Lifetime` (and a fallback for `Expires`): `MM/DD/YYYY HH:MM:SS`,
    /// UTC, as python-serviceplatformen reads the `n2adgangsstyring` answer. Times are
    /// otherwise RFC 3339 (xs:dateTime).
    pub const LIFETIME_STRING_FORMAT: &[time::format_description::BorrowedFormatItem<'static>] =
        time::macros::format_description!("[month]/[day]/[year] [hour]:[minute]:[second]");

    /// SAML 2.0 assertion namespace: `Assertion`, `Issuer`, `Conditions`.
    pub const SAML2_NS: &str = "urn:oasis:names:tc:SAML:2.0:assertion";
    pub const SAML_ISSUER: &str = "Issuer";
    pub const SAML_CONDITIONS: &str = "Conditions";
    pub const SAML_NOT_ON_OR_AFTER: &str = "NotOnOrAfter";
    /// `AttributeStatement/Attribute[@Name]/AttributeValue`: where an OIOSAML assertion
    /// names its subject's attributes, among them the CVR it was issued for.
    pub const SAML_ATTRIBUTE: &str = "Attribute";
    pub const SAML_ATTRIBUTE_NAME: &str = "Name";
    pub const SAML_ATTRIBUTE_VALUE: &str = "AttributeValue";
    /// The OIOSAML attribute of the CVR number a token is issued for (the request's
    /// `Anvenderkontekst.Cvr`): what the Beskedfordeler limits a connection's messages to.
    pub const CVR_ATTRIBUTE: &str = "dk:gov:saml:attribute:CvrNumberIdentifier";
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
