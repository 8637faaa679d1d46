//! The composition root: which optional layers (feature `tokio`, feature
//! `metrics`) sit above the core. It makes the default [`SupervisorBuilder`]
//! with their hooks; building a supervisor installs them. Nothing in the core
//! names this file or a layer.

use crate::supervisor::{Layers, SupervisorBuilder};

impl Default for SupervisorBuilder {
    fn default() -> Self {
        SupervisorBuilder::with_layers(Layers {
            #[cfg(feature = "tokio")]
            hand_off: Some(crate::tokio_api::off_runtime),
            #[cfg(feature = "metrics")]
            observer: Some(&crate::metrics::METRICS),
            ..Layers::default()
        })
    }
}
