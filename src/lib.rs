//! bfo-alive-exporter: probes KOMBIT Beskedfordeler dueslag with AliveBesked round trips.
//!
//! ARCHITECTURE.md (in the repository) explains the protocol, the data flow and the
//! contracts; this is where each part lives.
//!
//! # Layout
//!
//! - Protocol and messages: `protocol` (every wire constant), [`message`] (the XML,
//!   built and parsed by namespace).
//! - Configuration: [`config`] (the TOML file, validated), `shard` (`--shard=i/n`).
//! - The probe: `probe` (one dueslag's loop and arrivals), `matcher` (in-flight table and
//!   classification), `send` (the Afsend retry policy), [`outcome`] (what happened, as
//!   data).
//! - Receiving: `receive::pull` (a consumer per pull dueslag), `receive::push` (the
//!   endpoint the Beskedfordeler POSTs to).
//! - Transports: `transport` (the `Afsender`/`Afhenter` traits; `transport::amqp` the real
//!   protocol on lapin, with `connect` for TLS, PLAIN and EXTERNAL; `transport::sim` the
//!   simulator), `backend` (builds one from a configuration; `backend::municipalities`
//!   the tokens and connections per CVR), `backoff` (reconnect
//!   delays), `token` (SAML tokens: model, STS, file, renewal), `tls`, `secret`.
//! - The simulated Beskedfordeler: `sim` (fault decisions, in-process queues, push
//!   delivery), [`emulator`] (the same core on a RabbitMQ broker), and [`sts_stub`] (a
//!   local STS issuing tokens per CVR, for tests and the benchmark).
//! - Running it: [`server`] (listeners, reload, shutdown), `supervisor` (one loop per
//!   dueslag, reload by diff), `http` (routes), `status` (the status page), `metrics`,
//!   `native` and `exposition` (the contract, native histograms and the protobuf wire
//!   format, and the rendering in the negotiated format), `process` (`process_*` metrics),
//!   `web` (serving each listener within its limits, TLS, `--web.config.file`), `allocator`
//!   (glibc arenas).
//! - Tools: `diagnose` (the `probe` command and `GET /probe`, with the trace and its
//!   hints), `setup` (the abonnements to set up, per dueslag), [`cli`] (flags and
//!   subcommands; `main` only calls it).
//!
//! The public API is what the binary, the benchmark and the integration tests use:
//! [`cli`], [`config`], [`emulator`], [`message`], [`outcome`], [`server`], [`sts_stub`].
pub(crate) mod allocator;
pub(crate) mod backend;
pub(crate) mod backoff;
pub mod cli;
pub mod config;
pub(crate) mod diagnose;
pub mod emulator;
pub(crate) mod exposition;
pub(crate) mod http;
pub(crate) mod matcher;
pub mod message;
pub(crate) mod metrics;
pub(crate) mod native;
pub mod outcome;
pub(crate) mod probe;
pub(crate) mod process;
pub(crate) mod protocol;
pub(crate) mod receive;
pub(crate) mod secret;
pub(crate) mod send;
pub mod server;
pub(crate) mod setup;
pub(crate) mod shard;
pub(crate) mod sim;
pub(crate) mod status;
pub mod sts_stub;
pub(crate) mod supervisor;
#[cfg(test)]
mod testkit;
pub(crate) mod tls;
pub(crate) mod token;
pub(crate) mod transport;
pub(crate) mod web;
