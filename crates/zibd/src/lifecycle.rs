//! Carries out the lifecycle decisions of `zib_core::lifecycle`: gathers what they look at
//! from the bucket (the current chain, for the re-baseline decision) and runs what they decide.

use zib_core::{
    KeyLayout, Manifest,
    lifecycle::{ChainSummary, RebaselineDecision, RebaselinePolicy, RebaselineReason},
};

use crate::s3::{ListedObject, S3Error, S3Store};

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error(transparent)]
    S3(#[from] S3Error),
    #[error("the catalog in the bucket is unreadable: {0}")]
    Catalog(String),
}

/// The chain the newest backup (`newest_key`) belongs to, read back link by link from the
/// bucket (one GET per link), full first. `Err(detail)` inside when a link is missing: the
/// chain is not restorable from the bucket, so it must not be extended.
pub async fn current_chain(
    s3: &S3Store,
    layout: &KeyLayout,
    listing: &[ListedObject],
    newest_key: &str,
) -> Result<Result<Vec<Manifest>, String>, LifecycleError> {
    let read = |key: String| async move {
        let bytes = match s3.get_bytes(&key, 64 << 20).await {
            Ok(b) => b,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(LifecycleError::S3(e)),
        };
        Manifest::from_json(&key, &bytes)
            .map(Some)
            .map_err(|e| LifecycleError::Catalog(e.to_string()))
    };
    let mut manifests: Vec<(u64, &str)> = listing
        .iter()
        .filter_map(|o| layout.parse_manifest_key(&o.key).map(|(seq, _)| (seq, o.key.as_str())))
        .collect();
    manifests.sort_unstable();
    let Some(newest) = read(newest_key.to_owned()).await? else {
        return Ok(Err(format!("the newest backup's manifest {newest_key} is not in the bucket")));
    };
    let mut chain = vec![newest];
    while let Some(base) = chain.last().expect("not empty").from.clone() {
        let cur_seq = chain.last().expect("not empty").seq;
        let mut found = None;
        for (seq, key) in manifests.iter().rev().filter(|(s, _)| *s < cur_seq) {
            if layout.parse_manifest_key(key).is_some_and(|(_, snap)| snap == base.name) {
                let Some(m) = read((*key).to_owned()).await? else { continue };
                if m.to.guid == base.guid {
                    found = Some(m);
                    break;
                }
                tracing::debug!(seq, %key, "same snapshot name, other GUID: not the base");
            }
        }
        match found {
            Some(m) => chain.push(m),
            None => {
                return Ok(Err(format!(
                    "backup #{cur_seq} is an incremental from {} (guid {}), whose manifest is not in the bucket",
                    base.name, base.guid
                )));
            }
        }
    }
    chain.reverse();
    Ok(Ok(chain))
}

/// Full or incremental for the next backup of a dataset whose newest committed backup has
/// the manifest `newest_key` (None: there is none).
pub async fn decide_rebaseline(
    s3: &S3Store,
    layout: &KeyLayout,
    listing: &[ListedObject],
    newest_key: Option<&str>,
    policy: &RebaselinePolicy,
    now: chrono::DateTime<chrono::Utc>,
    force_full: bool,
) -> Result<RebaselineDecision, LifecycleError> {
    let Some(newest_key) = newest_key.filter(|_| !force_full) else {
        return Ok(policy.decide(None, now, force_full));
    };
    if *policy == RebaselinePolicy::OFF {
        // No rule looks at the chain: skip the GETs.
        return Ok(RebaselineDecision::Incremental);
    }
    match current_chain(s3, layout, listing, newest_key).await? {
        Ok(chain) => {
            let refs: Vec<&Manifest> = chain.iter().collect();
            let summary = ChainSummary::from_chain(&refs).ok_or_else(|| {
                LifecycleError::Catalog(format!(
                    "the chain of {newest_key} does not start with a full"
                ))
            })?;
            Ok(policy.decide(Some(&summary), now, false))
        }
        Err(detail) => Ok(RebaselineDecision::Full(RebaselineReason::BrokenChain { detail })),
    }
}
