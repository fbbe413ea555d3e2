//! The metrics contract under test: every label set at 0 and gone with its dueslag, static
//! labels, the protobuf exposition against the text one, series per dueslag, and (ignored,
//! release) the render time at 10,000 dueslag.

use super::*;
use std::time::Duration;
use uuid::Uuid;

#[test]
fn every_label_set_starts_at_zero_and_goes_away() {
    let m = Metrics::new(&crate::config::default_buckets(), Histograms::Classic);
    let d = m.dueslag("sag-pull", Mode::Pull);
    let text = m.render(Format::Text);
    for needle in [
        r#"bfo_alive_probes_total{dueslag="sag-pull",mode="pull",result="send_error"} 0"#,
        r#"bfo_alive_held_messages{dueslag="sag-pull"} 0"#,
        r#"bfo_alive_received_total{dueslag="sag-pull",mode="pull",kind="out_of_order"} 0"#,
        r#"bfo_alive_received_total{dueslag="sag-pull",mode="pull",kind="misrouted"} 0"#,
        r#"bfo_alive_roundtrip_duration_seconds_count{dueslag="sag-pull",mode="pull"} 0"#,
        r#"bfo_alive_exporter_build_info{version=""#,
        "process_resident_memory_bytes ",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    // Failure reasons cost a series only once they happen.
    assert!(
        !text.contains(r#"bfo_alive_send_failures_total{"#),
        "{text}"
    );
    assert!(
        !text.contains(r#"bfo_alive_consume_failures_total{"#),
        "{text}"
    );
    d.observe(Outcome::SendFailed {
        besked_id: Uuid::new_v4(),
        reason: SendFailure::Unroutable,
        status: None,
        detail: String::new(),
    });
    let text = m.render(Format::Text);
    assert!(
        text.contains(r#"bfo_alive_send_failures_total{dueslag="sag-pull",reason="unroutable"} 1"#)
    );
    assert!(!text.contains(r#"reason="invalid_reply""#));
    let id = Uuid::new_v4();
    d.observe(Outcome::Finished {
        besked_id: id,
        result: ProbeResult::Success {
            roundtrip: Duration::from_millis(30),
        },
        at: SystemTime::now(),
    });
    let om = m.render(Format::OpenMetrics);
    assert!(
        om.contains(&format!("# {{besked_id=\"{id}\"}} 0.03")),
        "{om}"
    );
    assert!(!m.render(Format::Text).contains("besked_id"));
    d.observe(Outcome::ConsumeFailed {
        reason: ConsumeFailure::QueueMissing,
        detail: "NOT_FOUND".into(),
    });
    assert!(m.render(Format::Text).contains(
        r#"bfo_alive_consume_failures_total{dueslag="sag-pull",reason="queue_missing"} 1"#
    ));
    // A push dueslag has no consumer, so no consume series.
    let push = m.dueslag("sag-push", Mode::Push);
    push.observe(Outcome::ConsumeFailed {
        reason: ConsumeFailure::Connection,
        detail: String::new(),
    });
    let text = m.render(Format::Text);
    assert!(!text.contains(r#"bfo_alive_consume_failures_total{dueslag="sag-push""#));
    assert!(!text.contains(r#"bfo_alive_held_messages{dueslag="sag-push""#));
    m.remove_dueslag("sag-push", Mode::Push);
    m.remove_dueslag("sag-pull", Mode::Pull);
    assert!(!m.render(Format::Text).contains("sag-pull"));
}

#[test]
fn static_labels_are_on_every_series_of_a_dueslag_and_go_with_it() {
    let m = Metrics::new(&[1.0], Histograms::Both);
    let labels = [
        ("kommune".to_string(), "aarhus".to_string()),
        ("team".to_string(), "sag".to_string()),
    ];
    let _d = m.dueslag_labelled("aarhus-sag", Mode::Pull, &labels);
    m.dueslag_started(
        "aarhus-sag",
        Duration::from_secs(30),
        Duration::from_secs(120),
        SystemTime::now(),
    );
    let text = m.render(Format::Text);
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(r#"dueslag="aarhus-sag""#))
        .collect();
    // Every per-dueslag family: probes, round trip, send, failures, received, lost,
    // timestamps, gauges, schedule.
    assert!(lines.len() > 25, "{} lines: {text}", lines.len());
    for l in &lines {
        assert!(
            l.contains(r#"dueslag="aarhus-sag",kommune="aarhus",team="sag""#),
            "{l}"
        );
    }
    // The protobuf exposition (written apart from the text one) carries them too, in
    // the same order.
    let families = decode(&m.render_protobuf());
    let series: Vec<_> = families
        .iter()
        .flat_map(|f| f.metric.iter().map(move |s| (&f.name, s)))
        .filter(|(_, s)| s.label.iter().any(|l| l.value == "aarhus-sag"))
        .collect();
    assert!(series.len() >= 15, "{families:?}");
    for (name, s) in series {
        let pairs: Vec<_> = s
            .label
            .iter()
            .take(3)
            .map(|l| (l.name.as_str(), l.value.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("dueslag", "aarhus-sag"),
                ("kommune", "aarhus"),
                ("team", "sag")
            ],
            "{name}"
        );
    }
    m.set_token_expiry(
        Service::Afsend,
        "55133018",
        Some(UNIX_EPOCH + Duration::from_secs(5)),
    );
    m.set_connection_up(Service::Afsend, "55133018", true);
    let text = m.render(Format::Text);
    assert!(text.contains(
        r#"bfo_alive_token_expiry_timestamp_seconds{service="afsend",cvr="55133018"} 5"#
    ));
    assert!(text.contains(r#"bfo_alive_connection_up{connection="afsend",cvr="55133018"} 1"#));
    // Removed by name, with the labels it was created with.
    m.remove_dueslag("aarhus-sag", Mode::Pull);
    m.remove_connection(Service::Afsend, "55133018");
    m.remove_token(Service::Afsend, "55133018");
    let text = m.render(Format::Text);
    assert!(!text.contains("aarhus"), "{text}");
    assert!(!text.contains("55133018"), "{text}");
}

#[test]
fn schedule_and_start_of_a_dueslag_go_with_it() {
    let m = Metrics::new(&[1.0], crate::config::Histograms::default());
    let _d = m.dueslag("sag-push", Mode::Push);
    let at = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    m.dueslag_started(
        "sag-push",
        Duration::from_secs(900),
        Duration::from_millis(120_500),
        at,
    );
    let text = m.render(Format::Text);
    for needle in [
        r#"bfo_alive_probe_interval_seconds{dueslag="sag-push"} 900"#,
        r#"bfo_alive_probe_timeout_seconds{dueslag="sag-push"} 120.5"#,
        r#"bfo_alive_dueslag_started_timestamp_seconds{dueslag="sag-push"} 1800000000"#,
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    // A restart moves the start.
    m.dueslag_started(
        "sag-push",
        Duration::from_secs(900),
        Duration::from_secs(120),
        at + Duration::from_secs(60),
    );
    assert!(
        m.render(Format::Text).contains(
            r#"bfo_alive_dueslag_started_timestamp_seconds{dueslag="sag-push"} 1800000060"#
        )
    );
    m.remove_dueslag("sag-push", Mode::Push);
    assert!(!m.render(Format::Text).contains("sag-push"));
}

#[test]
fn certificate_expiry_by_use_and_shard_info() {
    let m = Metrics::new(&[1.0], crate::config::Histograms::default());
    let text = m.render(Format::Text);
    assert!(!text.contains("bfo_alive_certificate_expiry_timestamp_seconds{"));
    assert!(text.contains(r#"bfo_alive_shard_info{shard="1",shards="1"} 1"#));
    assert!(text.contains("bfo_alive_shards 1"));

    let at = UNIX_EPOCH + Duration::from_secs(1_900_000_000);
    for u in CertificateUse::ALL {
        m.set_certificate_expiry(u, Some(at));
    }
    let text = m.render(Format::Text);
    for u in ["broker", "push", "sts"] {
        let needle =
            format!(r#"bfo_alive_certificate_expiry_timestamp_seconds{{use="{u}"}} 1900000000"#);
        assert!(text.contains(&needle), "missing {needle} in\n{text}");
    }
    m.set_certificate_expiry(CertificateUse::Sts, None);
    assert!(!m.render(Format::Text).contains(r#"{use="sts"}"#));

    m.set_shard(Some("2/3".parse().unwrap()));
    let text = m.render(Format::Text);
    assert!(text.contains(r#"bfo_alive_shard_info{shard="2",shards="3"} 1"#));
    assert!(!text.contains(r#"shard="1""#));
    assert!(text.contains("bfo_alive_shards 3"));
}

use prometheus_client::encoding::prometheus_protobuf::prometheus_data_model::MetricFamily;

fn decode(mut body: &[u8]) -> Vec<MetricFamily> {
    let mut out = Vec::new();
    while !body.is_empty() {
        out.push(MetricFamily::decode_length_delimited(&mut body).expect("a MetricFamily"));
    }
    out
}

fn succeed(d: &DueslagMetrics, ms: u64) {
    d.observe(Outcome::Finished {
        besked_id: Uuid::new_v4(),
        result: ProbeResult::Success {
            roundtrip: Duration::from_millis(ms),
        },
        at: SystemTime::now(),
    });
}

/// The round trip of `dueslag` in a protobuf exposition.
fn roundtrip_of(
    families: &[MetricFamily],
) -> &prometheus_client::encoding::prometheus_protobuf::prometheus_data_model::Histogram {
    let f = families
        .iter()
        .find(|f| f.name == "bfo_alive_roundtrip_duration_seconds")
        .expect("the round-trip family");
    assert_eq!(f.metric.len(), 1, "one histogram per dueslag");
    f.metric[0].histogram.as_ref().expect("a histogram")
}

#[test]
fn native_histograms_go_out_in_protobuf_classic_buckets_in_text() {
    for mode in [Histograms::Classic, Histograms::Native, Histograms::Both] {
        let m = Metrics::new(&crate::config::default_buckets(), mode);
        let d = m.dueslag("sag", Mode::Pull);
        for ms in [3, 30, 31, 300] {
            succeed(&d, ms);
        }
        let families = decode(&m.render_protobuf());
        assert_eq!(m.protobuf(), mode.native());
        if mode.native() {
            let h = roundtrip_of(&families);
            assert_eq!(h.sample_count, 4, "{mode:?}");
            assert!((h.sample_sum - 0.364).abs() < 1e-9, "{h:?}");
            // `both`: the 14 configured classic buckets and +Inf beside the native ones.
            let classic = if mode == Histograms::Both { 15 } else { 0 };
            assert_eq!(h.bucket.len(), classic, "{mode:?}");
            if mode == Histograms::Both {
                assert_eq!(h.bucket[1].upper_bound, 0.025);
                assert_eq!(h.bucket[1].cumulative_count, 1);
                assert_eq!(h.bucket[14].cumulative_count, 4);
            }
            assert_eq!(h.schema, native::SCHEMA);
            assert_eq!(h.zero_threshold, native::ZERO_THRESHOLD);
            // 3 ms, 30 and 31 ms (one bucket at ×1.09), 300 ms: three buckets, the
            // indexes of the client_golang schema 3 (2^(i/8) upper bounds).
            let index = |v: f64| (v.log2() * 8.0).ceil() as i32;
            assert_eq!(h.positive_span.len(), 3, "{h:?}");
            assert_eq!(h.positive_span[0].offset, index(0.003));
            assert_eq!(h.positive_span[1].offset, index(0.030) - index(0.003) - 1);
            assert_eq!(h.positive_delta, vec![1, 1, -1], "{h:?}");
        } else {
            assert!(!families.iter().any(|f| f.name.contains("roundtrip")));
        }
        let text = m.render(Format::Text);
        let om = m.render(Format::OpenMetrics);
        let le_1 =
            r#"bfo_alive_roundtrip_duration_seconds_bucket{dueslag="sag",mode="pull",le="0.5"} 4"#;
        assert_eq!(text.contains(le_1), mode.classic(), "{mode:?}\n{text}");
        assert!(text.contains(
            r#"bfo_alive_roundtrip_duration_seconds_count{dueslag="sag",mode="pull"} 4"#
        ));
        // Exemplars stay in OpenMetrics wherever there are classic buckets.
        assert_eq!(om.contains("# {besked_id="), mode.classic(), "{mode:?}");
        assert!(om.ends_with("# EOF\n"));
        assert_eq!(om.matches("# EOF").count(), 1);
        // Every family once, in text as in protobuf.
        assert_eq!(
            text.matches("# TYPE bfo_alive_roundtrip_duration_seconds histogram")
                .count(),
            1
        );
        assert_eq!(
            families
                .iter()
                .filter(|f| f.name == "bfo_alive_send_duration_seconds")
                .count(),
            usize::from(mode.native())
        );
    }
}

/// What a Prometheus scraping protobuf stores per dueslag: one series per counter,
/// gauge or native histogram; with classic buckets one per bucket, `_sum` and `_count`.
fn series_per_dueslag(families: &[MetricFamily], dueslag: &str) -> usize {
    families
        .iter()
        .flat_map(|f| &f.metric)
        .filter(|m| {
            m.label
                .iter()
                .any(|l| l.name == "dueslag" && l.value == dueslag)
        })
        .map(|m| match &m.histogram {
            Some(h) if h.schema == 0 && h.positive_span.is_empty() => h.bucket.len() + 2,
            _ => 1,
        })
        .sum()
}

#[test]
fn a_dueslag_costs_few_series_with_native_histograms() {
    let native = Metrics::new(&crate::config::default_buckets(), Histograms::Native);
    let classic = Metrics::new(&crate::config::default_buckets(), Histograms::Classic);
    for m in [&native, &classic] {
        let _pull = m.dueslag("pull", Mode::Pull);
        let _push = m.dueslag("push", Mode::Push);
        for name in ["pull", "push"] {
            m.dueslag_started(
                name,
                Duration::from_secs(60),
                Duration::from_secs(120),
                SystemTime::now(),
            );
        }
    }
    let n = decode(&native.render_protobuf());
    // The figures of BENCHMARKS.md ("What a dueslag costs in Prometheus").
    assert_eq!(series_per_dueslag(&n, "pull"), 22);
    assert_eq!(series_per_dueslag(&n, "push"), 20);
    // Classic: a text sample is a series; 15 + 2 of the round trip, 13 + 2 of sending.
    let text = classic.render(Format::Text);
    let per = |d: &str| {
        text.lines()
            .filter(|l| !l.starts_with('#') && l.contains(&format!("dueslag=\"{d}\"")))
            .count()
    };
    assert_eq!(per("pull"), 22 - 2 + 17 + 15);
    assert_eq!(per("push"), 20 - 2 + 17 + 15);
    // The same series, in text and protobuf.
    let names = |fs: &[MetricFamily]| {
        let mut v: Vec<String> = fs
            .iter()
            .filter(|f| {
                f.metric
                    .iter()
                    .any(|m| m.label.iter().any(|l| l.value == "pull"))
            })
            .map(|f| f.name.clone())
            .collect();
        v.sort();
        v
    };
    // 16 families, less the two failure ones while nothing failed.
    assert_eq!(names(&n).len(), 14, "{:?}", names(&n));
    let text = native.render(Format::Text);
    for f in n.iter().filter(|f| f.name.starts_with("bfo_alive_")) {
        assert!(f.help.ends_with('.'), "{f:?}");
        let t = format!("# HELP {} {}\n", f.name, f.help);
        assert!(text.contains(&t), "{t}");
    }
}

#[test]
fn the_scraper_gets_the_format_it_prefers() {
    let proto = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited";
    for (accept, want) in [
        (None, Format::Text),
        (
            Some("text/plain;version=0.0.4;q=0.5,*/*;q=0.1"),
            Format::Text,
        ),
        (Some("*/*"), Format::Text),
        // Prometheus 2.42 with --enable-feature=native-histograms.
        (
            Some(
                "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.8,application/openmetrics-text;version=1.0.0;q=0.7,application/openmetrics-text;version=0.0.1;q=0.6,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
            ),
            Format::Protobuf,
        ),
        // Prometheus without it.
        (
            Some(
                "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
            ),
            Format::OpenMetrics,
        ),
        (Some(proto), Format::Protobuf),
        (
            Some(&format!("application/openmetrics-text, {proto};q=0.5")),
            Format::OpenMetrics,
        ),
        (
            Some(&format!("application/openmetrics-text, {proto}")),
            Format::Protobuf,
        ),
        (Some(&format!("{proto};q=0")), Format::Text),
        // Another message, or text protobuf: not ours.
        (
            Some(
                "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=text",
            ),
            Format::Text,
        ),
        (Some("application/vnd.google.protobuf"), Format::Text),
    ] {
        assert_eq!(Format::negotiate(accept, true), want, "{accept:?}");
        // `classic` offers no protobuf: the next best, as before native histograms.
        let classic = Format::negotiate(accept, false);
        assert_ne!(classic, Format::Protobuf);
        if want != Format::Protobuf {
            assert_eq!(classic, want, "{accept:?}");
        }
    }
}

mod render_timing {
    use super::*;
    use std::time::Instant;

    /// `cargo test --release --lib render_timing -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn render_10k() {
        for mode in [Histograms::Classic, Histograms::Native, Histograms::Both] {
            let m = Metrics::new(&crate::config::default_buckets(), mode);
            let ds: Vec<_> = (0..10_000)
                .map(|i| {
                    let name = format!("d{i:05}");
                    let d = m.dueslag(&name, Mode::Pull);
                    m.dueslag_started(
                        &name,
                        Duration::from_secs(10),
                        Duration::from_secs(30),
                        SystemTime::now(),
                    );
                    for ms in [5, 6, 7] {
                        d.observe(Outcome::Finished {
                            besked_id: uuid::Uuid::new_v4(),
                            result: ProbeResult::Success {
                                roundtrip: Duration::from_millis(ms),
                            },
                            at: SystemTime::now(),
                        });
                        d.observe(Outcome::Sent {
                            duration: Duration::from_millis(ms),
                        });
                    }
                    d
                })
                .collect();
            for _ in 0..2 {
                let t = Instant::now();
                let text = m.render(Format::Text);
                let tt = t.elapsed();
                let t = Instant::now();
                let pb = m.render_protobuf();
                let tp = t.elapsed();
                eprintln!(
                    "{mode:?}: text {tt:?} ({} MB), protobuf {tp:?} ({} MB)",
                    text.len() / 1_000_000,
                    pb.len() / 1_000_000
                );
            }
            drop(ds);
        }
    }
}
