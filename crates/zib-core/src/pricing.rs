//! The price table restore quotes use, and the quotes themselves.
//!
//! Defaults are the us-east-1 list prices collected in `COSTS.md` (S3 pricing page as quoted by
//! public sources, 2025–2026). They change: check <https://aws.amazon.com/s3/pricing/> before
//! relying on a quote, and override any of them in the config's optional `[pricing]` table:
//!
//! ```toml
//! [pricing]
//! bulk_retrieval_per_gb = 0.0025          # Deep Archive Bulk retrieval, $/GB
//! bulk_requests_per_1000 = 0.025          # Deep Archive Bulk restore requests, $/1,000
//! standard_retrieval_per_gb = 0.02        # Deep Archive Standard retrieval, $/GB
//! standard_requests_per_1000 = 0.10       # Deep Archive Standard restore requests, $/1,000
//! restored_copy_per_gb_month = 0.023      # the restored copy is billed at S3 STANDARD
//! get_requests_per_1000 = 0.0004          # GET and HEAD requests (S3 STANDARD price)
//! list_requests_per_1000 = 0.005          # LIST requests (S3 STANDARD price)
//! egress_per_gb = 0.09                    # data transfer out to the internet
//! egress_free_gb = 100.0                  # free transfer out per month
//! bulk_hours = 48                         # Bulk: restored within 48 hours
//! standard_hours = 12                     # Standard: restored within 12 hours
//! currency = "USD"
//!
//! [pricing.storage_per_gb_month]          # storage, $/GB-month, per class (any subset)
//! DEEP_ARCHIVE = 0.00099
//!
//! [pricing.min_storage_days]              # minimum storage duration, days, per class
//! DEEP_ARCHIVE = 180
//!
//! [pricing.put_requests_per_1000]         # PUT requests, $/1,000, per class of the object
//! DEEP_ARCHIVE = 0.05
//! ```
//!
//! Units and assumptions of a quote:
//! - "GB" is what AWS bills as a GB: 2^30 bytes.
//! - Retrieval and restore-request charges apply to the objects in an archive class
//!   (DEEP_ARCHIVE, GLACIER) only; objects in instant classes are read directly.
//! - The restored copy of each archived object is billed at the S3 STANDARD storage price for
//!   the `days` the restore asks for (a month is counted as 30 days).
//! - Every object (archived or not) is read once with a GET, and every byte leaves AWS once
//!   (egress), less the monthly free allowance (assumed unused).
//! - Storage is billed per GB-month at the class's price; an object in GLACIER or
//!   DEEP_ARCHIVE also pays 8 KiB at the STANDARD price and 32 KiB at its own for its index,
//!   and objects in STANDARD_IA, ONEZONE_IA and GLACIER_IR are billed as at least 128 KiB.
//! - Deleting an object before its class's minimum storage duration is billed as the storage
//!   of the remaining days (pro rata, a month counted as 30 days).
//! - Deep Archive has no Expedited tier, so there are only Bulk and Standard quotes. The table
//!   is for DEEP_ARCHIVE; GLACIER (Flexible Retrieval) objects are quoted with the same table,
//!   which over-estimates their retrieval time.

use std::{collections::BTreeMap, fmt, str::FromStr};

use serde::{Deserialize, Serialize};

use crate::storage_class::StorageClass;

/// Bytes in a billed GB.
pub const GB: f64 = (1u64 << 30) as f64;
/// Days in a billed month, for pro-rating the restored copy.
pub const DAYS_PER_MONTH: f64 = 30.0;
/// Per-object index overhead of GLACIER and DEEP_ARCHIVE objects: billed at STANDARD ...
pub const ARCHIVE_OVERHEAD_STANDARD_BYTES: u64 = 8 << 10;
/// ... and at the archive class's own price.
pub const ARCHIVE_OVERHEAD_ARCHIVE_BYTES: u64 = 32 << 10;
/// Smallest billed object in STANDARD_IA, ONEZONE_IA and GLACIER_IR.
pub const MIN_BILLABLE_BYTES: u64 = 128 << 10;

/// Default storage prices, $/GB-month (us-east-1 list prices, 2025–2026; INTELLIGENT_TIERING
/// at its frequent-access tier).
fn default_storage_prices() -> BTreeMap<StorageClass, f64> {
    use StorageClass::*;
    BTreeMap::from([
        (Standard, 0.023),
        (StandardIa, 0.0125),
        (OnezoneIa, 0.01),
        (IntelligentTiering, 0.023),
        (GlacierIr, 0.004),
        (Glacier, 0.0036),
        (DeepArchive, 0.00099),
    ])
}

/// Default minimum storage durations, days (S3 user guide, storage classes).
fn default_min_storage_days() -> BTreeMap<StorageClass, u32> {
    use StorageClass::*;
    BTreeMap::from([
        (Standard, 0),
        (StandardIa, 30),
        (OnezoneIa, 30),
        (IntelligentTiering, 0),
        (GlacierIr, 90),
        (Glacier, 90),
        (DeepArchive, 180),
    ])
}

/// Default PUT (and COPY, POST) request prices per class of the object written, $/1,000
/// (us-east-1 list prices, 2025–2026).
fn default_put_request_prices() -> BTreeMap<StorageClass, f64> {
    use StorageClass::*;
    BTreeMap::from([
        (Standard, 0.005),
        (StandardIa, 0.01),
        (OnezoneIa, 0.01),
        (IntelligentTiering, 0.005),
        (GlacierIr, 0.02),
        (Glacier, 0.03),
        (DeepArchive, 0.05),
    ])
}

/// Overrides per class, keyed by the class's S3 name; the classes not named keep their default.
fn merge_per_class<T: Copy>(
    table: &str,
    mut defaults: BTreeMap<StorageClass, T>,
    overrides: BTreeMap<String, T>,
) -> Result<BTreeMap<StorageClass, T>, String> {
    for (name, v) in overrides {
        let class: StorageClass = name.parse().map_err(|e| format!("pricing.{table}: {e}"))?;
        defaults.insert(class, v);
    }
    Ok(defaults)
}

/// Restore (thaw) tiers that Deep Archive offers.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum RestoreTier {
    /// Cheapest; within 48 hours for Deep Archive.
    #[default]
    Bulk,
    /// Within 12 hours for Deep Archive.
    Standard,
}

impl RestoreTier {
    pub const ALL: [RestoreTier; 2] = [Self::Bulk, Self::Standard];
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bulk => "bulk",
            Self::Standard => "standard",
        }
    }
}

impl FromStr for RestoreTier {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "bulk" => Ok(Self::Bulk),
            "standard" => Ok(Self::Standard),
            "expedited" => Err("the Expedited tier does not exist for DEEP_ARCHIVE: use bulk (within 48 h) or standard (within 12 h)".into()),
            _ => Err(format!("unknown restore tier {s:?}: expected bulk or standard")),
        }
    }
}

impl fmt::Display for RestoreTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The price table. Every field may be overridden in the config's `[pricing]` table; the
/// others keep these defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "PricingRepr")]
pub struct Pricing {
    pub currency: String,
    pub bulk_retrieval_per_gb: f64,
    pub bulk_requests_per_1000: f64,
    pub standard_retrieval_per_gb: f64,
    pub standard_requests_per_1000: f64,
    pub restored_copy_per_gb_month: f64,
    pub get_requests_per_1000: f64,
    /// LIST requests (`zibd verify` quotes its listing with it).
    pub list_requests_per_1000: f64,
    pub egress_per_gb: f64,
    pub egress_free_gb: f64,
    pub bulk_hours: u32,
    pub standard_hours: u32,
    /// Storage price per class, $/GB-month; every class has an entry.
    pub storage_per_gb_month: BTreeMap<StorageClass, f64>,
    /// Minimum storage duration per class, days; every class has an entry.
    pub min_storage_days: BTreeMap<StorageClass, u32>,
    /// PUT request price per class of the object written, $/1,000; every class has an entry.
    pub put_requests_per_1000: BTreeMap<StorageClass, f64>,
}

impl Default for Pricing {
    fn default() -> Self {
        Self {
            currency: "USD".into(),
            bulk_retrieval_per_gb: 0.0025,
            bulk_requests_per_1000: 0.025,
            standard_retrieval_per_gb: 0.02,
            standard_requests_per_1000: 0.10,
            restored_copy_per_gb_month: 0.023,
            get_requests_per_1000: 0.0004,
            list_requests_per_1000: 0.005,
            egress_per_gb: 0.09,
            egress_free_gb: 100.0,
            bulk_hours: 48,
            standard_hours: 12,
            storage_per_gb_month: default_storage_prices(),
            min_storage_days: default_min_storage_days(),
            put_requests_per_1000: default_put_request_prices(),
        }
    }
}

/// The same fields, parsed before the checks (negative or non-finite prices are refused).
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct PricingRepr {
    currency: String,
    bulk_retrieval_per_gb: f64,
    bulk_requests_per_1000: f64,
    standard_retrieval_per_gb: f64,
    standard_requests_per_1000: f64,
    restored_copy_per_gb_month: f64,
    get_requests_per_1000: f64,
    list_requests_per_1000: f64,
    egress_per_gb: f64,
    egress_free_gb: f64,
    bulk_hours: u32,
    standard_hours: u32,
    storage_per_gb_month: BTreeMap<String, f64>,
    min_storage_days: BTreeMap<String, u32>,
    put_requests_per_1000: BTreeMap<String, f64>,
}

impl Default for PricingRepr {
    fn default() -> Self {
        let p = Pricing::default();
        Self {
            currency: p.currency,
            bulk_retrieval_per_gb: p.bulk_retrieval_per_gb,
            bulk_requests_per_1000: p.bulk_requests_per_1000,
            standard_retrieval_per_gb: p.standard_retrieval_per_gb,
            standard_requests_per_1000: p.standard_requests_per_1000,
            restored_copy_per_gb_month: p.restored_copy_per_gb_month,
            get_requests_per_1000: p.get_requests_per_1000,
            list_requests_per_1000: p.list_requests_per_1000,
            egress_per_gb: p.egress_per_gb,
            egress_free_gb: p.egress_free_gb,
            bulk_hours: p.bulk_hours,
            standard_hours: p.standard_hours,
            storage_per_gb_month: BTreeMap::new(),
            min_storage_days: BTreeMap::new(),
            put_requests_per_1000: BTreeMap::new(),
        }
    }
}

impl TryFrom<PricingRepr> for Pricing {
    type Error = String;
    fn try_from(r: PricingRepr) -> Result<Self, String> {
        let p = Pricing {
            currency: r.currency,
            bulk_retrieval_per_gb: r.bulk_retrieval_per_gb,
            bulk_requests_per_1000: r.bulk_requests_per_1000,
            standard_retrieval_per_gb: r.standard_retrieval_per_gb,
            standard_requests_per_1000: r.standard_requests_per_1000,
            restored_copy_per_gb_month: r.restored_copy_per_gb_month,
            get_requests_per_1000: r.get_requests_per_1000,
            list_requests_per_1000: r.list_requests_per_1000,
            egress_per_gb: r.egress_per_gb,
            egress_free_gb: r.egress_free_gb,
            bulk_hours: r.bulk_hours,
            standard_hours: r.standard_hours,
            storage_per_gb_month: merge_per_class(
                "storage_per_gb_month",
                default_storage_prices(),
                r.storage_per_gb_month,
            )?,
            min_storage_days: merge_per_class(
                "min_storage_days",
                default_min_storage_days(),
                r.min_storage_days,
            )?,
            put_requests_per_1000: merge_per_class(
                "put_requests_per_1000",
                default_put_request_prices(),
                r.put_requests_per_1000,
            )?,
        };
        p.check()?;
        Ok(p)
    }
}

/// What a restore reads, as far as prices are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RestoreVolume {
    /// Every object the restore GETs, and their bytes.
    pub objects: u64,
    pub bytes: u64,
    /// Of those, the ones in an archive class (need RestoreObject first).
    pub archived_objects: u64,
    pub archived_bytes: u64,
}

/// The cost and time of one tier, in the table's currency.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TierQuote {
    pub tier: RestoreTier,
    /// Retrieval per GB of archived data.
    pub retrieval: f64,
    /// RestoreObject requests.
    pub restore_requests: f64,
    /// The restored copies, at STANDARD, for `days`.
    pub restored_copy: f64,
    /// GET requests.
    pub get_requests: f64,
    /// Transfer out beyond the free allowance.
    pub egress: f64,
    pub total: f64,
    /// Restored objects are ready within this many hours.
    pub ready_within_hours: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quote {
    pub currency: String,
    pub volume: RestoreVolume,
    pub days: u32,
    pub tiers: Vec<TierQuote>,
}

impl Quote {
    pub fn tier(&self, tier: RestoreTier) -> &TierQuote {
        self.tiers.iter().find(|t| t.tier == tier).expect("every tier is quoted")
    }
}

impl Pricing {
    /// Refuses negative or non-finite prices and a zero-hour tier.
    pub fn check(&self) -> Result<(), String> {
        let fields = [
            ("bulk_retrieval_per_gb", self.bulk_retrieval_per_gb),
            ("bulk_requests_per_1000", self.bulk_requests_per_1000),
            ("standard_retrieval_per_gb", self.standard_retrieval_per_gb),
            ("standard_requests_per_1000", self.standard_requests_per_1000),
            ("restored_copy_per_gb_month", self.restored_copy_per_gb_month),
            ("get_requests_per_1000", self.get_requests_per_1000),
            ("list_requests_per_1000", self.list_requests_per_1000),
            ("egress_per_gb", self.egress_per_gb),
            ("egress_free_gb", self.egress_free_gb),
        ];
        for (name, v) in fields {
            if !v.is_finite() || v < 0.0 {
                return Err(format!("pricing.{name} must be a non-negative number, got {v}"));
            }
        }
        for (table, prices) in [
            ("storage_per_gb_month", &self.storage_per_gb_month),
            ("put_requests_per_1000", &self.put_requests_per_1000),
        ] {
            for (class, v) in prices {
                if !v.is_finite() || *v < 0.0 {
                    return Err(format!(
                        "pricing.{table}.{class} must be a non-negative number, got {v}"
                    ));
                }
            }
        }
        if self.bulk_hours == 0 || self.standard_hours == 0 {
            return Err("pricing.bulk_hours and pricing.standard_hours must be at least 1".into());
        }
        if self.currency.trim().is_empty() {
            return Err("pricing.currency must not be empty".into());
        }
        Ok(())
    }

    /// (retrieval per GB, requests per 1,000, hours) of a tier.
    pub fn tier_prices(&self, tier: RestoreTier) -> (f64, f64, u32) {
        match tier {
            RestoreTier::Bulk => {
                (self.bulk_retrieval_per_gb, self.bulk_requests_per_1000, self.bulk_hours)
            }
            RestoreTier::Standard => (
                self.standard_retrieval_per_gb,
                self.standard_requests_per_1000,
                self.standard_hours,
            ),
        }
    }

    /// How long a thaw of `tier` takes at most, in hours (the table's `bulk_hours` /
    /// `standard_hours`).
    pub fn thaw_hours(&self, tier: RestoreTier) -> u32 {
        self.tier_prices(tier).2
    }

    /// The quote of one tier for a restore reading `v` and keeping restored copies `days` days.
    pub fn quote_tier(&self, v: &RestoreVolume, tier: RestoreTier, days: u32) -> TierQuote {
        let (per_gb, per_1000, hours) = self.tier_prices(tier);
        let archived_gb = v.archived_bytes as f64 / GB;
        let retrieval = archived_gb * per_gb;
        let restore_requests = v.archived_objects as f64 / 1000.0 * per_1000;
        let restored_copy =
            archived_gb * self.restored_copy_per_gb_month * f64::from(days) / DAYS_PER_MONTH;
        let get_requests = v.objects as f64 / 1000.0 * self.get_requests_per_1000;
        let egress = (v.bytes as f64 / GB - self.egress_free_gb).max(0.0) * self.egress_per_gb;
        let total = retrieval + restore_requests + restored_copy + get_requests + egress;
        TierQuote {
            tier,
            retrieval,
            restore_requests,
            restored_copy,
            get_requests,
            egress,
            total,
            ready_within_hours: if v.archived_objects == 0 { 0 } else { hours },
        }
    }

    /// Storage price of `class`, $/GB-month.
    pub fn storage_price(&self, class: StorageClass) -> f64 {
        self.storage_per_gb_month.get(&class).copied().unwrap_or(0.0)
    }

    /// Minimum storage duration of `class`, days (deleting earlier is charged).
    pub fn min_storage_days(&self, class: StorageClass) -> u32 {
        self.min_storage_days.get(&class).copied().unwrap_or(0)
    }

    /// The first moment an object stored in `class` since `since` may be deleted free of
    /// charge (its class's minimum storage duration later).
    pub fn free_deletion_from(
        &self,
        since: chrono::DateTime<chrono::Utc>,
        class: StorageClass,
    ) -> chrono::DateTime<chrono::Utc> {
        since + chrono::TimeDelta::days(i64::from(self.min_storage_days(class)))
    }

    /// Bytes of an object of `size` that the class bills as storage (its own price).
    fn billed_bytes(size: u64, class: StorageClass) -> u64 {
        use StorageClass::*;
        match class {
            StandardIa | OnezoneIa | GlacierIr => size.max(MIN_BILLABLE_BYTES),
            Glacier | DeepArchive => size + ARCHIVE_OVERHEAD_ARCHIVE_BYTES,
            Standard | IntelligentTiering => size,
        }
    }

    /// What storing one object of `size` bytes in `class` costs per month, overheads included.
    pub fn monthly_storage(&self, size: u64, class: StorageClass) -> f64 {
        let own = Self::billed_bytes(size, class) as f64 / GB * self.storage_price(class);
        let index = if matches!(class, StorageClass::Glacier | StorageClass::DeepArchive) {
            ARCHIVE_OVERHEAD_STANDARD_BYTES as f64 / GB * self.storage_price(StorageClass::Standard)
        } else {
            0.0
        };
        own + index
    }

    /// The charge for deleting an object of `size` bytes in `class` when it is `age_days` old:
    /// the storage of the days left of the minimum duration (0 once it has passed).
    pub fn early_deletion_charge(&self, size: u64, class: StorageClass, age_days: f64) -> f64 {
        let left = (f64::from(self.min_storage_days(class)) - age_days).max(0.0);
        Self::billed_bytes(size, class) as f64 / GB * self.storage_price(class) * left
            / DAYS_PER_MONTH
    }

    /// Quotes for every tier.
    pub fn quote(&self, v: &RestoreVolume, days: u32) -> Quote {
        Quote {
            currency: self.currency.clone(),
            volume: *v,
            days,
            tiers: RestoreTier::ALL.iter().map(|t| self.quote_tier(v, *t, days)).collect(),
        }
    }
}

/// Money with enough digits for small test restores (`$0.000123`) and readable large ones.
pub fn format_money(v: f64, currency: &str) -> String {
    let sym = if currency == "USD" { "$".to_owned() } else { format!("{currency} ") };
    if v >= 100.0 {
        format!("{sym}{v:.2}")
    } else if v >= 0.01 || v == 0.0 {
        format!("{sym}{v:.4}")
    } else {
        format!("{sym}{v:.6}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9 * b.abs().max(1.0)
    }

    #[test]
    fn one_tib_of_deep_archive_in_5gb_chunks() {
        // 1 TiB = 1024 billed GB, in 220 objects, all archived; restored copy kept 7 days.
        let v = RestoreVolume {
            objects: 220,
            bytes: 1 << 40,
            archived_objects: 220,
            archived_bytes: 1 << 40,
        };
        let q = Pricing::default().quote(&v, 7);
        let bulk = q.tier(RestoreTier::Bulk);
        assert!(close(bulk.retrieval, 1024.0 * 0.0025), "{bulk:?}"); // $2.56
        assert!(close(bulk.restore_requests, 0.22 * 0.025));
        assert!(close(bulk.restored_copy, 1024.0 * 0.023 * 7.0 / 30.0)); // $5.4955
        assert!(close(bulk.get_requests, 0.22 * 0.0004));
        assert!(close(bulk.egress, (1024.0 - 100.0) * 0.09)); // $83.16
        assert!(close(bulk.total, 2.56 + 0.0055 + 1024.0 * 0.023 * 7.0 / 30.0 + 0.000088 + 83.16));
        assert_eq!(bulk.ready_within_hours, 48);
        let std = q.tier(RestoreTier::Standard);
        assert!(close(std.retrieval, 1024.0 * 0.02)); // $20.48
        assert!(close(std.restore_requests, 0.22 * 0.10));
        assert!(close(std.restored_copy, bulk.restored_copy));
        assert_eq!(std.ready_within_hours, 12);
        assert!(std.total > bulk.total);
    }

    #[test]
    fn instant_objects_cost_no_retrieval_and_small_restores_no_egress() {
        let v =
            RestoreVolume { objects: 3, bytes: 3 << 20, archived_objects: 0, archived_bytes: 0 };
        let q = Pricing::default().quote(&v, 1);
        for t in &q.tiers {
            assert_eq!(
                (t.retrieval, t.restore_requests, t.restored_copy, t.egress, t.ready_within_hours),
                (0.0, 0.0, 0.0, 0.0, 0)
            );
            assert!(close(t.total, 3.0 / 1000.0 * 0.0004));
        }
    }

    #[test]
    fn overrides_from_toml_keep_the_other_defaults() {
        let p: Pricing =
            toml::from_str("bulk_retrieval_per_gb = 0.01\negress_free_gb = 0\n").unwrap();
        assert_eq!(p.bulk_retrieval_per_gb, 0.01);
        assert_eq!(p.egress_free_gb, 0.0);
        assert_eq!(p.standard_retrieval_per_gb, 0.02);
        let v = RestoreVolume {
            objects: 1,
            bytes: 1 << 30,
            archived_objects: 1,
            archived_bytes: 1 << 30,
        };
        let b = p.quote_tier(&v, RestoreTier::Bulk, 0);
        assert!(
            close(b.retrieval, 0.01) && close(b.egress, 0.09) && b.restored_copy == 0.0,
            "{b:?}"
        );
        let e = toml::from_str::<Pricing>("egress_per_gb = -1.0\n").unwrap_err().to_string();
        assert!(e.contains("egress_per_gb") && e.contains("non-negative"), "{e}");
        let e = toml::from_str::<Pricing>("expedited_per_gb = 1.0\n").unwrap_err().to_string();
        assert!(e.contains("unknown field"), "{e}");
    }

    #[test]
    fn storage_and_early_deletion_arithmetic() {
        let p = Pricing::default();
        let gib = 1u64 << 30;
        // 1 GiB in DEEP_ARCHIVE: (1 GiB + 32 KiB) at $0.00099 plus 8 KiB at $0.023.
        let want = (1.0 + 32.0 / 1048576.0) * 0.00099 + 8.0 / 1048576.0 * 0.023;
        assert!(close(p.monthly_storage(gib, StorageClass::DeepArchive), want));
        assert!(close(p.monthly_storage(gib, StorageClass::Standard), 0.023));
        // A 1 KiB object in STANDARD_IA is billed as 128 KiB.
        assert!(close(
            p.monthly_storage(1024, StorageClass::StandardIa),
            128.0 / 1048576.0 * 0.0125
        ));
        // 30 GiB deleted from DEEP_ARCHIVE at 120 days: 60 days left = 2 months of storage.
        let c = p.early_deletion_charge(30 * gib, StorageClass::DeepArchive, 120.0);
        let billed_gb = 30.0 + 32.0 / 1048576.0;
        assert!(close(c, billed_gb * 0.00099 * 2.0), "{c}");
        assert_eq!(p.early_deletion_charge(30 * gib, StorageClass::DeepArchive, 180.0), 0.0);
        assert_eq!(p.early_deletion_charge(gib, StorageClass::Standard, 0.0), 0.0);
        // GLACIER_IR, 90 days, 1 GiB deleted at day 0: 3 months at $0.004.
        assert!(close(p.early_deletion_charge(gib, StorageClass::GlacierIr, 0.0), 0.012));
        assert_eq!(
            [
                StorageClass::DeepArchive,
                StorageClass::Glacier,
                StorageClass::GlacierIr,
                StorageClass::StandardIa,
                StorageClass::OnezoneIa,
                StorageClass::Standard
            ]
            .map(|c| p.min_storage_days(c)),
            [180, 90, 90, 30, 30, 0]
        );
    }

    #[test]
    fn per_class_tables_are_overridable_one_class_at_a_time() {
        let p: Pricing = toml::from_str(
            "[storage_per_gb_month]\nDEEP_ARCHIVE = 0.002\n[min_storage_days]\nGLACIER = 91\n",
        )
        .unwrap();
        assert_eq!(p.storage_price(StorageClass::DeepArchive), 0.002);
        assert_eq!(p.storage_price(StorageClass::Standard), 0.023);
        assert_eq!(p.min_storage_days(StorageClass::Glacier), 91);
        assert_eq!(p.min_storage_days(StorageClass::DeepArchive), 180);
        let e =
            toml::from_str::<Pricing>("[min_storage_days]\nDEEP = 1\n").unwrap_err().to_string();
        assert!(e.contains("min_storage_days") && e.contains("DEEP"), "{e}");
        let e = toml::from_str::<Pricing>("[storage_per_gb_month]\nSTANDARD = -1.0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("storage_per_gb_month.STANDARD"), "{e}");
    }

    #[test]
    fn tiers_parse_and_expedited_is_explained() {
        assert_eq!("Bulk".parse::<RestoreTier>().unwrap(), RestoreTier::Bulk);
        assert_eq!("standard".parse::<RestoreTier>().unwrap(), RestoreTier::Standard);
        assert!("expedited".parse::<RestoreTier>().unwrap_err().contains("DEEP_ARCHIVE"));
        assert!("fast".parse::<RestoreTier>().is_err());
    }

    #[test]
    fn money_formatting() {
        assert_eq!(format_money(83.16, "USD"), "$83.1600");
        assert_eq!(format_money(1234.567, "USD"), "$1234.57");
        assert_eq!(format_money(0.000123, "EUR"), "EUR 0.000123");
    }
}

#[cfg(test)]
mod config_tests {
    use crate::config::Config;

    #[test]
    fn the_config_takes_an_optional_pricing_table() {
        let base = "[target]\nbucket = \"my-backups\"\n";
        let c = Config::parse(base, std::path::Path::new("x.toml")).unwrap();
        assert_eq!(c.pricing, super::Pricing::default());
        let c = Config::parse(
            &format!("{base}[pricing]\nstandard_hours = 10\n"),
            std::path::Path::new("x.toml"),
        )
        .unwrap();
        assert_eq!((c.pricing.standard_hours, c.pricing.bulk_hours), (10, 48));
        let e = Config::parse(
            &format!("{base}[pricing]\nbulk_retrieval_per_gb = -2\n"),
            std::path::Path::new("x.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("bulk_retrieval_per_gb"), "{e}");
    }
}
