//! Trail delivery: the events a trail should get, as CloudTrail log files (`{"Records":[...]}`,
//! one gzip member, CloudTrail's key layout) in the trail's bucket, exactly once, announced to
//! the trail's topic.
//!
//! - [`layout`]: object keys and the deterministic unique part of a file name.
//! - [`filter`]: which events a trail gets and where each goes.
//! - [`files`]: grouping and compressing a plan's records into files.
//! - [`buckets`]: local and S3-compatible buckets through `object_store`.
//! - [`notify`]: delivery notifications to webhook subscribers.
//! - [`worker`]: the per-trail workers and the notifier (cursor, plan, commit).
//! - [`stream`]: log streaming to a trail's log group (file sets, syslog, HTTP NDJSON).

pub mod buckets;
mod chains;
pub mod digest;
pub mod files;
pub mod filter;
pub mod keys;
pub mod kms;
pub mod layout;
pub mod notify;
pub mod stream;
pub mod worker;

pub use buckets::{BucketError, Buckets, S3Target, Target, Written};
pub use filter::{Organization, TrailFilter, trail_selectors};
pub use keys::{Keyring, KeyringError, MasterKey, PublicKeyInfo, write_private};
pub use notify::{Topic, Topics};
pub use stream::{StreamStats, Streamer, groups::LogGroups};
pub use worker::{Deliverer, DeliveryConfig, DeliveryError, DeliveryStats};
