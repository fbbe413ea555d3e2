//! bfo-alive-exporter: probes KOMBIT Beskedfordeler dueslag with AliveBesked round trips.
pub mod secret;
