//! `bfo-alive-exporter setup`: what to set up in KOMBIT's Administrationsmodul for a
//! configuration (task M004 of the AliveBesked integration), per dueslag: the abonnement on
//! the Alive beskedtype with the RelateretObjekt filter that lets in only the Alive messages
//! addressed to that dueslag (ARCHITECTURE.md §2, routing by abonnement), and for a push
//! dueslag the endpoint to register. Text to paste from, or JSON for a pipeline; grouped by
//! municipality (CVR), as each municipality's abonnements are made under its own service
//! agreement.

use serde::Serialize;

use crate::config::{Config, Mode};
use crate::message::{RelateretObjekt, UnikId};
use crate::protocol::ALIVE_BESKEDTYPE;

/// What stands for the host in a push endpoint when `[push] external_url` is not set.
pub const EXTERNAL_URL_PLACEHOLDER: &str = "https://EXTERNAL-HOST";

/// The set-up of every configured dueslag (`--output json`).
#[derive(Debug, Serialize, PartialEq)]
pub struct Setup {
    /// The Alive beskedtype every abonnement selects.
    pub beskedtype: String,
    pub dueslag: Vec<DueslagSetup>,
}

/// One dueslag: where it is, and its abonnement.
#[derive(Debug, Serialize, PartialEq)]
pub struct DueslagSetup {
    pub name: String,
    pub mode: &'static str,
    /// The municipality the dueslag belongs to, whose service agreement and token it uses.
    pub cvr: String,
    /// The dueslag's UUID.
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// Push: the endpoint to register; `null` until `[push] external_url` says where the
    /// Beskedfordeler reaches the exporter.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub push_endpoint: Option<Option<String>>,
    /// Push: the endpoint's path, below `[push] external_url`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub push_path: Option<String>,
    pub abonnement: AbonnementSetup,
}

/// An abonnement as the Administrationsmodul asks for it.
#[derive(Debug, Serialize, PartialEq)]
pub struct AbonnementSetup {
    pub beskedtype: String,
    pub relateret_objekt: RelateretObjektSetup,
}

/// The RelateretObjekt filter: each id with the element it is written in.
#[derive(Debug, Serialize, PartialEq)]
pub struct RelateretObjektSetup {
    pub objekt_id: String,
    pub objekt_id_element: &'static str,
    pub objekt_type: String,
    pub objekt_type_element: &'static str,
}

impl RelateretObjektSetup {
    fn new(r: &RelateretObjekt) -> Self {
        RelateretObjektSetup {
            objekt_id: r.objekt_id.to_string(),
            objekt_id_element: r.objekt_id.element(),
            objekt_type: r.objekt_type.to_string(),
            objekt_type_element: r.objekt_type.element(),
        }
    }
}

/// The set-up a configuration needs.
pub fn setup(config: &Config) -> Setup {
    let objekt_type: UnikId = config.objekt_type();
    let base = config
        .push
        .external_url
        .as_deref()
        .map(|u| u.trim_end_matches('/').to_string());
    let mut specs = config.dueslag_specs();
    // By municipality, each in the file's order.
    specs.sort_by(|a, b| a.cvr.cmp(&b.cvr));
    let dueslag = specs
        .into_iter()
        .map(|s| {
            let path = (s.mode == Mode::Push).then(|| format!("/push/{}", s.name));
            DueslagSetup {
                cvr: s.cvr.clone(),
                id: s.id.to_string(),
                mode: s.mode.as_str(),
                queue: s.queue.clone(),
                push_endpoint: path
                    .as_ref()
                    .map(|p| base.as_ref().map(|b| format!("{b}{p}"))),
                push_path: path,
                abonnement: AbonnementSetup {
                    beskedtype: ALIVE_BESKEDTYPE.into(),
                    relateret_objekt: RelateretObjektSetup::new(&RelateretObjekt::dueslag(
                        s.id,
                        &objekt_type,
                    )),
                },
                name: s.name,
            }
        })
        .collect();
    Setup {
        beskedtype: ALIVE_BESKEDTYPE.into(),
        dueslag,
    }
}

impl Setup {
    /// Text to paste from: one block per dueslag, one value per line.
    pub fn render_text(&self, file: &str) -> String {
        let mut out = format!(
            "# The Alive abonnements of {file}: {} dueslag.\n\
             # In KOMBIT's Administrationsmodul (AliveBesked task M004), give each dueslag an\n\
             # abonnement on the Alive beskedtype with the RelateretObjekt filter below, so that\n\
             # it receives only the Alive messages addressed to it.\n",
            self.dueslag.len()
        );
        let mut placeholder = false;
        let mut cvr = None;
        for d in &self.dueslag {
            if cvr != Some(&d.cvr) {
                cvr = Some(&d.cvr);
                let n = self.dueslag.iter().filter(|o| o.cvr == d.cvr).count();
                out += &format!(
                    "\n## municipality CVR {} ({n} dueslag): set up under its service agreement; its\n\
                     ## messages carry TilladtModtager urn:oio:cvr-nr:{} and go under its token\n",
                    d.cvr, d.cvr
                );
            }
            let r = &d.abonnement.relateret_objekt;
            out += &format!("\ndueslag {} ({})\n", d.name, d.mode);
            out += &format!("  dueslag UUID      {}\n", d.id);
            if let Some(q) = &d.queue {
                out += &format!("  queue             {q}\n");
            }
            if let (Some(endpoint), Some(path)) = (&d.push_endpoint, &d.push_path) {
                let url = endpoint.clone().unwrap_or_else(|| {
                    placeholder = true;
                    format!("{EXTERNAL_URL_PLACEHOLDER}{path}")
                });
                out += &format!("  push endpoint     {url}\n");
            }
            out += "  abonnement\n";
            out += &format!("    Beskedtype      {} (Alive)\n", d.abonnement.beskedtype);
            out += "    RelateretObjekt\n";
            out += &format!(
                "      ObjektId      {} ({})\n",
                r.objekt_id, r.objekt_id_element
            );
            out += &format!(
                "      ObjektType    {} ({})\n",
                r.objekt_type, r.objekt_type_element
            );
        }
        if placeholder {
            out += &format!(
                "\n# {EXTERNAL_URL_PLACEHOLDER} is a placeholder: set [push] external_url to the https:// base\n\
                 # at which the Beskedfordeler reaches the push listener, and run setup again.\n"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::config::tests::{MINIMAL, PUSH};

    #[test]
    fn every_dueslag_gets_its_filter_and_push_its_endpoint() {
        let config = format!("{MINIMAL}{PUSH}");
        let c = Config::parse(&config, "c.toml").unwrap();
        let s = setup(&c);
        let text = s.render_text("c.toml");
        for line in [
            "dueslag a (pull)",
            "  dueslag UUID      c82e55b4-d9aa-4c15-90cf-f4fbc0f85037",
            "    Beskedtype      f7e84a06-c47e-42e8-a864-fb4095d7f520 (Alive)",
            "      ObjektId      c82e55b4-d9aa-4c15-90cf-f4fbc0f85037 (UUIDIdentifikator)",
            "      ObjektType    urn:bfo-alive-exporter:dueslag (URNIdentifikator)",
            "  push endpoint     https://EXTERNAL-HOST/push/h",
            "      ObjektId      6d5a5d9e-3f0b-4a55-9d6e-0c1f2b3a4d5e (UUIDIdentifikator)",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "no line {line:?} in\n{text}"
            );
        }
        assert!(text.contains("is a placeholder: set [push] external_url"));

        let with = config.replace(
            "[broker]",
            "[exporter]\nobjekt_type = \"e2b5f4a0-1c3d-4e5f-8a9b-0c1d2e3f4a5b\"\n\n[push]\nexternal_url = \"https://alive.example.dk/bfo/\"\n\n[broker]",
        );
        let s = setup(&Config::parse(&with, "c.toml").unwrap());
        let text = s.render_text("c.toml");
        assert!(
            text.contains("  push endpoint     https://alive.example.dk/bfo/push/h\n")
                && text.contains(
                    "      ObjektType    e2b5f4a0-1c3d-4e5f-8a9b-0c1d2e3f4a5b (UUIDIdentifikator)"
                )
                && !text.contains("placeholder"),
            "{text}"
        );
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(
            json["dueslag"][1]["push_endpoint"],
            "https://alive.example.dk/bfo/push/h"
        );
        assert!(json["dueslag"][0].get("push_endpoint").is_none());
    }
}
