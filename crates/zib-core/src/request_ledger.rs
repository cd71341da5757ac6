//! The requests zib has made to the bucket, and what they cost.
//!
//! S3 bills every request, and in the archive classes a PUT costs ten times a STANDARD one: the
//! cost ledger must say what was spent, not only what is stored. The S3 adapter counts each
//! attempt it sends (a retried request is billed again, so it is counted again) by kind; zibd
//! adds those counts to one ledger file per state directory. Here only the counts, their sum
//! and their price: no I/O.
//!
//! Prices come from the one table of [`crate::pricing`]: PUTs by the class of the object
//! written, GET and HEAD at `get_requests_per_1000`, LIST at `list_requests_per_1000`,
//! RestoreObject by tier at the tier's request price, DELETE free (as S3 bills it). A request of
//! any other kind (tags, bucket calls) is priced as a LIST, the dearer of the two read prices.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::pricing::{Pricing, RestoreTier};
use crate::storage_class::StorageClass;

/// One request, as S3 bills it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// PutObject (and CopyObject, POST), by the class of the object written.
    Put(StorageClass),
    /// GetObject.
    Get,
    /// HeadObject.
    Head,
    /// ListObjectsV2 (one page).
    List,
    /// DeleteObject / DeleteObjects: free.
    Delete,
    /// RestoreObject, by tier.
    Restore(RestoreTier),
    /// Anything else (object tags, bucket calls).
    Other,
}

/// Requests counted by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RequestCounts {
    /// PUTs by the class of the object written.
    pub put: BTreeMap<StorageClass, u64>,
    pub get: u64,
    pub head: u64,
    pub list: u64,
    pub delete: u64,
    /// RestoreObject requests by tier.
    pub restore: BTreeMap<RestoreTier, u64>,
    pub other: u64,
}

impl RequestCounts {
    pub fn add(&mut self, kind: RequestKind, n: u64) {
        match kind {
            RequestKind::Put(c) => *self.put.entry(c).or_default() += n,
            RequestKind::Get => self.get += n,
            RequestKind::Head => self.head += n,
            RequestKind::List => self.list += n,
            RequestKind::Delete => self.delete += n,
            RequestKind::Restore(t) => *self.restore.entry(t).or_default() += n,
            RequestKind::Other => self.other += n,
        }
    }

    /// Adds every count of `other`.
    pub fn merge(&mut self, other: &RequestCounts) {
        for (c, n) in &other.put {
            self.add(RequestKind::Put(*c), *n);
        }
        for (t, n) in &other.restore {
            self.add(RequestKind::Restore(*t), *n);
        }
        self.get += other.get;
        self.head += other.head;
        self.list += other.list;
        self.delete += other.delete;
        self.other += other.other;
    }

    pub fn puts(&self) -> u64 {
        self.put.values().sum()
    }

    pub fn restores(&self) -> u64 {
        self.restore.values().sum()
    }

    pub fn total(&self) -> u64 {
        self.puts() + self.get + self.head + self.list + self.delete + self.restores() + self.other
    }

    pub fn is_empty(&self) -> bool {
        self.total() == 0
    }

    /// What these requests cost at `pricing`'s list prices.
    pub fn cost(&self, pricing: &Pricing) -> RequestCost {
        let per_1000 = |n: u64, price: f64| n as f64 * price / 1000.0;
        let put = self
            .put
            .iter()
            .map(|(c, n)| {
                per_1000(*n, pricing.put_requests_per_1000.get(c).copied().unwrap_or(0.0))
            })
            .sum();
        let get_head = per_1000(self.get + self.head, pricing.get_requests_per_1000);
        let list = per_1000(self.list + self.other, pricing.list_requests_per_1000);
        let restore =
            self.restore.iter().map(|(t, n)| per_1000(*n, pricing.tier_prices(*t).1)).sum();
        RequestCost { put, get_head, list, restore, total: put + get_head + list + restore }
    }
}

/// The price of some requests, by the kind that is billed apart.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestCost {
    pub put: f64,
    /// GET and HEAD.
    pub get_head: f64,
    /// LIST, and requests of any other kind.
    pub list: f64,
    /// RestoreObject.
    pub restore: f64,
    pub total: f64,
}

/// The ledger file's version; a newer one is refused, never overwritten.
pub const REQUEST_LEDGER_VERSION: u32 = 1;

/// Every request counted since `since`: the content of `<state_dir>/requests.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestLedger {
    pub version: u32,
    /// When counting began (the first request recorded).
    pub since: DateTime<Utc>,
    /// When counts were last added.
    pub updated: DateTime<Utc>,
    pub counts: RequestCounts,
}

impl RequestLedger {
    pub fn new(now: DateTime<Utc>) -> Self {
        Self {
            version: REQUEST_LEDGER_VERSION,
            since: now,
            updated: now,
            counts: RequestCounts::default(),
        }
    }

    /// Adds `counts`, made up to `now`.
    pub fn record(&mut self, counts: &RequestCounts, now: DateTime<Utc>) {
        self.counts.merge(counts);
        self.updated = self.updated.max(now);
    }

    /// Parses a ledger file's bytes; `what` names it in the error.
    pub fn from_json(what: &str, bytes: &[u8]) -> Result<Self, String> {
        let l: Self = serde_json::from_slice(bytes)
            .map_err(|e| format!("{what}: not a zib request ledger: {e}"))?;
        if l.version > REQUEST_LEDGER_VERSION {
            return Err(format!(
                "{what}: written by a newer zib (ledger version {}, this one reads up to {REQUEST_LEDGER_VERSION})",
                l.version
            ));
        }
        Ok(l)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn counts_add_up_by_kind() {
        let mut c = RequestCounts::default();
        c.add(RequestKind::Put(StorageClass::DeepArchive), 7);
        c.add(RequestKind::Put(StorageClass::Standard), 2);
        c.add(RequestKind::Put(StorageClass::DeepArchive), 1);
        c.add(RequestKind::Get, 3);
        c.add(RequestKind::Head, 4);
        c.add(RequestKind::List, 5);
        c.add(RequestKind::Delete, 6);
        c.add(RequestKind::Restore(RestoreTier::Bulk), 8);
        c.add(RequestKind::Other, 1);
        assert_eq!(c.put[&StorageClass::DeepArchive], 8);
        assert_eq!(c.puts(), 10);
        assert_eq!(c.restores(), 8);
        assert_eq!(c.total(), 10 + 3 + 4 + 5 + 6 + 8 + 1);
        let mut twice = c.clone();
        twice.merge(&c);
        assert_eq!(twice.total(), 2 * c.total());
        assert_eq!(twice.put[&StorageClass::Standard], 4);
        assert_eq!(twice.restore[&RestoreTier::Bulk], 16);
    }

    #[test]
    fn cost_at_list_prices_by_hand() {
        let mut c = RequestCounts::default();
        // 2,000 DEEP_ARCHIVE PUTs at $0.05/1,000 = $0.10; 1,000 STANDARD at $0.005 = $0.005.
        c.add(RequestKind::Put(StorageClass::DeepArchive), 2000);
        c.add(RequestKind::Put(StorageClass::Standard), 1000);
        // 10,000 GET + HEAD at $0.0004/1,000 = $0.004.
        c.add(RequestKind::Get, 4000);
        c.add(RequestKind::Head, 6000);
        // 1,000 LIST + 1,000 other at $0.005/1,000 = $0.01.
        c.add(RequestKind::List, 1000);
        c.add(RequestKind::Other, 1000);
        // DELETE is free.
        c.add(RequestKind::Delete, 50_000);
        // 1,000 Bulk restores at $0.025 + 1,000 Standard at $0.10 = $0.125.
        c.add(RequestKind::Restore(RestoreTier::Bulk), 1000);
        c.add(RequestKind::Restore(RestoreTier::Standard), 1000);
        let cost = c.cost(&Pricing::default());
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        assert!(close(cost.put, 0.105), "{cost:?}");
        assert!(close(cost.get_head, 0.004), "{cost:?}");
        assert!(close(cost.list, 0.01), "{cost:?}");
        assert!(close(cost.restore, 0.125), "{cost:?}");
        assert!(close(cost.total, 0.105 + 0.004 + 0.01 + 0.125), "{cost:?}");
    }

    #[test]
    fn an_overridden_put_price_is_used() {
        let p: Pricing = toml::from_str("[put_requests_per_1000]\nDEEP_ARCHIVE = 1.0\n").unwrap();
        assert_eq!(p.put_requests_per_1000[&StorageClass::DeepArchive], 1.0);
        assert_eq!(p.put_requests_per_1000[&StorageClass::Standard], 0.005);
        let mut c = RequestCounts::default();
        c.add(RequestKind::Put(StorageClass::DeepArchive), 3);
        assert!((c.cost(&p).put - 0.003).abs() < 1e-12);
        let e = toml::from_str::<Pricing>("[put_requests_per_1000]\nDEEP_ARCHIVE = -1.0\n")
            .unwrap_err();
        assert!(e.to_string().contains("pricing.put_requests_per_1000.DEEP_ARCHIVE"), "{e}");
        let e = toml::from_str::<Pricing>("[put_requests_per_1000]\nFROZEN = 1.0\n").unwrap_err();
        assert!(e.to_string().contains("pricing.put_requests_per_1000"), "{e}");
    }

    #[test]
    fn the_ledger_file_round_trips_and_refuses_a_newer_version() {
        let mut l = RequestLedger::new(at("2026-01-01T00:00:00Z"));
        let mut c = RequestCounts::default();
        c.add(RequestKind::Put(StorageClass::DeepArchive), 3);
        l.record(&c, at("2026-02-01T00:00:00Z"));
        l.record(&c, at("2026-01-15T00:00:00Z"));
        assert_eq!(l.updated, at("2026-02-01T00:00:00Z"));
        assert_eq!(l.counts.puts(), 6);
        let json = serde_json::to_vec(&l).unwrap();
        assert_eq!(RequestLedger::from_json("requests.json", &json).unwrap(), l);
        let newer = String::from_utf8(json).unwrap().replace("\"version\":1", "\"version\":99");
        let e =
            RequestLedger::from_json("/var/lib/zib/requests.json", newer.as_bytes()).unwrap_err();
        assert!(e.contains("/var/lib/zib/requests.json") && e.contains("newer zib"), "{e}");
        let e = RequestLedger::from_json("requests.json", b"{\"version\":1}").unwrap_err();
        assert!(e.contains("requests.json: not a zib request ledger"), "{e}");
    }
}
