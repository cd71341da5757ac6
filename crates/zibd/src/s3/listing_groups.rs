//! One listing for the datasets of a tree instead of one each (issue 16's scale).
//!
//! A tree's members all run at the tree's tick, and each backup first lists its own key root
//! (the check that the local state is not behind the catalog): 500 members, 500 LISTs. Their
//! roots share the tree's key prefix, so one paged listing of that prefix (1,000 keys a
//! request) answers them all, when that costs fewer requests than a listing each
//! ([`zib_core::tree::one_listing_pays`], from the keys the last shared listing had).
//!
//! Why it stays right: a member is answered from the shared listing only while nothing was
//! written or deleted under its root through this store since the listing was taken (the
//! store records each key it PUTs or DELETEs here) and the listing is younger than
//! [`MAX_AGE`]; otherwise it lists its root itself. Writes made while the shared listing is
//! being fetched count as made after it (the listing may or may not show them). A dataset has one writer (the process
//! holding its lock), so what this store did not write did not change, short of someone
//! changing the bucket by hand, for which [`MAX_AGE`] is the bound. A listing every member
//! has used is dropped (its memory: ~150 bytes a key).

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use super::{ListedObject, S3Error, S3Store};
use crate::sync::locked;

/// How long a shared listing answers members.
pub const MAX_AGE: Duration = Duration::from_secs(15 * 60);

/// The groups of one store (shared by its clones; a store for another bucket has its own).
#[derive(Debug, Default)]
pub struct ListingGroups {
    groups: Mutex<Vec<Arc<Group>>>,
}

#[derive(Debug)]
struct Group {
    /// The key prefix every member's root starts with.
    prefix: String,
    members: Mutex<usize>,
    /// One shared listing at a time: members that ask while it is taken wait for it.
    listing: tokio::sync::Mutex<()>,
    taken: Mutex<Option<Taken>>,
    /// While a shared listing is fetched: the keys written meanwhile.
    written_while_fetching: Mutex<Option<Vec<String>>>,
    /// Keys the last shared listing had (None: never listed).
    keys_last: Mutex<Option<usize>>,
}

#[derive(Debug)]
struct Taken {
    at: Instant,
    /// In key order.
    objects: Vec<ListedObject>,
    /// Keys this store wrote or deleted under the prefix since.
    written: Vec<String>,
    /// Members answered from it.
    used: usize,
}

impl ListingGroups {
    /// The groups in force: (key prefix, members). A group whose prefix stays keeps its
    /// listing; the others go.
    pub fn set(&self, groups: Vec<(String, usize)>) {
        let mut now = locked(&self.groups);
        let old = std::mem::take(&mut *now);
        for (prefix, members) in groups {
            match old.iter().find(|g| g.prefix == prefix) {
                Some(g) => {
                    *locked(&g.members) = members;
                    now.push(g.clone());
                }
                None => now.push(Arc::new(Group {
                    prefix,
                    members: Mutex::new(members),
                    listing: tokio::sync::Mutex::new(()),
                    taken: Mutex::new(None),
                    written_while_fetching: Mutex::new(None),
                    keys_last: Mutex::new(None),
                })),
            }
        }
    }

    /// This store wrote or deleted `key`.
    pub fn wrote(&self, key: &str) {
        for g in locked(&self.groups).iter().filter(|g| key.starts_with(&g.prefix)) {
            if let Some(t) = locked(&g.taken).as_mut() {
                t.written.push(key.to_owned());
            }
            if let Some(w) = locked(&g.written_while_fetching).as_mut() {
                w.push(key.to_owned());
            }
        }
    }

    fn group_of(&self, root: &str) -> Option<Arc<Group>> {
        locked(&self.groups).iter().find(|g| root.starts_with(&g.prefix)).cloned()
    }

    /// Every object under `root` (a dataset's key root), from the shared listing of its group
    /// where that is good and pays, else from a listing of its own.
    pub async fn list_root(&self, s3: &S3Store, root: &str) -> Result<Vec<ListedObject>, S3Error> {
        let Some(g) = self.group_of(root) else {
            return s3.list(root).await;
        };
        if let Some(v) = g.answer(root) {
            return Ok(v);
        }
        let _one = g.listing.lock().await;
        if let Some(v) = g.answer(root) {
            return Ok(v);
        }
        let members = *locked(&g.members);
        if !zib_core::tree::one_listing_pays(members, *locked(&g.keys_last)) {
            return s3.list(root).await;
        }
        *locked(&g.written_while_fetching) = Some(Vec::new());
        let at = Instant::now();
        let listed = s3.list(&g.prefix).await;
        let written = locked(&g.written_while_fetching).take().unwrap_or_default();
        let objects = listed?;
        tracing::debug!(prefix = %g.prefix, keys = objects.len(), members, "one listing for a tree");
        *locked(&g.keys_last) = Some(objects.len());
        *locked(&g.taken) = Some(Taken { at, objects, written, used: 0 });
        match g.answer(root) {
            Some(v) => Ok(v),
            // This dataset wrote while the listing was fetched.
            None => s3.list(root).await,
        }
    }
}

impl Group {
    /// `root`'s objects from the shared listing, if it is young and nothing under `root` was
    /// written since.
    fn answer(&self, root: &str) -> Option<Vec<ListedObject>> {
        let mut taken = locked(&self.taken);
        let t = taken.as_mut()?;
        if t.at.elapsed() >= MAX_AGE {
            *taken = None;
            return None;
        }
        if t.written.iter().any(|k| k.starts_with(root)) {
            return None;
        }
        let from = t.objects.partition_point(|o| o.key.as_str() < root);
        let objects: Vec<ListedObject> =
            t.objects[from..].iter().take_while(|o| o.key.starts_with(root)).cloned().collect();
        t.used += 1;
        if t.used >= *locked(&self.members) {
            *taken = None;
        }
        Some(objects)
    }
}
