//! Self-metrics: what the daemon took in, holds, sent and ran, as
//! OpenMetrics text (prometheus-client's encoder), for a Prometheus scrape
//! of `metrics_listen` and for `telemctl metrics`. Every value is read at
//! scrape time from the counters the daemon keeps anyway (the ones
//! `telemctl status` and `probe list` show), so nothing here can drift
//! from them and a scrape costs nothing between scrapes.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use telem_core::control::{IngestCounts, ProbeInfo, ProbeState, Status};

/// The exposition formats a scraper may ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0 text (what Prometheus asks for first).
    OpenMetrics,
    /// Prometheus text 0.0.4 (what older tools and `promtool` read).
    PrometheusText,
}

impl Format {
    /// The format an `Accept` header asks for: OpenMetrics when it names
    /// it, else the Prometheus text format every scraper reads.
    pub fn for_accept(accept: Option<&str>) -> Format {
        if accept.is_some_and(|a| a.contains("application/openmetrics-text")) {
            Format::OpenMetrics
        } else {
            Format::PrometheusText
        }
    }

    /// Its `Content-Type`.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::PrometheusText => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// What the crash worker did since start.
#[derive(Clone, Copy, Debug, Default)]
pub struct CrashTally {
    /// Crashes reported (records sent).
    pub reported: u64,
    /// Repeats, and crashes over the host's limits, held back (kept in the
    /// crash history, not sent).
    pub held_back: u64,
    /// Crashes every probe failed on (an error record sent instead).
    pub failed: u64,
    /// Crashes waiting in the inbox.
    pub waiting: u64,
}

/// Everything a scrape shows, read at one moment.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// What `telemctl status` shows.
    pub status: Status,
    /// Records of native clients.
    pub native: IngestCounts,
    /// Records of sandboxed probes.
    pub probes_ingest: IngestCounts,
    /// The loaded probes and their counters.
    pub probes: Vec<ProbeInfo>,
    /// Bytes of the delivery journal file.
    pub journal_bytes: u64,
    /// The crash worker's tally.
    pub crashes: CrashTally,
    /// Unix time of the snapshot.
    pub now: u64,
}

type Labels = Vec<(&'static str, String)>;

fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)
}

fn counters(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    items: &[(Labels, u64)],
) -> fmt::Result {
    if items.is_empty() {
        return Ok(());
    }
    let mut family = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in items {
        ConstCounter::new(*v).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauges(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    items: &[(Labels, i64)],
) -> fmt::Result {
    if items.is_empty() {
        return Ok(());
    }
    let mut family = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in items {
        ConstGauge::new(*v).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

fn signed(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn ingest_items(source: &'static str, c: &IngestCounts) -> Vec<(Labels, u64)> {
    [
        ("accepted", c.accepted),
        ("invalid", c.invalid),
        ("not_opted_in", c.not_opted_in),
        ("spool_full", c.spool_full),
        ("spool_error", c.spool_errors),
    ]
    .into_iter()
    .map(|(outcome, v)| {
        (
            vec![
                ("source", source.to_owned()),
                ("outcome", outcome.to_owned()),
            ],
            v,
        )
    })
    .collect()
}

impl Collector for Snapshot {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let e = &mut enc;
        let s = &self.status;
        gauges(
            e,
            "build_info",
            "The running telemd's version (always 1).",
            &[(vec![("version", env!("CARGO_PKG_VERSION").to_owned())], 1)],
        )?;
        gauge(
            e,
            "opted_in",
            "1 when the opt-in file exists (records are accepted and sent).",
            i64::from(s.opted_in),
        )?;
        let mut ingested = ingest_items("native", &self.native);
        ingested.extend(ingest_items("probe", &self.probes_ingest));
        counters(
            e,
            "records_ingested",
            "Records offered to the spool, by source and what became of them.",
            &ingested,
        )?;
        counters(
            e,
            "native_connections_dropped",
            "Native connections closed without a whole record: sent too slowly (timed_out), or their user held its share of connections (refused).",
            &[
                (vec![("reason", "timed_out".to_owned())], self.native.timed_out),
                (vec![("reason", "refused".to_owned())], self.native.refused),
            ],
        )?;
        gauge(
            e,
            "spool_records",
            "Records waiting in the spool.",
            signed(s.spool.records as u64),
        )?;
        gauge(
            e,
            "spool_bytes",
            "Bytes of the records waiting in the spool.",
            signed(s.spool.bytes),
        )?;
        gauge(
            e,
            "spool_oldest_age_seconds",
            "Seconds since the oldest record in the spool was stored (0 when empty).",
            signed(s.spool.oldest.map_or(0, |t| self.now.saturating_sub(t))),
        )?;
        let d = &s.delivery;
        counters(
            e,
            "delivery_records",
            "Records whose outcome became final, by outcome.",
            &[
                (vec![("outcome", "delivered".to_owned())], d.delivered),
                (vec![("outcome", "rejected".to_owned())], d.rejected),
                (vec![("outcome", "expired".to_owned())], d.expired),
                (vec![("outcome", "dropped".to_owned())], d.dropped),
                (vec![("outcome", "kept_local".to_owned())], d.kept_local),
            ],
        )?;
        counter(
            e,
            "delivery_failed_attempts",
            "Posts that failed and were kept for a retry (network errors, timeouts, retryable statuses).",
            d.failed_attempts,
        )?;
        gauge(
            e,
            "delivery_failures_in_a_row",
            "Failed posts since the last success (0: not backing off).",
            i64::from(d.failures_in_a_row),
        )?;
        gauge(
            e,
            "delivery_next_try_seconds",
            "Seconds until the next post may be tried (backoff or rate limit; 0: now).",
            signed(d.next_try.map_or(0, |t| t.saturating_sub(self.now))),
        )?;
        gauge(
            e,
            "journal_bytes",
            "Bytes of the delivery journal file.",
            signed(self.journal_bytes),
        )?;
        gauge(
            e,
            "probes_loaded",
            "Probes loaded (running or quarantined).",
            signed(s.probes.loaded as u64),
        )?;
        let per_probe = |f: &dyn Fn(&ProbeInfo) -> u64| -> Vec<(Labels, u64)> {
            self.probes
                .iter()
                .map(|p| (vec![("probe", p.name.clone())], f(p)))
                .collect()
        };
        counters(
            e,
            "probe_calls",
            "Calls of a probe's handle.",
            &per_probe(&|p| p.stats.runs),
        )?;
        counters(
            e,
            "probe_traps",
            "Calls that trapped (the memory cap included).",
            &per_probe(&|p| p.stats.traps),
        )?;
        counters(
            e,
            "probe_timeouts",
            "Calls stopped at their deadline.",
            &per_probe(&|p| p.stats.timeouts),
        )?;
        let records: Vec<(Labels, u64)> = self
            .probes
            .iter()
            .flat_map(|p| {
                [
                    (
                        vec![("probe", p.name.clone()), ("outcome", "sent".to_owned())],
                        p.stats.records_sent,
                    ),
                    (
                        vec![("probe", p.name.clone()), ("outcome", "refused".to_owned())],
                        p.stats.records_refused,
                    ),
                ]
            })
            .collect();
        counters(
            e,
            "probe_records",
            "Records a probe sent, stored or refused.",
            &records,
        )?;
        counters(
            e,
            "probe_source_skipped",
            "Source items a probe never saw (kernel log records lost in the ring, or malformed).",
            &per_probe(&|p| p.stats.source_skipped),
        )?;
        gauges(
            e,
            "probe_source_queued",
            "Items a probe's source reader took and queued (kernel log records, journal entries) that the probe has not handled yet; at the queue's size the reader waits and the rest waits in the source.",
            &self
                .probes
                .iter()
                .flat_map(|p| {
                    p.sources.iter().filter_map(|s| {
                        let kind = s.source.split(' ').next().unwrap_or("").to_owned();
                        s.waiting.map(|w| {
                            (
                                vec![("probe", p.name.clone()), ("source", kind)],
                                signed(w),
                            )
                        })
                    })
                })
                .collect::<Vec<_>>(),
        )?;
        gauges(
            e,
            "probe_quarantined",
            "1 while a probe is quarantined (it failed too often).",
            &self
                .probes
                .iter()
                .map(|p| {
                    (
                        vec![("probe", p.name.clone())],
                        i64::from(matches!(p.state, ProbeState::Quarantined(_))),
                    )
                })
                .collect::<Vec<_>>(),
        )?;
        gauges(
            e,
            "probe_state_bytes",
            "Bytes of private state a probe keeps.",
            &self
                .probes
                .iter()
                .map(|p| (vec![("probe", p.name.clone())], signed(p.state_bytes)))
                .collect::<Vec<_>>(),
        )?;
        let c = self.crashes;
        counters(
            e,
            "crashes",
            "Crashes the crash probes handled, by what became of them.",
            &[
                (vec![("outcome", "reported".to_owned())], c.reported),
                (vec![("outcome", "held_back".to_owned())], c.held_back),
                (vec![("outcome", "failed".to_owned())], c.failed),
            ],
        )?;
        gauge(
            e,
            "crashes_waiting",
            "Crashes in the inbox, waiting for a crash probe.",
            signed(c.waiting),
        )?;
        Ok(())
    }
}

/// The exposition of `snapshot` in `format`: every metric under the
/// `telemd_` prefix.
pub fn render(snapshot: Snapshot, format: Format) -> String {
    let mut registry = Registry::with_prefix("telemd");
    registry.register_collector(Box::new(snapshot));
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = match format {
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, &registry),
        Format::PrometheusText => {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
        }
    };
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use telem_core::control::{DeliveryStatus, ProbesSummary, SpoolSummary};

    fn snapshot() -> Snapshot {
        Snapshot {
            status: Status {
                opted_in: true,
                spool: SpoolSummary {
                    records: 3,
                    bytes: 1800,
                    oldest: Some(1_000),
                },
                delivery: DeliveryStatus {
                    failures_in_a_row: 2,
                    failed_attempts: 2,
                    next_try: Some(1_030),
                    delivered: 7,
                    ..Default::default()
                },
                ingest: IngestCounts::default(),
                probes: ProbesSummary::default(),
            },
            native: IngestCounts {
                accepted: 3,
                invalid: 1,
                ..Default::default()
            },
            probes_ingest: IngestCounts::default(),
            probes: Vec::new(),
            journal_bytes: 4096,
            crashes: CrashTally::default(),
            now: 1_010,
        }
    }

    #[test]
    fn the_exposition_carries_each_value_under_its_name() {
        let text = render(snapshot(), Format::OpenMetrics);
        for line in [
            "telemd_records_ingested_total{source=\"native\",outcome=\"accepted\"} 3",
            "telemd_records_ingested_total{source=\"native\",outcome=\"invalid\"} 1",
            "telemd_spool_records 3",
            "telemd_spool_bytes 1800",
            "telemd_spool_oldest_age_seconds 10",
            "telemd_delivery_records_total{outcome=\"delivered\"} 7",
            "telemd_delivery_failed_attempts_total 2",
            "telemd_delivery_failures_in_a_row 2",
            "telemd_delivery_next_try_seconds 20",
            "telemd_journal_bytes 4096",
            "telemd_opted_in 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from:\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn the_prometheus_text_format_names_counters_with_total_throughout() {
        let text = render(snapshot(), Format::PrometheusText);
        assert!(
            text.contains("# HELP telemd_delivery_failed_attempts_total "),
            "{text}"
        );
        assert!(!text.contains("# EOF"), "{text}");
        assert_eq!(Format::for_accept(None), Format::PrometheusText);
        assert_eq!(
            Format::for_accept(Some(
                "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
            )),
            Format::OpenMetrics
        );
    }
}
