//! Builds the transports a configuration asks for: the in-process simulator, or the AMQP
//! connections to a Beskedfordeler (or any RabbitMQ).

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::{BackendKind, Config, DueslagSpec};
use crate::metrics::{Metrics, Role};
use crate::sim::{self, LocalSink, Simulator};
use crate::transport::Backend;
use crate::transport::sim::{SimAfhenter, SimAfsender};

/// A backend and what reload needs to reconfigure it.
pub struct Built {
    pub backend: Backend,
    /// Present for the `sim` backend: the simulator and its queues.
    pub sim: Option<(Arc<Simulator>, Arc<LocalSink>)>,
}

impl Built {
    /// Tells the simulator about the dueslag (a real Beskedfordeler is configured elsewhere).
    pub fn set_dueslag(&self, specs: &[DueslagSpec], push_base: &str) {
        if let Some((sim, _)) = &self.sim {
            sim.set_topology(sim::targets(specs, push_base));
        }
    }
}

/// Builds the backend of `config`.
pub async fn build(config: &Config, metrics: &Metrics) -> Result<Built, String> {
    let stop = CancellationToken::new();
    match config.backend() {
        BackendKind::Sim => {
            let sink = LocalSink::new(stop.clone());
            let simulator = Simulator::new(sink.clone(), stop.clone());
            let prefetch = config.broker.as_ref().map_or(20, |b| b.prefetch);
            for role in Role::ALL {
                metrics.set_connection_up(role, true);
            }
            Ok(Built {
                backend: Backend {
                    afsender: Arc::new(SimAfsender {
                        sim: simulator.clone(),
                    }),
                    afhenter: Arc::new(SimAfhenter {
                        sim: simulator.clone(),
                        sink: sink.clone(),
                        prefetch: usize::from(prefetch),
                    }),
                    stop,
                },
                sim: Some((simulator, sink)),
            })
        }
        BackendKind::Amqp => Err("the amqp backend is not available in this build".to_string()),
    }
}
