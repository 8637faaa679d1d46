//! The composition root: which optional layers (feature `tokio`, feature
//! `metrics`) sit above the core. It makes the default [`SupervisorBuilder`]
//! with their hooks; building a supervisor installs them. Nothing in the core
//! names this file or a layer.

use crate::blocking::HandOff;
use crate::observe::Observer;
use crate::supervisor::{Layers, SupervisorBuilder};

/// The tokio layer's hook: drops in a runtime stop workers on its blocking pool.
#[cfg(feature = "tokio")]
const HAND_OFF: Option<HandOff> = Some(crate::tokio_api::off_runtime);
/// No async layer: drops stop workers on the dropping thread.
#[cfg(not(feature = "tokio"))]
const HAND_OFF: Option<HandOff> = None;

/// The metrics layer's observer.
#[cfg(feature = "metrics")]
const OBSERVER: Option<&'static dyn Observer> = Some(&crate::metrics::Metrics);
/// No observing layer: `tracing` only.
#[cfg(not(feature = "metrics"))]
const OBSERVER: Option<&'static dyn Observer> = None;

impl Default for SupervisorBuilder {
    fn default() -> Self {
        SupervisorBuilder::with_layers(Layers {
            hand_off: HAND_OFF,
            observer: OBSERVER,
        })
    }
}
