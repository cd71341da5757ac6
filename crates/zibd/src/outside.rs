//! How the engines reach the systems outside zibd where that is not the default: which `zfs`
//! binary runs (with what environment of its own) and which S3 credentials sign requests. The
//! binaries take it from their environment ([`Outside::from_env`]); tests and programs that
//! embed zibd's engines give their own, so nothing needs to change the process environment.

use crate::zfs::Zfs;

/// S3 credentials given directly (their `Debug` redacts the secret, not the access key ID).
pub type S3Credentials = aws_sdk_s3::config::Credentials;

#[derive(Clone, Default)]
pub struct Outside {
    /// The `zfs` every engine runs.
    pub zfs: Zfs,
    /// None: the standard AWS chain (environment, profile, instance role), never the config.
    pub s3_credentials: Option<S3Credentials>,
}

/// Says whether credentials were given, never which (not even the access key ID).
impl std::fmt::Debug for Outside {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let creds = if self.s3_credentials.is_some() { "given" } else { "the AWS chain" };
        f.debug_struct("Outside").field("zfs", &self.zfs).field("s3_credentials", &creds).finish()
    }
}

impl Outside {
    /// What `zibd` uses: `ZIB_ZFS_BIN` (else `zfs` on PATH), the standard credentials chain.
    pub fn from_env() -> Self {
        Self { zfs: Zfs::from_env(), s3_credentials: None }
    }
}
