//! The catalog: every manifest under a prefix, read from the bucket alone (no local state).

use futures::{StreamExt, TryStreamExt};
use zib_core::{
    DatasetName, Manifest, SnapName,
    catalog::Catalog,
    names::{dataset_of_manifest_key, normalize_prefix},
    restore_plan::RestorePlan,
};

use super::{RestoreEngine, RestoreError};
use crate::s3::S3Store;

/// Every dataset's catalog found under a prefix.
#[derive(Debug, Clone)]
pub struct BucketCatalog {
    pub bucket: String,
    pub prefix: String,
    pub datasets: Vec<Catalog>,
}

impl BucketCatalog {
    /// The catalog of `dataset`, or of the only dataset when None.
    pub fn select(&self, dataset: Option<&DatasetName>) -> Result<&Catalog, RestoreError> {
        let names =
            || self.datasets.iter().map(|c| c.dataset.as_str()).collect::<Vec<_>>().join(", ");
        match dataset {
            Some(d) => self.datasets.iter().find(|c| &c.dataset == d).ok_or_else(|| {
                RestoreError::DatasetChoice(format!(
                    "no backups of {d} under s3://{}/{} (found: {})",
                    self.bucket,
                    self.prefix,
                    names()
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

/// Lists and reads every manifest under `prefix` (only `dataset`'s when given).
pub async fn load_catalog(
    s3: &S3Store,
    prefix: &str,
    dataset: Option<&DatasetName>,
) -> Result<BucketCatalog, RestoreError> {
    let prefix = normalize_prefix(prefix);
    let list_prefix = match dataset {
        Some(d) => zib_core::KeyLayout::new(&prefix, d).root().to_owned(),
        None => prefix.clone(),
    };
    let keys: Vec<(DatasetName, String)> = s3
        .list(&list_prefix)
        .await?
        .into_iter()
        .filter_map(|o| dataset_of_manifest_key(&prefix, &o.key).map(|d| (d, o.key)))
        .collect();
    if keys.is_empty() {
        return Err(RestoreError::NoCatalog { bucket: s3.bucket().into(), prefix: list_prefix });
    }
    let futs: Vec<_> = keys.into_iter().map(|(d, key)| read_manifest(s3, d, key)).collect();
    let manifests: Vec<(DatasetName, Manifest)> =
        futures::stream::iter(futs).buffered(8).try_collect().await?;
    let mut by_ds: std::collections::BTreeMap<DatasetName, Vec<Manifest>> = Default::default();
    for (d, m) in manifests {
        by_ds.entry(d).or_default().push(m);
    }
    Ok(BucketCatalog {
        bucket: s3.bucket().into(),
        prefix,
        datasets: by_ds.into_iter().map(|(d, ms)| Catalog::new(d, ms)).collect(),
    })
}

async fn read_manifest(
    s3: &S3Store,
    d: DatasetName,
    key: String,
) -> Result<(DatasetName, Manifest), RestoreError> {
    let bytes = s3.get_bytes(&key, 64 << 20).await?;
    let m = Manifest::from_json(&key, &bytes).map_err(|e| RestoreError::Manifest(e.to_string()))?;
    if m.dataset != d {
        return Err(RestoreError::Manifest(format!(
            "{key} describes dataset {}, not {d}",
            m.dataset
        )));
    }
    Ok((d, m))
}

/// The plan of a restore of `dataset@snapshot` from the bucket.
pub async fn plan(
    engine: &RestoreEngine,
    dataset: Option<&DatasetName>,
    snapshot: Option<&SnapName>,
) -> Result<RestorePlan, RestoreError> {
    let cat = load_catalog(&engine.s3, &engine.prefix, dataset).await?;
    let c = cat.select(dataset)?;
    Ok(RestorePlan::new(&cat.prefix, c, snapshot)?)
}
