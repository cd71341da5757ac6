//! The daemon's metrics: the snapshot zib-core's [`zib_core::metrics::render`] turns into
//! Prometheus text, served over HTTP ([`http`], `daemon.metrics_listen`) and written for node
//! exporter's textfile collector ([`textfile`], `daemon.metrics_textfile`).

pub mod http;
pub mod textfile;

use zib_core::metrics::RestoreMetrics;
use zib_protocol::RestoreJobStatus;

/// A restore job as the metrics show it.
pub fn restore_metrics(r: &RestoreJobStatus) -> RestoreMetrics {
    RestoreMetrics {
        id: r.id.clone(),
        // A state from a newer record ("unknown") is counted under no state.
        state: r.state.as_str(),
        objects_total: r.objects_total,
        objects_ready: r.objects_ready,
        bytes_received: r.bytes_received,
        bytes_total: r.bytes_total,
    }
}
