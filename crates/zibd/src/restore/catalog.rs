//! The catalog: every manifest under a prefix, read from the bucket alone (no local state).
//!
//! One bad object under the prefix must not hide every backup: a manifest that cannot be
//! read (denied, gone since the listing, too large), is not a zib manifest, is of a newer
//! format, or names another dataset is skipped with a warning naming its key, and the catalog
//! is made of the rest. A chain that needed a skipped manifest then fails as a broken chain
//! whose message lists what was skipped. Errors that say nothing about one object (network,
//! throttling) still fail the whole listing.

use futures::{StreamExt, TryStreamExt};
use zib_core::{
    DatasetName, Manifest, SnapName,
    catalog::Catalog,
    names::{dataset_of_manifest_key, normalize_prefix},
    restore_plan::RestorePlan,
};

use super::{
    RestoreEngine, RestoreError,
    thaw::{MAX_THAW_EXPIRIES, ManifestThaw, thaw_object},
};
use crate::s3::{ListedObject, ManifestGetError, S3ErrorKind, S3Store};

/// Every dataset's catalog found under a prefix.
#[derive(Debug, Clone)]
pub struct BucketCatalog {
    pub bucket: String,
    pub prefix: String,
    pub datasets: Vec<Catalog>,
    /// Manifests left out, and why.
    pub skipped: Vec<SkippedManifest>,
}

/// A manifest the catalog left out.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SkippedManifest {
    pub key: String,
    /// The dataset its key names.
    pub dataset: DatasetName,
    pub reason: String,
}

impl BucketCatalog {
    /// "; N manifests of `dataset` were skipped: KEY (why), ..." or "" when none were.
    pub fn skipped_note(&self, dataset: &DatasetName) -> String {
        let of: Vec<_> = self.skipped.iter().filter(|s| &s.dataset == dataset).collect();
        if of.is_empty() {
            return String::new();
        }
        let list: Vec<_> = of.iter().map(|s| format!("{} ({})", s.key, s.reason)).collect();
        format!(
            "; {} manifest(s) of {dataset} were skipped as unreadable: {}",
            of.len(),
            list.join(", ")
        )
    }
}

impl BucketCatalog {
    /// The catalog of `dataset`, or of the only dataset when None.
    pub fn select(&self, dataset: Option<&DatasetName>) -> Result<&Catalog, RestoreError> {
        let names =
            || self.datasets.iter().map(|c| c.dataset.as_str()).collect::<Vec<_>>().join(", ");
        match dataset {
            Some(d) => self.datasets.iter().find(|c| &c.dataset == d).ok_or_else(|| {
                RestoreError::DatasetChoice(format!(
                    "no backups of {d} under s3://{}/{} (found: {}){}",
                    self.bucket,
                    self.prefix,
                    names(),
                    self.skipped_note(d)
                ))
            }),
            None if self.datasets.len() == 1 => Ok(&self.datasets[0]),
            None => Err(RestoreError::DatasetChoice(format!(
                "s3://{}/{} holds backups of several datasets ({}); choose one with --dataset",
                self.bucket,
                self.prefix,
                names()
            ))),
        }
    }
}

/// Lists and reads every manifest under `prefix` (only `dataset`'s when given). An archived
/// manifest is thawed first when `thaw` says how (a run), else skipped with the reason.
pub async fn load_catalog(
    s3: &S3Store,
    prefix: &str,
    dataset: Option<&DatasetName>,
    thaw: Option<ManifestThaw<'_>>,
) -> Result<BucketCatalog, RestoreError> {
    Ok(load_catalog_and_listing(s3, prefix, dataset, thaw).await?.0)
}

/// [`load_catalog`], and the listing it was read from (every object under the listed prefix).
pub async fn load_catalog_and_listing(
    s3: &S3Store,
    prefix: &str,
    dataset: Option<&DatasetName>,
    thaw: Option<ManifestThaw<'_>>,
) -> Result<(BucketCatalog, Vec<ListedObject>), RestoreError> {
    let prefix = normalize_prefix(prefix);
    let list_prefix = match dataset {
        Some(d) => zib_core::KeyLayout::new(&prefix, d).root().to_owned(),
        None => prefix.clone(),
    };
    let listing = s3.list(&list_prefix).await?;
    let keys: Vec<(DatasetName, String)> = listing
        .iter()
        .filter_map(|o| dataset_of_manifest_key(&prefix, &o.key).map(|d| (d, o.key.clone())))
        .collect();
    if keys.is_empty() {
        return Err(RestoreError::NoCatalog { bucket: s3.bucket().into(), prefix: list_prefix });
    }
    let futs: Vec<_> = keys.into_iter().map(|(d, key)| read_manifest(s3, d, key, thaw)).collect();
    let read: Vec<Result<Manifest, SkippedManifest>> =
        futures::stream::iter(futs).buffered(8).try_collect().await?;
    let mut by_ds: std::collections::BTreeMap<DatasetName, Vec<Manifest>> = Default::default();
    let mut skipped = Vec::new();
    for r in read {
        match r {
            Ok(m) => by_ds.entry(m.dataset.clone()).or_default().push(m),
            Err(s) => {
                tracing::warn!(key = %s.key, reason = %s.reason, "skipping an unreadable manifest; the catalog is made of the others");
                skipped.push(s);
            }
        }
    }
    if by_ds.is_empty() {
        let list: Vec<_> = skipped.iter().map(|s| format!("{} ({})", s.key, s.reason)).collect();
        return Err(RestoreError::Manifest(format!(
            "no readable manifest under s3://{}/{list_prefix}; skipped: {}",
            s3.bucket(),
            list.join(", ")
        )));
    }
    let catalog = BucketCatalog {
        bucket: s3.bucket().into(),
        prefix,
        datasets: by_ds.into_iter().map(|(d, ms)| Catalog::new(d, ms)).collect(),
        skipped,
    };
    Ok((catalog, listing))
}

/// Reads one manifest; Ok(Err) when it is to be skipped (see the module's header).
async fn read_manifest(
    s3: &S3Store,
    d: DatasetName,
    key: String,
    thaw: Option<ManifestThaw<'_>>,
) -> Result<Result<Manifest, SkippedManifest>, RestoreError> {
    let skip =
        |reason: String| Ok(Err(SkippedManifest { key: key.clone(), dataset: d.clone(), reason }));
    let mut thaws = 0;
    let m = loop {
        let e = match s3.get_manifest(&key).await {
            Ok(m) => break m,
            Err(ManifestGetError::Invalid(e)) => return skip(e.to_string()),
            Err(ManifestGetError::S3(e)) => e,
        };
        match (e.kind(), thaw) {
            (S3ErrorKind::NotThawed, Some(t)) if thaws < MAX_THAW_EXPIRIES => {
                thaws += 1;
                thaw_object(s3, &key, t).await?;
            }
            (S3ErrorKind::NotThawed, _) => {
                return skip(format!(
                    "{e}: it is archived (a bucket lifecycle rule on the prefix?); `zibd restore run` thaws it first"
                ));
            }
            (S3ErrorKind::NotFound | S3ErrorKind::AccessDenied | S3ErrorKind::TooLarge, _) => {
                return skip(e.to_string());
            }
            _ => return Err(e.into()),
        }
    };
    if m.dataset != d {
        return skip(format!("it describes dataset {}, but its key is under {d}", m.dataset));
    }
    Ok(Ok(m))
}

/// The plan of a restore of `dataset@snapshot` from the bucket (`thaw`: see [`load_catalog`]).
pub async fn plan(
    engine: &RestoreEngine,
    dataset: Option<&DatasetName>,
    snapshot: Option<&SnapName>,
    thaw: Option<ManifestThaw<'_>>,
) -> Result<RestorePlan, RestoreError> {
    let cat = load_catalog(&engine.s3, &engine.prefix, dataset, thaw).await?;
    let c = cat.select(dataset)?;
    RestorePlan::new(&cat.prefix, c, snapshot).map_err(|e| {
        let note = cat.skipped_note(&c.dataset);
        if note.is_empty() { e.into() } else { RestoreError::ChainSkipped(format!("{e}{note}")) }
    })
}
