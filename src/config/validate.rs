//! Validation of a parsed, resolved configuration: every rule of ARCHITECTURE.md §6, each
//! error naming its key, so that a bad file is refused at load (and at reload keeps the old
//! configuration) instead of failing later at run time.

use super::*;

impl Config {
    pub(super) fn validate(&self) -> Result<(), String> {
        if self.broker.is_none() {
            return Err(NO_BACKEND.into());
        }
        if !is_cvr(&self.identity.cvr) {
            return Err(format!(
                "identity.cvr: {:?} is not an 8-digit CVR number",
                self.identity.cvr
            ));
        }
        let b = &self.exporter.roundtrip_buckets;
        if b.is_empty()
            || b.windows(2).any(|w| w[0] >= w[1])
            || b.iter().any(|v| !v.is_finite() || *v <= 0.0)
        {
            return Err(
                "exporter.roundtrip_buckets: must be positive, finite and strictly increasing"
                    .into(),
            );
        }
        if let Some(t) = &self.exporter.objekt_type {
            t.parse::<UnikId>().map_err(|e| {
                format!("exporter.objekt_type: {e}; it is the ObjektType every dueslag's abonnement filters on (default {:?})", protocol::DUESLAG_OBJEKT_TYPE)
            })?;
        }
        if let Some(broker) = &self.broker {
            if broker.backend == BackendKind::Amqp {
                let url = broker.url.as_ref().ok_or_else(|| match broker.environment {
                    Some(env) => format!(
                        "broker.url: required with environment = {:?}: {}; e.g. url = \"amqps://HOST:{}/{}\"",
                        env.preset().name,
                        env.preset().unknown_because,
                        protocol::AMQPS_PORT,
                        protocol::VHOST
                    ),
                    None => "broker.url: required with backend = \"amqp\"".into(),
                })?;
                let parsed = url::Url::parse(&url.0)
                    .map_err(|e| format!("broker.url: {} ({e})", mask_url(&url.0)))?;
                if !matches!(parsed.scheme(), "amqp" | "amqps") {
                    return Err(format!(
                        "broker.url: scheme must be amqp or amqps, not {:?}",
                        parsed.scheme()
                    ));
                }
                if parsed.scheme() == "amqp" && parsed.port() == Some(protocol::AMQPS_PORT) {
                    let mut tls = parsed.clone();
                    let _ = tls.set_scheme("amqps");
                    return Err(format!(
                        "broker.url: {} speaks plain AMQP to port {}, the TLS port; use {}",
                        mask_url(&url.0),
                        protocol::AMQPS_PORT,
                        mask_url(tls.as_str())
                    ));
                }
                let has_certificate = broker
                    .tls
                    .as_ref()
                    .is_some_and(|t| t.cert_file.is_some() || t.pkcs12_file.is_some());
                if parsed.scheme() == "amqps"
                    && !has_certificate
                    && self
                        .token
                        .as_ref()
                        .is_some_and(|t| t.source == TokenSourceKind::File)
                {
                    return Err("broker.tls: token.source = \"file\" over amqps:// needs the system certificate (broker.tls.cert_file and key_file, or pkcs12_file): KOMBIT's broker checks the token and the certificate together".into());
                }
                if broker.auth == AuthKind::External {
                    match &self.token {
                        None => {
                            return Err("token: required with broker.auth = \"external\"".into());
                        }
                        Some(t) if t.source == TokenSourceKind::None => return Err(
                            "token.source: \"none\" cannot be used with broker.auth = \"external\""
                                .into(),
                        ),
                        _ => {}
                    }
                }
            }
            if broker.prefetch == 0 {
                return Err("broker.prefetch: must be at least 1".into());
            }
            let age = broker.max_connection_age;
            if !age.is_zero() && age < Duration::from_secs(1) {
                return Err(format!(
                    "broker.max_connection_age: {} is below 1s; use 0s to never replace connections",
                    humantime::format_duration(age)
                ));
            }
            let hb = broker.heartbeat;
            if hb.subsec_nanos() != 0 || hb.as_secs() > u64::from(u16::MAX) {
                return Err(format!(
                    "broker.heartbeat: {} is not whole seconds up to 65535s (0s takes the broker's)",
                    humantime::format_duration(hb)
                ));
            }
            if let Some(tls) = &broker.tls {
                if tls.cert_file.is_some() != tls.key_file.is_some() {
                    return Err("broker.tls: cert_file and key_file go together".into());
                }
                if tls.pkcs12_file.is_some() && tls.cert_file.is_some() {
                    return Err(
                        "broker.tls: use either cert_file/key_file or pkcs12_file, not both".into(),
                    );
                }
            }
        }
        if let Some(t) = &self.token {
            match t.source {
                TokenSourceKind::Sts => {
                    let environment = self.broker.as_ref().and_then(|b| b.environment);
                    for (key, v) in [
                        ("token.sts_url", &t.sts_url),
                        ("token.afsend_entity_id", &t.afsend_entity_id),
                        ("token.afhent_entity_id", &t.afhent_entity_id),
                    ] {
                        if v.is_some() {
                            continue;
                        }
                        return Err(match environment {
                            Some(env) => format!(
                                "{key}: required with environment = {:?}: {}",
                                env.preset().name,
                                env.preset().unknown_because
                            ),
                            None => format!("{key}: required with token.source = \"sts\""),
                        });
                    }
                    if let Some(u) = &t.sts_url {
                        crate::token::sts_issue_url(u).map_err(|e| format!("token.{e}"))?;
                    }
                }
                TokenSourceKind::File if t.file.is_none() => {
                    return Err("token.file: required with token.source = \"file\"".into());
                }
                _ => {}
            }
            if !(t.renew_at > 0.0 && t.renew_at < 1.0) {
                return Err("token.renew_at: must be between 0 and 1".into());
            }
            if !(0.0..=0.5).contains(&t.renew_jitter) {
                return Err("token.renew_jitter: must be between 0 and 0.5".into());
            }
            if t.sts_concurrency == 0 {
                return Err("token.sts_concurrency: must be at least 1".into());
            }
            if let (TokenSourceKind::File, Some(file)) = (t.source, &t.file) {
                let cvrs = self.municipalities();
                let templated = file.to_string_lossy().contains(CVR_PLACEHOLDER);
                if cvrs.len() > 1 && !templated {
                    let list: Vec<&str> = cvrs.keys().map(String::as_str).take(5).collect();
                    return Err(format!(
                        "token.file: the dueslag belong to {} municipalities ({}{}), and a token is issued for one CVR: put {CVR_PLACEHOLDER} in the path (e.g. \"/run/tokens/{CVR_PLACEHOLDER}.xml\"), which each dueslag's CVR replaces",
                        cvrs.len(),
                        list.join(", "),
                        if cvrs.len() > 5 { ", ..." } else { "" }
                    ));
                }
            }
        }
        let h = &self.http;
        for (key, d) in [
            ("header_timeout", h.header_timeout),
            ("body_timeout", h.body_timeout),
            ("idle_timeout", h.idle_timeout),
            ("tls_handshake_timeout", h.tls_handshake_timeout),
        ] {
            if d.is_zero() {
                return Err(format!("http.{key}: must be > 0"));
            }
        }
        if h.max_connections == 0 || h.max_push_requests == 0 {
            return Err("http.max_connections, http.max_push_requests: must be >= 1".into());
        }
        if self.push.tls.is_some() && self.push.listen.is_none() {
            return Err("push.tls: needs push.listen (TLS applies to the push listener; the main listener's TLS comes from --web.config.file)".into());
        }
        if let Some(u) = &self.push.external_url {
            let ok = url::Url::parse(u).is_ok_and(|p| {
                p.scheme() == "https"
                    && p.host_str().is_some()
                    && p.query().is_none()
                    && p.fragment().is_none()
            });
            if !ok {
                return Err(format!(
                    "push.external_url: {u:?} is not an https:// URL; it is the base the Beskedfordeler reaches the push endpoint at (over HTTPS), e.g. \"https://alive.example.dk\""
                ));
            }
        }
        let d = &self.defaults;
        for (key, v) in [
            ("defaults.interval", d.interval),
            ("defaults.timeout", d.timeout),
            ("defaults.send_timeout", d.send_timeout),
        ] {
            if v.is_zero() {
                return Err(format!("{key}: must be more than 0s"));
            }
        }
        if d.send_attempts == 0 {
            return Err("defaults.send_attempts: must be at least 1".into());
        }
        if !(0.0..=0.5).contains(&d.jitter) {
            return Err("defaults.jitter: must be between 0 and 0.5".into());
        }
        if d.max_inflight == 0 {
            return Err("defaults.max_inflight: must be at least 1".into());
        }
        if let Some(b) = &self.broker
            && usize::from(b.prefetch) <= d.max_held
        {
            return Err(format!(
                "broker.prefetch: must be larger than defaults.max_held ({}) so Alive messages keep flowing past held ones",
                d.max_held
            ));
        }
        let mut names = HashSet::new();
        let mut ids: HashMap<Uuid, &str> = HashMap::new();
        for (i, ds) in self.dueslag.iter().enumerate() {
            let key = format!("dueslag[{i}]");
            if ds.name.is_empty()
                || !ds
                    .name
                    .bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-')
            {
                return Err(format!("{key}.name: {:?} must match [a-z0-9_-]+", ds.name));
            }
            if !names.insert(ds.name.as_str()) {
                return Err(format!("{key}.name: {:?} is configured twice", ds.name));
            }
            let key = format!("dueslag.{}", ds.name);
            match ds.mode {
                Mode::Pull if ds.queue.as_deref().is_none_or(str::is_empty) => {
                    return Err(format!(
                        "{key}.queue: required for a pull dueslag (the dueslag UUID)"
                    ));
                }
                Mode::Push if ds.queue.is_some() => {
                    return Err(format!("{key}.queue: only pull dueslag have a queue"));
                }
                Mode::Push if ds.unexpected.is_some() => {
                    return Err(format!(
                        "{key}.unexpected: only for pull dueslag; push answers non-20"
                    ));
                }
                _ => {}
            }
            let id = match (&ds.id, ds.mode) {
                (Some(id), _) => id.parse::<Uuid>().map_err(|_| {
                    format!("{key}.id: {id:?} is not a UUID; it is the dueslag's UUID from the Administrationsmodul")
                })?,
                (None, Mode::Push) => {
                    return Err(format!(
                        "{key}.id: required for a push dueslag: its UUID from the Administrationsmodul, which every Alive message carries as RelateretObjekt so that its abonnement can select them"
                    ));
                }
                (None, Mode::Pull) => {
                    let queue = ds.queue.as_deref().unwrap_or_default();
                    queue.parse::<Uuid>().map_err(|_| {
                        format!("{key}.id: required, as queue {queue:?} is not a UUID: set id to the dueslag's UUID from the Administrationsmodul, which every Alive message carries as RelateretObjekt (a pull dueslag's id defaults to its queue, which the Beskedfordeler names by that UUID)")
                    })?
                }
            };
            if let Some(other) = ids.insert(id, &ds.name) {
                return Err(format!(
                    "{key}.id: {id} is also the id of dueslag {other:?}; each dueslag has its own UUID, and its abonnement selects the Alive messages addressed to it"
                ));
            }
            for (k, v) in [("interval", ds.interval), ("timeout", ds.timeout)] {
                if v.is_some_and(|v| v.is_zero()) {
                    return Err(format!("{key}.{k}: must be more than 0s"));
                }
            }
            if let Some(cvr) = &ds.cvr
                && !is_cvr(cvr)
            {
                return Err(format!(
                    "{key}.cvr: {cvr:?} is not an 8-digit CVR number (the municipality this dueslag belongs to)"
                ));
            }
            validate_labels(&key, ds, self.dueslag.first())?;
        }
        for (name, f) in &self.sim.faults {
            let key = format!("sim.faults.{name}");
            if !names.contains(name.as_str()) {
                return Err(format!("{key}: no dueslag is named {name:?}"));
            }
            for (k, v) in [
                ("loss", f.loss),
                ("duplicate", f.duplicate),
                ("reorder", f.reorder),
                ("reject", f.reject),
                ("no_reply", f.no_reply),
                ("unroutable", f.unroutable),
            ] {
                if !(0.0..=1.0).contains(&v) {
                    return Err(format!("{key}.{k}: {v} is not between 0 and 1"));
                }
            }
            if f.reject_code == protocol::status::OK {
                return Err(format!(
                    "{key}.reject_code: 20 is acceptance, not a rejection"
                ));
            }
        }
        if !self.sim.faults.is_empty() && self.backend() != BackendKind::Sim {
            return Err("sim.faults: only with [broker] backend = \"sim\"".into());
        }
        for name in self.sim.abonnement.keys() {
            if !names.contains(name.as_str()) {
                return Err(format!(
                    "sim.abonnement.{name}: no dueslag is named {name:?}"
                ));
            }
        }
        if !self.sim.abonnement.is_empty() && self.backend() != BackendKind::Sim {
            return Err("sim.abonnement: only with [broker] backend = \"sim\" (a real Beskedfordeler's abonnements are set up in its Administrationsmodul: see `bfo-alive-exporter setup`)".into());
        }
        if let Some(base) = &self.sim.push_base {
            if self.backend() != BackendKind::Sim {
                return Err("sim.push_base: only with [broker] backend = \"sim\"".into());
            }
            if !(base.starts_with("http://") || base.starts_with("https://")) {
                return Err(format!(
                    "sim.push_base: {base:?} is not an http:// or https:// URL"
                ));
            }
        }
        Ok(())
    }
}

/// An 8-digit CVR number.
pub(super) fn is_cvr(cvr: &str) -> bool {
    cvr.len() == 8 && cvr.bytes().all(|b| b.is_ascii_digit())
}

/// Label names the exporter's own series use: a static label must not shadow them.
pub const RESERVED_LABELS: &[&str] = &[
    "dueslag",
    "mode",
    "result",
    "reason",
    "kind",
    "cvr",
    "connection",
    "service",
    "use",
    "listener",
    "backend",
    "shard",
    "shards",
    "version",
    "revision",
    "besked_id",
    "le",
    "quantile",
    "job",
    "instance",
];

/// A Prometheus label name: `[a-zA-Z_][a-zA-Z0-9_]*`, not starting with `__` (reserved).
fn is_label_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !name.starts_with("__")
}

/// The static labels of one dueslag: valid names, none of the exporter's own, a value, and
/// the same keys as the first dueslag (every series of a family has the same label names,
/// so that dashboards and alert routing can rely on them).
fn validate_labels(
    key: &str,
    ds: &DueslagConfig,
    first: Option<&DueslagConfig>,
) -> Result<(), String> {
    for (name, value) in &ds.labels {
        if !is_label_name(name) {
            return Err(format!(
                "{key}.labels.{name}: not a Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*, not starting with __)"
            ));
        }
        if RESERVED_LABELS.contains(&name.as_str()) {
            return Err(format!(
                "{key}.labels.{name}: the exporter's own series use the label {name:?}; choose another name"
            ));
        }
        if value.is_empty() {
            return Err(format!(
                "{key}.labels.{name}: empty; a label without a value is no label"
            ));
        }
    }
    if let Some(first) = first {
        let keys = |d: &DueslagConfig| d.labels.keys().cloned().collect::<Vec<_>>();
        let (mine, theirs) = (keys(ds), keys(first));
        if mine != theirs {
            return Err(format!(
                "{key}.labels: has keys [{}], but dueslag {:?} has [{}]; every dueslag needs the same label keys",
                mine.join(", "),
                first.name,
                theirs.join(", ")
            ));
        }
    }
    Ok(())
}
