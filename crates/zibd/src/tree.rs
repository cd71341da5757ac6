//! Whole trees of datasets (`recursive = true`), carried out: lists each tree through
//! `zfs.rs` ([`Zfs::list_descendants`]), takes the members known before from the state
//! directory (a state file each) and the caller, and hands both to zib-core's
//! [`zib_core::tree::expand`], which decides. The daemon expands at start, at reload and at
//! each scheduled run of a tree ([`spawn_tickers`]); `zibd backup` when it is given a tree.

use std::collections::BTreeSet;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use zib_core::{
    Config, DatasetName,
    tree::{Expansion, Listings},
};

use crate::{job::JobContext, state_store::StateStore, zfs::Zfs};

/// An expansion and what it was made from.
#[derive(Debug, Clone)]
pub struct TreeView {
    pub expansion: Expansion,
    /// The listing of each tree root (the previous one where listing failed this time).
    pub listings: Listings,
    /// What to tell the operator: names refused, trees that could not be listed.
    pub notes: Vec<String>,
}

/// Lists the trees of `cfg` (only the one `only` is in, when given; the others keep their
/// `previous` listing) and expands. A tree that cannot be listed keeps its previous listing
/// (none: nothing of it is judged gone) and says so in the notes; a root that does not exist
/// lists as empty, so the members known before are gone.
pub async fn expand(
    cfg: &Config,
    zfs: &Zfs,
    store: &StateStore,
    previous: &Listings,
    also_known: impl IntoIterator<Item = DatasetName>,
    only: Option<&DatasetName>,
) -> TreeView {
    let mut listings = Listings::new();
    let mut notes = Vec::new();
    for root in zib_core::tree::roots(cfg) {
        if only.is_some_and(|o| zib_core::tree::listed_root_of(cfg, o).as_ref() != Some(&root)) {
            if let Some(l) = previous.get(&root) {
                listings.insert(root, l.clone());
            }
            continue;
        }
        match zfs.list_descendants(&root).await {
            Ok(d) => {
                for r in d.refused {
                    notes.push(format!("tree {root}: a dataset left out, its name refused: {r}"));
                }
                listings.insert(root, d.names);
            }
            Err(crate::zfs::ZfsError::NotFound { .. }) => {
                notes.push(format!("tree {root}: its root does not exist"));
                listings.insert(root, Vec::new());
            }
            Err(e) => {
                notes.push(format!("tree {root}: cannot list it ({e}); using the last listing"));
                if let Some(l) = previous.get(&root) {
                    listings.insert(root, l.clone());
                }
            }
        }
    }
    let known: BTreeSet<DatasetName> = store.datasets().into_iter().chain(also_known).collect();
    let expansion = zib_core::tree::expand(cfg, &listings, &known);
    notes.extend(expansion.refused.iter().cloned());
    for n in &notes {
        tracing::warn!("{n}");
    }
    TreeView { expansion, listings, notes }
}

/// One task per recursive entry of `cfg`: at each tick of the entry's schedule (no jitter) it
/// sends the root to `refresh`, which expands that tree again. They end when `stop` is
/// cancelled (a reload starts new ones) or at shutdown.
pub fn spawn_tickers(
    cfg: &Config,
    ctx: &JobContext,
    refresh: &mpsc::UnboundedSender<DatasetName>,
    stop: &CancellationToken,
) {
    for ds in cfg.datasets.iter().filter(|d| d.recursive) {
        let (schedule, tz, root) = (ds.schedule.clone(), cfg.daemon.timezone, ds.name.clone());
        let (clock, refresh, stop) = (ctx.clock.clone(), refresh.clone(), stop.clone());
        let shutdown = ctx.shutdown.clone();
        ctx.tracker.spawn(async move {
            let mut base = clock.now();
            while let Some(next) = schedule.next_after(base, tz) {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = shutdown.cancelled() => return,
                    () = clock.sleep_until(next) => {}
                }
                base = clock.now().max(next);
                if refresh.send(root.clone()).is_err() {
                    return;
                }
            }
        });
    }
}
