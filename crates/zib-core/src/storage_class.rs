//! The S3 storage classes zib writes chunks in, by their S3 names, and which of them need a thaw
//! before a GET. Used by the config, the manifests, the price table and the lifecycle.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// S3 storage classes zib can write chunks in.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(try_from = "String", into = "String")]
pub enum StorageClass {
    Standard,
    StandardIa,
    OnezoneIa,
    IntelligentTiering,
    GlacierIr,
    Glacier,
    #[default]
    DeepArchive,
}

impl StorageClass {
    pub const ALL: [StorageClass; 7] = [
        Self::Standard,
        Self::StandardIa,
        Self::OnezoneIa,
        Self::IntelligentTiering,
        Self::GlacierIr,
        Self::Glacier,
        Self::DeepArchive,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Standard => "STANDARD",
            Self::StandardIa => "STANDARD_IA",
            Self::OnezoneIa => "ONEZONE_IA",
            Self::IntelligentTiering => "INTELLIGENT_TIERING",
            Self::GlacierIr => "GLACIER_IR",
            Self::Glacier => "GLACIER",
            Self::DeepArchive => "DEEP_ARCHIVE",
        }
    }
    /// Whether a GET needs a RestoreObject (thaw) first.
    pub fn needs_thaw(self) -> bool {
        matches!(self, Self::Glacier | Self::DeepArchive)
    }
}

impl FromStr for StorageClass {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL.into_iter().find(|c| c.as_str() == s).ok_or_else(|| {
            let names: Vec<_> = Self::ALL.iter().map(|c| c.as_str()).collect();
            format!("unknown storage class {s:?}: expected one of {}", names.join(", "))
        })
    }
}
impl TryFrom<String> for StorageClass {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}
impl From<StorageClass> for String {
    fn from(c: StorageClass) -> String {
        c.as_str().into()
    }
}
impl fmt::Display for StorageClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
