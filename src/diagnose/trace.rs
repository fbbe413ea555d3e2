//! A step-by-step trace of a hand-made probe: what was done, what came back, and — for a
//! failed step — what it means and what to check. Printed as text or JSON by the `probe`
//! command and by `GET /probe?debug=true`. Never holds a secret.

use std::fmt::Write;
use std::time::Duration;

use serde::Serialize;

/// One step of a trace.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Step {
    pub step: String,
    pub ok: bool,
    pub detail: String,
    /// For a failed step: the likely causes, in plain words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub millis: Option<f64>,
}

/// The steps so far.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Trace {
    pub steps: Vec<Step>,
}

impl Trace {
    pub fn ok(&mut self, step: &str, detail: impl Into<String>) {
        self.push(step, true, detail.into(), None, None);
    }

    pub fn ok_timed(&mut self, step: &str, detail: impl Into<String>, took: Duration) {
        self.push(step, true, detail.into(), None, Some(took));
    }

    pub fn fail(&mut self, step: &str, detail: impl Into<String>, hint: impl Into<String>) {
        self.push(step, false, detail.into(), Some(hint.into()), None);
    }

    fn push(
        &mut self,
        step: &str,
        ok: bool,
        detail: String,
        hint: Option<String>,
        took: Option<Duration>,
    ) {
        self.steps.push(Step {
            step: step.to_string(),
            ok,
            detail,
            hint,
            millis: took.map(|d| (d.as_secs_f64() * 1000.0 * 10.0).round() / 10.0),
        });
    }

    #[cfg(test)]
    /// True when no step failed.
    pub fn all_ok(&self) -> bool {
        self.steps.iter().all(|s| s.ok)
    }

    /// Human-readable lines.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        for s in &self.steps {
            let mark = if s.ok { "ok  " } else { "FAIL" };
            let took = s.millis.map(|m| format!(" ({m} ms)")).unwrap_or_default();
            let _ = writeln!(out, "[{mark}] {:<22} {}{took}", s.step, s.detail);
            if let Some(h) = &s.hint {
                let _ = writeln!(out, "       what to check: {h}");
            }
        }
        out
    }
}

/// Plain-words explanations of failures, by what failed.
pub mod hints {
    pub const TOKEN_41: &str = "the Beskedfordeler refused the token (StatusKode 41): check that the token is issued for the Afsend service entity id and not expired, and that the service agreement (serviceaftale) for Afsend is in place for this anvendersystem in the administration module";
    pub const REJECTED: &str = "the Beskedfordeler refused the message: check the sender identity (identity.anvendersystem and identity.cvr) and the service agreement for the Alive beskedtype";
    pub const UNROUTABLE: &str = "the broker returned the message as unroutable: the exchange AFSEND_BESKED_EXCHANGE has no binding in this virtual host, or the user may not publish to it — check broker.url (host and virtual host BF) and the permissions";
    pub const SEND_TIMEOUT: &str = "the Beskedfordeler did not answer with a StandardRetur in time: check that the Afsend service is running for this environment and that direct reply-to (amq.rabbitmq.reply-to) is allowed";
    pub const INVALID_REPLY: &str = "something answered the message, but not with a StandardRetur the exporter can read (a StandardRetur, an AfsendBeskedOutput holding one, or an element holding a StatusKode), so it may well have been accepted: compare the reply's first bytes above with those; check that broker.url is the Beskedfordeler's Afsend (virtual host BF) and not another service or a proxy answering on reply-to";
    pub const CONNECTION: &str = "no connection to the broker: check broker.url (host, port 5671, virtual host BF), the firewall, the CA and the client certificate";
    pub const NOTHING_PULL: &str = "the message was accepted but never reached the dueslag: check the subscription (abonnement) on the Alive beskedtype for this dueslag and its RelateretObjekt filter (ObjektId = the dueslag UUID: `bfo-alive-exporter setup` prints it), and the dueslag set-up (queue name = the dueslag UUID) in the administration module";
    pub const NOTHING_PUSH: &str = "the message was accepted but was never pushed here: check the push endpoint registration of the dueslag in the administration module (URL ending in /push/<name>, the server certificate), that the Beskedfordeler can reach this listener, and the subscription (abonnement) on the Alive beskedtype with its RelateretObjekt filter (`bfo-alive-exporter setup` prints both)";
    pub const MISROUTED: &str = "this dueslag's abonnement does not filter on RelateretObjekt, so it receives the Alive messages addressed to other dueslag too (each loop then counts the others' as misrouted, and traffic grows with the square of the dueslag count): in the administration module, add to its abonnement on the Alive beskedtype the RelateretObjekt filter that `bfo-alive-exporter setup` prints (ObjektId = this dueslag's UUID, ObjektType as configured)";
    pub const TOKEN_FETCH: &str = "no token could be obtained: check token.sts_url, the client certificate (it must be the one registered for the anvendersystem), the service entity ids, and that the authority's CVR has a service agreement";
    pub const TLS: &str = "the TLS handshake failed: check broker.tls.ca_file (the broker's CA), the client certificate and key (and that it is not expired), and that the host name matches the broker's certificate";
    pub const AMQP: &str = "the broker refused the AMQP connection: with auth = \"external\" check the token and the service agreement; with \"plain\" the user, password and the virtual host's permissions";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_json() {
        let mut t = Trace::default();
        t.ok_timed("publish", "StandardRetur 20", Duration::from_micros(1500));
        t.fail("delivery", "nothing arrived within 2s", hints::NOTHING_PULL);
        assert!(!t.all_ok());
        let text = t.render_text();
        assert!(
            text.contains("[ok  ] publish")
                && text.contains("(1.5 ms)")
                && text.contains("what to check: the message was accepted")
        );
        let json = serde_json::to_value(&t).unwrap();
        assert_eq!(json["steps"][1]["ok"], false);
        assert!(json["steps"][0].get("hint").is_none());
    }
}
