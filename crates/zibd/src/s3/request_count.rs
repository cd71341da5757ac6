//! Counts every request this process sends to S3, by the kind S3 bills it as.
//!
//! An SDK interceptor sees each attempt just before it goes out: a retried request is billed
//! again, so it is counted again. The counts of every client in the process go into one
//! counter, which [`take`] drains into the ledger of the state directory
//! (`crate::request_ledger`): the daemon's own bucket, a restore from another bucket and a
//! foreground command are all requests the user pays for.

use std::sync::Mutex;

use aws_sdk_s3::config::{
    ConfigBag, Intercept, RuntimeComponents, interceptors::BeforeTransmitInterceptorContextRef,
};
use zib_core::{
    StorageClass,
    pricing::RestoreTier,
    request_ledger::{RequestCounts, RequestKind},
};

static COUNTS: Mutex<RequestCounts> = Mutex::new(RequestCounts {
    put: std::collections::BTreeMap::new(),
    get: 0,
    head: 0,
    list: 0,
    delete: 0,
    restore: std::collections::BTreeMap::new(),
    other: 0,
});

/// The requests counted since the last `take`, leaving the counter at zero.
pub fn take() -> RequestCounts {
    std::mem::take(&mut *crate::sync::locked(&COUNTS))
}

/// Puts counts back that could not be recorded, so that a later `take` records them.
pub fn give_back(counts: &RequestCounts) {
    crate::sync::locked(&COUNTS).merge(counts);
}

/// What S3 bills a request as, from its method, URI and (RestoreObject) body.
pub fn classify(
    method: &str,
    uri: &str,
    storage_class: Option<&str>,
    body: Option<&[u8]>,
) -> RequestKind {
    let query = uri.split_once('?').map(|(_, q)| q).unwrap_or("");
    let has =
        |name: &str| query.split('&').any(|p| p == name || p.starts_with(&format!("{name}=")));
    match method {
        "PUT" if has("tagging") || has("acl") => RequestKind::Other,
        "PUT" => RequestKind::Put(
            storage_class.and_then(|c| c.parse().ok()).unwrap_or(StorageClass::Standard),
        ),
        "POST" if has("restore") => {
            let tier = body
                .map(String::from_utf8_lossy)
                .filter(|b| b.contains("<Tier>Standard</Tier>"))
                .map_or(RestoreTier::Bulk, |_| RestoreTier::Standard);
            RequestKind::Restore(tier)
        }
        "POST" if has("delete") => RequestKind::Delete,
        "POST" => RequestKind::Put(StorageClass::Standard),
        "GET" if has("list-type") => RequestKind::List,
        "GET" if has("tagging") || has("acl") || has("location") => RequestKind::Other,
        "GET" => RequestKind::Get,
        "HEAD" => RequestKind::Head,
        "DELETE" => RequestKind::Delete,
        _ => RequestKind::Other,
    }
}

/// The interceptor every zib S3 client carries.
#[derive(Debug, Clone, Copy, Default)]
pub struct CountRequests;

impl Intercept for CountRequests {
    fn name(&self) -> &'static str {
        "zib::CountRequests"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), aws_sdk_s3::error::BoxError> {
        let req = context.request();
        let kind = classify(
            req.method(),
            req.uri(),
            req.headers().get("x-amz-storage-class"),
            req.body().bytes(),
        );
        crate::sync::locked(&COUNTS).add(kind, 1);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_classified_as_s3_bills_them() {
        use RequestKind::*;
        let c = |m, u, class, body| classify(m, u, class, body);
        assert_eq!(
            c("PUT", "http://h/b/k", Some("DEEP_ARCHIVE"), None),
            Put(StorageClass::DeepArchive)
        );
        assert_eq!(
            c("PUT", "http://h/b/k?x-id=PutObject", None, None),
            Put(StorageClass::Standard)
        );
        assert_eq!(c("PUT", "http://h/b/k?tagging", None, None), Other);
        assert_eq!(c("GET", "http://h/b?list-type=2&prefix=p", None, None), List);
        assert_eq!(c("GET", "http://h/b/k?x-id=GetObject", None, None), Get);
        assert_eq!(c("GET", "http://h/b/k?tagging", None, None), Other);
        assert_eq!(c("HEAD", "http://h/b/k", None, None), Head);
        assert_eq!(c("DELETE", "http://h/b/k?x-id=DeleteObject", None, None), Delete);
        assert_eq!(c("POST", "http://h/b?delete", None, None), Delete);
        let bulk = b"<RestoreRequest><Days>7</Days><GlacierJobParameters><Tier>Bulk</Tier></GlacierJobParameters></RestoreRequest>";
        let std = b"<RestoreRequest><GlacierJobParameters><Tier>Standard</Tier></GlacierJobParameters></RestoreRequest>";
        assert_eq!(c("POST", "http://h/b/k?restore", None, Some(bulk)), Restore(RestoreTier::Bulk));
        assert_eq!(
            c("POST", "http://h/b/k?restore&x-id=RestoreObject", None, Some(std)),
            Restore(RestoreTier::Standard)
        );
        // A key that merely contains the word is not a sub-resource.
        assert_eq!(c("GET", "http://h/b/restore-list-type", None, None), Get);
    }
}
