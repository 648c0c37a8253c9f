//! OpenTrail's data model: the CloudTrail record, its time format, ingest validation, and the
//! LookupEvents attributes. Pure: no IO, no clock (callers pass `now`). Every other crate builds on
//! these types; nothing here depends on them.

pub mod ingest;
pub mod lookup;
pub mod names;
pub mod record;
pub mod selectors;
pub mod time;

pub use ingest::{
    Accepted, Category, IngestContext, IngestError, IngestLimits, Reason, accept_body,
};
pub use lookup::{AttributeKey, LookupKeys, LookupResource};
pub use record::{EVENT_VERSION, Record};
