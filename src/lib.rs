//! bfo-alive-exporter: probes KOMBIT Beskedfordeler dueslag with AliveBesked round trips.
pub mod message;
pub mod protocol;
pub mod secret;
