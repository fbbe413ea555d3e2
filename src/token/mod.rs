//! SAML tokens for the BFO: one fresh token per BFO service, from the KOMBIT STS over
//! mutual TLS, from a file, or none.
//!
//! A token is the decoded SAML assertion XML. It is sent as the SASL EXTERNAL response
//! ([`crate::transport::amqp::connect`]) and in the `token` header of each Afsend message.
//! Its text lives only in a [`crate::secret::Secret`]; nothing here logs it or shows it in
//! `Debug`.
//!
//! One job per file, so each can change alone:
//! - `model`: the token, reading its assertion, and the [`TokenSlot`] the AMQP side reads;
//! - `sts`: the STS client (wire names in [`crate::protocol::sts`]);
//! - `file`: reading a token file;
//! - `schedule`: when to fetch next, as pure functions of the time passed in;
//! - `manager`: the [`TokenManager`] tasks that carry out the schedule on tokio's clock.
//!
//! Other code uses the re-exports below, not the files.

mod file;
mod manager;
mod model;
mod schedule;
mod sts;
#[cfg(test)]
pub(crate) mod testutil;

pub use manager::{TokenCallbacks, TokenManager, TokenSource};
pub use model::{Token, TokenSlot};
pub use schedule::TokenManagerConfig;
pub use sts::{StsClient, StsConfig, sts_issue_url};
