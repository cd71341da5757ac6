//! The cost ledger of a bucket prefix (`zibd cost`, `zibctl cost`): one listing and the catalog
//! read from it, handed to `zib_core::lifecycle::cost_ledger`, which does all the arithmetic;
//! here only the gathering and the text for people.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use zib_core::{
    DatasetName,
    lifecycle::{
        LedgerRequest,
        cost_ledger::{ClassLine, CostLedger},
    },
    pricing::{Pricing, RestoreTier, format_money},
    request_ledger::{RequestCost, RequestCounts, RequestLedger},
};

use crate::restore::{RestoreError, load_catalog_and_listing};
use crate::s3::S3Store;
use zib_core::human::human_bytes;

/// Days the thawed copies of the restore quote stay readable, as `restore plan` defaults to.
pub const RESTORE_QUOTE_DAYS: u32 = 7;

/// The ledger and where it was read.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CostReport {
    pub bucket: String,
    pub prefix: String,
    /// Only this dataset's objects were listed.
    pub dataset: Option<DatasetName>,
    pub ledger: CostLedger,
    /// The requests made so far were counted (`requests` holds them): false without a state
    /// directory (`zibd cost --bucket` with no config), or when its ledger is unreadable.
    pub requests_counted: bool,
    /// The requests every zib process of this state directory has made (to any bucket), and
    /// their cost at the price table's list prices.
    pub requests: Option<RequestsMade>,
    /// Why the requests are not counted, when the ledger could not be read.
    pub requests_error: Option<String>,
}

/// The request ledger as the report shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RequestsMade {
    pub since: DateTime<Utc>,
    pub updated: DateTime<Utc>,
    pub counts: RequestCounts,
    pub cost: RequestCost,
}

impl CostReport {
    /// The same report with the requests of `ledger` (or why there are none), priced with
    /// `pricing`.
    pub fn with_requests(self, ledger: Result<RequestLedger, String>, pricing: &Pricing) -> Self {
        match ledger {
            Ok(l) => Self {
                requests_counted: true,
                requests: Some(RequestsMade {
                    since: l.since,
                    updated: l.updated,
                    cost: l.counts.cost(pricing),
                    counts: l.counts,
                }),
                requests_error: None,
                ..self
            },
            Err(e) => {
                Self { requests_counted: false, requests: None, requests_error: Some(e), ..self }
            }
        }
    }
}

/// Lists `prefix` (only `dataset`'s root when given), reads its manifests and computes the
/// ledger at `now`.
pub async fn cost_report(
    s3: &S3Store,
    prefix: &str,
    dataset: Option<&DatasetName>,
    pricing: &Pricing,
    now: DateTime<Utc>,
    restore_days: u32,
) -> Result<CostReport, RestoreError> {
    let (cat, listing) = load_catalog_and_listing(s3, prefix, dataset, None).await?;
    let stored: Vec<_> = listing.iter().map(crate::lifecycle::stored_object).collect();
    let ledger = LedgerRequest {
        prefix: &cat.prefix,
        catalogs: &cat.datasets,
        listing: &stored,
        pricing,
        now,
        restore_days,
    }
    .ledger();
    Ok(CostReport {
        bucket: cat.bucket,
        prefix: cat.prefix,
        dataset: dataset.cloned(),
        ledger,
        requests_counted: false,
        requests: None,
        requests_error: None,
    })
}

fn class_row(s: &mut String, c: &ClassLine, currency: &str) {
    let overhead = if c.overhead_standard_bytes + c.overhead_archive_bytes == 0 {
        "-".to_owned()
    } else {
        format!(
            "{} + {} ({})",
            human_bytes(c.overhead_standard_bytes),
            human_bytes(c.overhead_archive_bytes),
            format_money(c.overhead_monthly, currency)
        )
    };
    let _ = writeln!(
        s,
        "  {:<20} {:>8} {:>11}  {:<32} {}",
        c.storage_class.as_str(),
        c.objects,
        human_bytes(c.bytes),
        overhead,
        format_money(c.monthly, currency)
    );
}

/// The report for people.
pub fn format_cost(r: &CostReport) -> String {
    let l = &r.ledger;
    let cur = l.currency.as_str();
    let money = |v: f64| format_money(v, cur);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "cost of s3://{}/{}{} on {}: {} a month (estimated storage, list prices of the price table)",
        r.bucket,
        r.prefix,
        r.dataset.as_ref().map(|d| format!(" ({d})")).unwrap_or_default(),
        l.at.format("%Y-%m-%d"),
        money(l.monthly_total)
    );
    let _ = writeln!(
        s,
        "  {:<20} {:>8} {:>11}  {:<32} monthly",
        "class", "objects", "bytes", "index overhead STANDARD + own"
    );
    for c in &l.classes {
        class_row(&mut s, c, cur);
    }
    let (objects, bytes) = l.classes.iter().fold((0, 0), |(o, b), c| (o + c.objects, b + c.bytes));
    let _ = writeln!(
        s,
        "  {:<20} {:>8} {:>11}  {:<32} {}",
        "named by manifests",
        objects,
        human_bytes(bytes),
        "",
        money(l.monthly)
    );
    if !l.unnamed.is_empty() {
        let _ = writeln!(
            s,
            "  not named by any manifest (abandoned attempts, unreadable manifests, other files): {} objects, {}",
            l.unnamed.len(),
            money(l.unnamed_monthly)
        );
        for c in &l.unnamed_classes {
            class_row(&mut s, c, cur);
        }
        for o in &l.unnamed {
            let _ = writeln!(s, "    {} ({}, {})", o.key, human_bytes(o.size), o.storage_class);
        }
    }
    if !l.missing.is_empty() {
        let _ = writeln!(
            s,
            "  named by a manifest but missing from the listing (or of another size), not counted: {}",
            l.missing.len()
        );
        for k in &l.missing {
            let _ = writeln!(s, "    {k}");
        }
    }
    for d in &l.datasets {
        let _ = writeln!(
            s,
            "dataset {}: {} objects, {}, {} a month",
            d.dataset,
            d.objects,
            human_bytes(d.bytes),
            money(d.monthly)
        );
        for c in &d.chains {
            let _ = writeln!(
                s,
                "  chain #{}..#{} ({} backups, {} objects, {}, {} a month): deletable free of charge from {}",
                c.full_seq,
                c.newest_seq,
                c.backups,
                c.objects,
                human_bytes(c.bytes),
                money(c.monthly),
                c.deletable_from.format("%Y-%m-%d")
            );
        }
        if !d.broken_seqs.is_empty() {
            let _ = writeln!(s, "  leading back to no full: {:?}", d.broken_seqs);
        }
        match (&d.restore, &d.restore_error) {
            (Some(r), _) => {
                let v = &r.quote.volume;
                let tiers: Vec<String> = RestoreTier::ALL
                    .iter()
                    .map(|t| {
                        let q = r.quote.tier(*t);
                        format!("{t} {} (within {} h)", money(q.total), q.ready_within_hours)
                    })
                    .collect();
                let _ = writeln!(
                    s,
                    "  full restore of @{} today ({} streams, {} chunks, {}; thawed copies kept {} days): {}",
                    r.snapshot,
                    r.streams,
                    v.objects,
                    human_bytes(v.bytes),
                    r.quote.days,
                    tiers.join(", ")
                );
            }
            (None, Some(e)) => {
                let _ = writeln!(s, "  full restore: not possible from this catalog: {e}");
            }
            (None, None) => {}
        }
    }
    match (&r.requests, &r.requests_error) {
        (Some(m), _) => requests_line(&mut s, m, cur),
        (None, Some(e)) => {
            let _ = writeln!(s, "requests made so far: not counted: {e}");
        }
        (None, None) => {
            let _ = writeln!(
                s,
                "requests made so far: not counted (no state directory: the request ledger lives in the config's daemon.state_dir)"
            );
        }
    }
    s
}

fn requests_line(s: &mut String, m: &RequestsMade, currency: &str) {
    let c = &m.counts;
    let classes: Vec<String> = c.put.iter().map(|(k, n)| format!("{n} {k}")).collect();
    let mut parts = vec![format!(
        "{}{}",
        zib_core::human::count(c.puts(), "PUT", "PUTs"),
        if classes.is_empty() { String::new() } else { format!(" ({})", classes.join(", ")) }
    )];
    parts.push(zib_core::human::count(c.get, "GET", "GETs"));
    parts.push(zib_core::human::count(c.head, "HEAD", "HEADs"));
    parts.push(zib_core::human::count(c.list, "LIST", "LISTs"));
    parts.push(zib_core::human::count(c.delete, "DELETE", "DELETEs"));
    if c.restores() > 0 {
        let tiers: Vec<String> = c.restore.iter().map(|(t, n)| format!("{n} {t}")).collect();
        parts.push(format!(
            "{} ({})",
            zib_core::human::count(c.restores(), "restore request", "restore requests"),
            tiers.join(", ")
        ));
    }
    if c.other > 0 {
        parts.push(zib_core::human::count(c.other, "other", "others"));
    }
    let _ = writeln!(
        s,
        "requests made since {} (by zib with this state directory, to any bucket): {}: {} (PUTs {}, GET/HEAD {}, LIST {}, restore {}; DELETE is free)",
        m.since.format("%Y-%m-%d %H:%M UTC"),
        parts.join(", "),
        format_money(m.cost.total, currency),
        format_money(m.cost.put, currency),
        format_money(m.cost.get_head, currency),
        format_money(m.cost.list, currency),
        format_money(m.cost.restore, currency),
    );
}
