//! bfo-alive-exporter: probes KOMBIT Beskedfordeler dueslag with AliveBesked round trips.
pub mod config;
pub mod matcher;
pub mod message;
pub mod metrics;
pub mod outcome;
pub mod process;
pub mod protocol;
pub mod secret;
pub mod send;
pub mod sim;
pub mod transport;
