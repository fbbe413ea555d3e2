//! Filling in what a file leaves out, once, before validation: the `[broker] environment`
//! preset (KOMBIT's endpoints, ARCHITECTURE.md §2) and the default virtual host; and the
//! summary of what was filled in that `--config.check` prints.

use super::*;

impl Config {
    /// Fills what the file leaves out, once, before validation: the `[broker] environment`
    /// preset (for keys the file does not set) and the virtual host of a URL without one.
    /// Every filled value is recorded in [`Config::resolved`].
    pub(super) fn resolve(&mut self) -> Result<(), String> {
        let Config {
            broker,
            token,
            resolved,
            ..
        } = self;
        let Some(broker) = broker.as_mut() else {
            return Ok(());
        };
        if broker.backend != BackendKind::Amqp {
            if broker.environment.is_some() {
                return Err("broker.environment: presets a real Beskedfordeler; it has no meaning with backend = \"sim\"".into());
            }
            return Ok(());
        }
        if let Some(env) = broker.environment {
            let preset = env.preset();
            let from = format!("environment = {:?}", preset.name);
            let mut fill = |slot: &mut Option<String>, key: &'static str, value: Option<String>| {
                if slot.is_none()
                    && let Some(value) = value
                {
                    // Preset values hold no secrets.
                    resolved.push(Resolved {
                        key,
                        value: value.clone(),
                        from: from.clone(),
                    });
                    *slot = Some(value);
                }
            };
            let mut url = broker.url.take().map(|u| u.0);
            fill(&mut url, "broker.url", preset.amqp_url());
            broker.url = url.map(BrokerUrl);
            if let Some(t) = token.as_mut().filter(|t| t.source == TokenSourceKind::Sts) {
                fill(&mut t.sts_url, "token.sts_url", Some(preset.sts_url.into()));
                for (slot, key, service) in [
                    (
                        &mut t.afsend_entity_id,
                        "token.afsend_entity_id",
                        Service::Afsend,
                    ),
                    (
                        &mut t.afhent_entity_id,
                        "token.afhent_entity_id",
                        Service::Afhent,
                    ),
                ] {
                    fill(slot, key, preset.entity_id(service));
                }
            }
        }
        if let Some(url) = broker.url.as_mut()
            && let Ok(mut parsed) = url::Url::parse(&url.0)
            && matches!(parsed.scheme(), "amqp" | "amqps")
            && matches!(parsed.path(), "" | "/")
        {
            parsed.set_path(&format!("/{}", protocol::VHOST));
            url.0 = parsed.to_string();
            resolved.push(Resolved {
                key: "broker.url",
                value: mask_url(&url.0),
                from: format!("the URL names no virtual host: {}", protocol::VHOST),
            });
        }
        Ok(())
    }

    /// What `--config.check` prints: the endpoints in effect, where each came from when the
    /// file did not say it, and the services in use. Passwords are masked; a token is never
    /// part of a configuration.
    pub fn resolution_summary(&self) -> Vec<String> {
        let from = |key: &str| {
            self.resolved
                .iter()
                .rev()
                .find(|r| r.key == key)
                .map_or(String::new(), |r| format!(" ({})", r.from))
        };
        let mut lines = Vec::new();
        let Some(broker) = self
            .broker
            .as_ref()
            .filter(|b| b.backend == BackendKind::Amqp)
        else {
            return lines;
        };
        if let Some(url) = &broker.url {
            lines.push(format!(
                "broker.url = {}{}",
                mask_url(&url.0),
                from("broker.url")
            ));
        }
        if let Some(t) = self
            .token
            .as_ref()
            .filter(|t| t.source == TokenSourceKind::Sts)
        {
            if let Some(u) = &t.sts_url {
                let issue = crate::token::sts_issue_url(u)
                    .map_or(String::new(), |i| format!("; tokens from POST {i}"));
                lines.push(format!(
                    "token.sts_url = {u}{}{issue}",
                    from("token.sts_url")
                ));
            }
            for (key, v) in [
                ("token.afsend_entity_id", &t.afsend_entity_id),
                ("token.afhent_entity_id", &t.afhent_entity_id),
            ] {
                if let Some(v) = v {
                    lines.push(format!("{key} = {v}{}", from(key)));
                }
            }
        }
        let services = self.services();
        let names: Vec<&str> = services.iter().map(|s| s.as_str()).collect();
        let note = if services.contains(&Service::Afhent) {
            ""
        } else {
            " (no pull dueslag: no afhent connection, no afhent token)"
        };
        lines.push(format!("services: {}{note}", names.join(", ")));
        let municipalities = self.municipalities();
        if municipalities.len() > 1 || !municipalities.contains_key(&self.identity.cvr) {
            let held: usize = municipalities.values().map(Vec::len).sum();
            lines.push(format!(
                "municipalities: {} (CVR), {held} tokens and {held} connections (one per CVR and service in use)",
                municipalities.len()
            ));
        }
        lines
    }
}
