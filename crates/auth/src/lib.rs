//! OpenTrail access control, pure and synchronous:
//!
//! - [`sigv4`]: verifying AWS Signature Version 4 (header and presigned forms);
//! - [`policy`]: the IAM policy grammar and its evaluation;
//! - [`directory`]: principals (root, users, groups), access keys and managed policies;
//! - [`iam`]: the admin API (IAM's actions) over the directory;
//! - `client` (feature `client`): signing requests for OpenTrail's own clients.

pub mod directory;
pub mod iam;
pub mod policy;
pub mod sigv4;

#[cfg(any(test, feature = "client"))]
pub mod client;

pub use directory::{Directory, Principal, PrincipalKind, Snapshot};
pub use policy::{Context, Decision, Policy};
pub use sigv4::{AuthError, Verified, Verifier};
