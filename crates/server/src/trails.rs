//! Trail operations (reference §2.1–2.10, §2.14, §2.15, §7): create, update, delete, describe,
//! get, list, status, start/stop logging, tags, and ListPublicKeys. Validation follows
//! CloudTrail's rules and exception names; all state lives in the catalog.

use std::sync::Arc;

use base64::Engine as _;
use opentrail_catalog::{Catalog, CatalogError, Tag as StoredTag, Trail};
use opentrail_model::names::{TrailArn, check_bucket_name, check_trail_name, is_valid_topic_name};
use opentrail_protocol::trails::{
    DescribeTrailsRequest, DescribeTrailsResponse, GetTrailResponse, ListPublicKeysRequest,
    ListPublicKeysResponse, ListTagsRequest, ListTagsResponse, ListTrailsResponse, NameRequest,
    PublicKey, ResourceTag, Tag, TagsRequest, TrailInfo, TrailSettings, TrailStatus, TrailSummary,
};
use opentrail_protocol::{ApiError, Exception};

use crate::App;
use crate::api::CallContext;

const MAX_PREFIX: usize = 200;
const MAX_TAGS: usize = 50;
const MAX_LIST_TAGS_RESOURCES: usize = 20;

fn err(exception: Exception, message: impl Into<String>) -> ApiError {
    ApiError::new(exception, message)
}

fn store_err(e: CatalogError) -> ApiError {
    match e {
        CatalogError::AlreadyExists(name) => err(
            Exception::TrailAlreadyExistsException,
            format!("Trail {name} already exists"),
        ),
        CatalogError::QuotaExceeded { region, max } => err(
            Exception::MaximumNumberOfTrailsExceededException,
            format!("the account already has {max} trails in {region}"),
        ),
        other => {
            tracing::error!(error = %other, "catalog failure");
            err(
                Exception::InternalFailure,
                "the catalog could not be read or written",
            )
        }
    }
}

/// Runs a catalog call on a blocking thread.
async fn with_catalog<T: Send + 'static>(
    app: &Arc<App>,
    f: impl FnOnce(&Catalog) -> Result<T, CatalogError> + Send + 'static,
) -> Result<T, ApiError> {
    let app = Arc::clone(app);
    tokio::task::spawn_blocking(move || f(&app.catalog))
        .await
        .map_err(|e| {
            err(
                Exception::InternalFailure,
                format!("catalog task failed: {e}"),
            )
        })?
        .map_err(store_err)
}

/// Changes one trail in one catalog transaction (see [`Catalog::modify`]).
async fn modify_trail<E: Send + 'static>(
    app: &Arc<App>,
    arn: String,
    change: impl FnOnce(&mut Trail) -> Result<(), E> + Send + 'static,
) -> Result<Result<Option<Trail>, E>, ApiError> {
    let max = app.settings.max_trails_per_region;
    with_catalog(app, move |c| c.modify(&arn, max, change)).await
}

/// Whether `account` sees organization trails of the management account.
fn in_organization(app: &App, account: &str) -> bool {
    app.settings.organization_id.is_some()
        && (app.settings.organization_management_account.as_deref() == Some(account)
            || app
                .settings
                .organization_members
                .iter()
                .any(|m| m == account))
}

/// Whether a trail is visible to the caller at all (own trail, or an organization trail of the
/// caller's organization).
fn visible(app: &App, ctx: &CallContext, t: &Trail) -> bool {
    t.account == ctx.account || (t.is_organization_trail && in_organization(app, &ctx.account))
}

/// The trails that exist in the caller's region: its own trails homed here, and (with shadows)
/// multi-region trails homed elsewhere and organization trails of its organization.
fn trails_in_region(app: &App, ctx: &CallContext, all: Vec<Trail>, shadows: bool) -> Vec<Trail> {
    all.into_iter()
        .filter(|t| visible(app, ctx, t))
        .filter(|t| {
            let home = t.home_region == ctx.region && t.account == ctx.account;
            let shadow =
                t.home_region != ctx.region && t.is_multi_region_trail && t.account == ctx.account;
            let org = t.account != ctx.account;
            home || (shadows && (shadow || org))
        })
        .collect()
}

/// Resolves a `Name` member (a name or an ARN) to a trail the caller can see.
pub(crate) async fn resolve(
    app: &Arc<App>,
    ctx: &CallContext,
    name_or_arn: &str,
) -> Result<Trail, ApiError> {
    let arn = if name_or_arn.starts_with("arn:") {
        TrailArn::parse(name_or_arn).ok_or_else(|| {
            err(
                Exception::CloudTrailARNInvalidException,
                format!("ARN {name_or_arn} is not valid."),
            )
        })?
    } else {
        check_trail_name(name_or_arn).map_err(|m| err(Exception::InvalidTrailNameException, m))?;
        TrailArn::new(&ctx.region, &ctx.account, name_or_arn)
    };
    let key = arn.to_string();
    let found = with_catalog(app, move |c| c.get(&key)).await?;
    match found {
        Some(t) if visible(app, ctx, &t) => Ok(t),
        _ => Err(err(
            Exception::TrailNotFoundException,
            format!("Unknown trail: {name_or_arn} for the user: {}", ctx.account),
        )),
    }
}

/// Mutations happen in the trail's home region, by the account that owns it.
fn check_owner_and_home(ctx: &CallContext, t: &Trail) -> Result<(), ApiError> {
    if t.account != ctx.account {
        return Err(err(
            Exception::NotOrganizationMasterAccountException,
            format!(
                "trail {} belongs to the organization's management account and can only be changed there",
                t.arn
            ),
        ));
    }
    if t.home_region != ctx.region {
        return Err(err(
            Exception::InvalidHomeRegionException,
            format!(
                "trail {} can only be changed in its home region {}",
                t.arn, t.home_region
            ),
        ));
    }
    Ok(())
}

fn info(t: &Trail, full: bool) -> TrailInfo {
    TrailInfo {
        name: t.name.clone(),
        s3_bucket_name: t.s3_bucket_name.clone(),
        s3_key_prefix: t.s3_key_prefix.clone(),
        sns_topic_name: t
            .sns_topic_arn
            .as_deref()
            .map(|a| a.rsplit(':').next().unwrap_or(a).to_owned()),
        sns_topic_arn: t.sns_topic_arn.clone(),
        include_global_service_events: t.include_global_service_events,
        is_multi_region_trail: t.is_multi_region_trail,
        home_region: full.then(|| t.home_region.clone()),
        trail_arn: t.arn.clone(),
        log_file_validation_enabled: t.log_file_validation_enabled,
        cloud_watch_logs_log_group_arn: t.cloud_watch_logs_log_group_arn.clone(),
        cloud_watch_logs_role_arn: t.cloud_watch_logs_role_arn.clone(),
        kms_key_id: t.kms_key_arn.clone(),
        has_custom_event_selectors: full.then_some(t.has_custom_event_selectors),
        has_insight_selectors: full.then_some(t.insight_selectors.is_some()),
        is_organization_trail: t.is_organization_trail,
    }
}

fn tags_valid(tags: &[Tag]) -> Result<(), ApiError> {
    let mut seen = std::collections::HashSet::new();
    for t in tags {
        if t.key.is_empty() || t.key.chars().count() > 128 {
            return Err(err(
                Exception::InvalidTagParameterException,
                format!("tag key {:?} must be 1 to 128 characters", t.key),
            ));
        }
        if let Some(v) = &t.value
            && v.chars().count() > 256
        {
            return Err(err(
                Exception::InvalidTagParameterException,
                format!("the value of tag {:?} is longer than 256 characters", t.key),
            ));
        }
        let allowed = |s: &str| {
            s.chars()
                .all(|c| c.is_alphanumeric() || c.is_whitespace() || "_.:/=+-@".contains(c))
        };
        if !allowed(&t.key) || t.value.as_deref().is_some_and(|v| !allowed(v)) {
            return Err(err(
                Exception::InvalidTagParameterException,
                format!(
                    "tag {:?} may contain only letters, digits, spaces and _ . : / = + - @",
                    t.key
                ),
            ));
        }
        if !seen.insert(t.key.as_str()) {
            return Err(err(
                Exception::InvalidTagParameterException,
                format!("tag key {:?} is given more than once", t.key),
            ));
        }
    }
    Ok(())
}

/// Settings checked against what OpenTrail has configured; the resolved values to store.
struct Checked {
    sns_topic_arn: Option<Option<String>>,
    kms_key_arn: Option<Option<String>>,
}

fn check_topic(app: &App, ctx: &CallContext, topic: &str) -> Result<Option<String>, ApiError> {
    if topic.is_empty() {
        return Ok(None);
    }
    let name = if topic.starts_with("arn:") {
        let parts: Vec<&str> = topic.split(':').collect();
        match parts.as_slice() {
            ["arn", _, "sns", _, acct, name] if *acct == ctx.account => (*name).to_owned(),
            _ => {
                return Err(err(
                    Exception::InvalidSnsTopicNameException,
                    format!("{topic} is not a valid SNS topic ARN"),
                ));
            }
        }
    } else {
        topic.to_owned()
    };
    if topic.len() > 256 || !is_valid_topic_name(&name) {
        return Err(err(
            Exception::InvalidSnsTopicNameException,
            format!("SNS topic name {topic:?} is not valid"),
        ));
    }
    if !app.settings.sns_topics.contains(&name) {
        return Err(err(
            Exception::InsufficientSnsTopicPolicyException,
            "SNS Topic does not exist or the topic policy is incorrect!",
        ));
    }
    Ok(Some(format!(
        "arn:aws:sns:{}:{}:{name}",
        ctx.region, ctx.account
    )))
}

/// Resolves a trail's `KmsKeyId` (key id, key ARN, `alias/Name`, alias ARN) to the full key ARN
/// through the key service, in the call's region. A malformed id is
/// `InvalidKmsKeyIdException`, a key that is not there `KmsKeyNotFoundException`, and a key that
/// is disabled or pending deletion `KmsException`, as CloudTrail answers.
fn check_kms(app: &App, ctx: &CallContext, key: &str) -> Result<Option<String>, ApiError> {
    use opentrail_delivery::kms::{KeyRef, KmsError};
    if key.is_empty() {
        return Ok(None);
    }
    let parsed = KeyRef::parse(key).map_err(|e| match e {
        KmsError::NotFound(_) if key.starts_with("alias/") => err(
            Exception::InvalidKmsKeyIdException,
            format!("{key} is not a valid KMS alias"),
        ),
        _ => err(
            Exception::InvalidKmsKeyIdException,
            format!("{key} is not a valid KMS key id, key ARN, alias or alias ARN"),
        ),
    })?;
    let store = app
        .kms
        .snapshot()
        .map_err(|e| err(Exception::KmsException, e.to_string()))?;
    let found = store
        .resolve(&ctx.account, &ctx.region, &parsed)
        .map_err(|_| {
            err(
                Exception::KmsKeyNotFoundException,
                format!("KMS key {key} does not exist in {}", ctx.region),
            )
        })?;
    found
        .usable(&ctx.account)
        .map_err(|e| err(Exception::KmsException, e.to_string()))?;
    Ok(Some(found.arn(&ctx.account)))
}

fn check_cloudwatch(app: &App, group: Option<&str>, role: Option<&str>) -> Result<(), ApiError> {
    match (
        group.filter(|g| !g.is_empty()),
        role.filter(|r| !r.is_empty()),
    ) {
        (None, None) => Ok(()),
        (Some(_), None) => Err(err(
            Exception::InvalidCloudWatchLogsRoleArnException,
            "CloudWatchLogsRoleArn is required with CloudWatchLogsLogGroupArn",
        )),
        (None, Some(_)) => Err(err(
            Exception::InvalidCloudWatchLogsLogGroupArnException,
            "CloudWatchLogsLogGroupArn is required with CloudWatchLogsRoleArn",
        )),
        (Some(g), Some(r)) => {
            let gp: Vec<&str> = g.splitn(7, ':').collect();
            let group_ok = matches!(gp.as_slice(), ["arn", _, "logs", _, acct, "log-group", _] if opentrail_model::ingest::is_valid_account(acct));
            if !group_ok {
                return Err(err(
                    Exception::InvalidCloudWatchLogsLogGroupArnException,
                    format!("{g} is not a log group ARN"),
                ));
            }
            let rp: Vec<&str> = r.splitn(6, ':').collect();
            let role_ok = matches!(rp.as_slice(), ["arn", _, "iam", "", acct, res] if opentrail_model::ingest::is_valid_account(acct) && res.starts_with("role/") && res.len() > 5);
            if !role_ok {
                return Err(err(
                    Exception::InvalidCloudWatchLogsRoleArnException,
                    format!("{r} is not an IAM role ARN"),
                ));
            }
            if !app.streamer.groups().contains(g) {
                return Err(err(
                    Exception::InvalidCloudWatchLogsLogGroupArnException,
                    format!("log group {g} does not exist"),
                ));
            }
            Ok(())
        }
    }
}

/// Checks every member given (Create: all required ones present) against the rules, in the
/// order CloudTrail reports them.
async fn check_settings(
    app: &Arc<App>,
    ctx: &CallContext,
    s: &TrailSettings,
    merged: &Trail,
) -> Result<Checked, ApiError> {
    if merged.is_multi_region_trail && !merged.include_global_service_events {
        return Err(err(
            Exception::InvalidParameterCombinationException,
            "Multi-Region trail must include global service events.",
        ));
    }
    if let Some(bucket) = &s.s3_bucket_name {
        check_bucket_name(bucket).map_err(|m| err(Exception::InvalidS3BucketNameException, m))?;
        let exists = app.delivery.buckets().exists(bucket).await.map_err(|e| {
            err(
                Exception::InsufficientS3BucketPolicyException,
                format!("S3 bucket {bucket} could not be checked: {e}"),
            )
        })?;
        if !exists {
            return Err(err(
                Exception::S3BucketDoesNotExistException,
                format!("S3 bucket {bucket} does not exist!"),
            ));
        }
    }
    if let Some(prefix) = &s.s3_key_prefix
        && prefix.chars().count() > MAX_PREFIX
    {
        return Err(err(
            Exception::InvalidS3PrefixException,
            format!("S3KeyPrefix is longer than {MAX_PREFIX} characters"),
        ));
    }
    let sns_topic_arn = s
        .sns_topic_name
        .as_deref()
        .map(|t| check_topic(app, ctx, t))
        .transpose()?;
    let kms_key_arn = s
        .kms_key_id
        .as_deref()
        .map(|k| check_kms(app, ctx, k))
        .transpose()?;
    let given_cw =
        s.cloud_watch_logs_log_group_arn.is_some() || s.cloud_watch_logs_role_arn.is_some();
    if given_cw {
        check_cloudwatch(
            app,
            merged.cloud_watch_logs_log_group_arn.as_deref(),
            merged.cloud_watch_logs_role_arn.as_deref(),
        )?;
    }
    if merged.is_organization_trail && s.is_organization_trail == Some(true) {
        if app.settings.organization_id.is_none() {
            return Err(err(
                Exception::OrganizationsNotInUseException,
                "this account is not a member of an organization",
            ));
        }
        if app.settings.organization_management_account.as_deref() != Some(ctx.account.as_str()) {
            return Err(err(
                Exception::NotOrganizationMasterAccountException,
                "only the organization's management account can create or update an organization trail",
            ));
        }
    }
    Ok(Checked {
        sns_topic_arn,
        kms_key_arn,
    })
}

/// Applies the members present in `s` to `t` (without the resolved, checked ones). `log_end` is
/// the event log's end now: a trail pointed at another log group streams from there.
fn apply_plain(t: &mut Trail, s: &TrailSettings, log_end: u64) {
    if let Some(b) = &s.s3_bucket_name {
        t.s3_bucket_name = b.clone();
    }
    if let Some(p) = &s.s3_key_prefix {
        t.s3_key_prefix = Some(p.clone()).filter(|p| !p.is_empty());
    }
    if let Some(v) = s.include_global_service_events {
        t.include_global_service_events = v;
    }
    if let Some(v) = s.is_multi_region_trail {
        t.is_multi_region_trail = v;
    }
    if let Some(v) = s.enable_log_file_validation {
        t.log_file_validation_enabled = v;
    }
    if let Some(v) = s.is_organization_trail {
        t.is_organization_trail = v;
    }
    if let Some(g) = &s.cloud_watch_logs_log_group_arn {
        let group = Some(g.clone()).filter(|g| !g.is_empty());
        if group != t.cloud_watch_logs_log_group_arn {
            t.cloud_watch_logs_since = group.as_ref().map(|_| log_end);
        }
        t.cloud_watch_logs_log_group_arn = group;
    }
    if let Some(r) = &s.cloud_watch_logs_role_arn {
        t.cloud_watch_logs_role_arn = Some(r.clone()).filter(|r| !r.is_empty());
    }
}

fn apply_checked(t: &mut Trail, c: Checked) {
    if let Some(v) = c.sns_topic_arn {
        t.sns_topic_arn = v;
    }
    if let Some(v) = c.kms_key_arn {
        t.kms_key_arn = v;
    }
}

pub(crate) async fn create_trail(
    app: &Arc<App>,
    ctx: &CallContext,
    s: TrailSettings,
) -> Result<TrailInfo, ApiError> {
    check_trail_name(&s.name).map_err(|m| err(Exception::InvalidTrailNameException, m))?;
    if s.s3_bucket_name.is_none() {
        return Err(err(
            Exception::InvalidParameterException,
            "S3BucketName is required",
        ));
    }
    let tags = s.tags_list.clone().unwrap_or_default();
    if tags.len() > MAX_TAGS {
        return Err(err(
            Exception::TagsLimitExceededException,
            format!("a trail can have at most {MAX_TAGS} tags"),
        ));
    }
    tags_valid(&tags)?;
    let mut trail = Trail::new(
        TrailArn::new(&ctx.region, &ctx.account, &s.name).to_string(),
        s.name.clone(),
        ctx.account.clone(),
        ctx.region.clone(),
        String::new(),
        ctx.now_ms,
    );
    trail.tags = tags
        .into_iter()
        .map(|t| StoredTag {
            key: t.key,
            value: t.value,
        })
        .collect();
    apply_plain(&mut trail, &s, app.log.durable_end().next_seq);
    let checked = check_settings(app, ctx, &s, &trail).await?;
    apply_checked(&mut trail, checked);
    let max = app.settings.max_trails_per_region;
    let stored = trail.clone();
    let created = {
        let app = Arc::clone(app);
        tokio::task::spawn_blocking(move || app.catalog.create(&stored, max))
            .await
            .map_err(|e| {
                err(
                    Exception::InternalFailure,
                    format!("catalog task failed: {e}"),
                )
            })?
    };
    match created {
        Ok(()) => Ok(info(&trail, false)),
        Err(CatalogError::AlreadyExists(name)) => Err(err(
            Exception::TrailAlreadyExistsException,
            format!("Trail {name} already exists for customer: {}", ctx.account),
        )),
        Err(CatalogError::QuotaExceeded { region, max }) => Err(err(
            Exception::MaximumNumberOfTrailsExceededException,
            format!("User: {} already has {max} trails in {region}", ctx.account),
        )),
        Err(e) => Err(store_err(e)),
    }
}

pub(crate) async fn update_trail(
    app: &Arc<App>,
    ctx: &CallContext,
    s: TrailSettings,
) -> Result<TrailInfo, ApiError> {
    let current = resolve(app, ctx, &s.name).await?;
    check_owner_and_home(ctx, &current)?;
    let mut merged = current.clone();
    apply_plain(&mut merged, &s, app.log.durable_end().next_seq);
    let checked = check_settings(app, ctx, &s, &merged).await?;
    apply_checked(&mut merged, checked);
    let stored = merged.clone();
    let arn = current.arn.clone();
    let updated = modify_trail(app, arn, move |t| -> Result<(), ()> {
        // Logging state, its spans and tags may have changed meanwhile; keep them.
        let keep = (
            t.is_logging,
            t.start_logging_ms,
            t.stop_logging_ms,
            t.tags.clone(),
            std::mem::take(&mut t.logging_spans),
        );
        *t = stored;
        (
            t.is_logging,
            t.start_logging_ms,
            t.stop_logging_ms,
            t.tags,
            t.logging_spans,
        ) = keep;
        Ok(())
    })
    .await?;
    match updated {
        Ok(Some(t)) => Ok(info(&t, false)),
        _ => Err(err(
            Exception::TrailNotFoundException,
            format!("Unknown trail: {} for the user: {}", s.name, ctx.account),
        )),
    }
}

pub(crate) async fn delete_trail(
    app: &Arc<App>,
    ctx: &CallContext,
    req: NameRequest,
) -> Result<(), ApiError> {
    let t = resolve(app, ctx, &req.name).await?;
    check_owner_and_home(ctx, &t)?;
    // What the trail logged is delivered and its digest chains end with a last digest before
    // it goes; a bucket that refuses (or is slow) does not keep the trail from being deleted.
    let finishing = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        app.delivery.finish(&t.arn),
    )
    .await;
    match finishing {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(trail = %t.arn, error = %e, "deleting a trail whose last delivery or digest failed")
        }
        Err(_) => {
            tracing::warn!(trail = %t.arn, "deleting a trail whose last delivery or digest timed out")
        }
    }
    let arn = t.arn.clone();
    with_catalog(app, move |c| c.delete(&arn)).await?;
    Ok(())
}

pub(crate) async fn get_trail(
    app: &Arc<App>,
    ctx: &CallContext,
    req: NameRequest,
) -> Result<GetTrailResponse, ApiError> {
    let t = resolve(app, ctx, &req.name).await?;
    Ok(GetTrailResponse {
        trail: info(&t, true),
    })
}

pub(crate) async fn describe_trails(
    app: &Arc<App>,
    ctx: &CallContext,
    req: DescribeTrailsRequest,
) -> Result<DescribeTrailsResponse, ApiError> {
    let names = req.trail_name_list.unwrap_or_default();
    let shadows = req.include_shadow_trails.unwrap_or(true);
    if names.is_empty() {
        let all = with_catalog(app, |c| c.all_trails()).await?;
        let trail_list = trails_in_region(app, ctx, all, shadows)
            .iter()
            .map(|t| info(t, true))
            .collect();
        return Ok(DescribeTrailsResponse { trail_list });
    }
    let mut trail_list = Vec::new();
    for n in names {
        match resolve(app, ctx, &n).await {
            Ok(t) => {
                if !trail_list.iter().any(|i: &TrailInfo| i.trail_arn == t.arn) {
                    trail_list.push(info(&t, true));
                }
            }
            Err(e) if e.exception == Exception::TrailNotFoundException => {}
            Err(e) => return Err(e),
        }
    }
    Ok(DescribeTrailsResponse { trail_list })
}

pub(crate) async fn list_trails(
    app: &Arc<App>,
    ctx: &CallContext,
) -> Result<ListTrailsResponse, ApiError> {
    let all = with_catalog(app, |c| c.all_trails()).await?;
    let trails = trails_in_region(app, ctx, all, true)
        .into_iter()
        .map(|t| TrailSummary {
            trail_arn: t.arn,
            name: t.name,
            home_region: t.home_region,
        })
        .collect();
    Ok(ListTrailsResponse {
        trails,
        next_token: None,
    })
}

fn iso(ms: i64) -> String {
    opentrail_model::time::format_event_time(ms)
}

pub(crate) async fn get_trail_status(
    app: &Arc<App>,
    ctx: &CallContext,
    req: NameRequest,
) -> Result<TrailStatus, ApiError> {
    let t = resolve(app, ctx, &req.name).await?;
    let arn = t.arn.clone();
    let d = with_catalog(app, move |c| c.delivery_state(&arn))
        .await?
        .unwrap_or_default();
    let stream = {
        let (streamer, t) = (Arc::clone(&app.streamer), t.clone());
        tokio::task::spawn_blocking(move || streamer.state_for(&t))
            .await
            .map_err(|e| err(Exception::InternalFailure, e.to_string()))?
            .map_err(|e| err(Exception::InternalFailure, e.to_string()))?
            .unwrap_or_default()
    };
    let secs = |ms: Option<i64>| ms.map(|ms| ms as f64 / 1000.0);
    Ok(TrailStatus {
        is_logging: t.is_logging,
        start_logging_time: secs(t.start_logging_ms),
        stop_logging_time: secs(t.stop_logging_ms),
        time_logging_started: t.start_logging_ms.map(iso),
        time_logging_stopped: t.stop_logging_ms.map(iso),
        latest_delivery_error: d.latest_delivery_error,
        latest_notification_error: d.latest_notification_error,
        latest_delivery_time: secs(d.latest_delivery_time_ms),
        latest_notification_time: secs(d.latest_notification_time_ms),
        latest_delivery_attempt_time: d.latest_delivery_attempt_ms.map(iso),
        latest_notification_attempt_time: d.latest_notification_attempt_ms.map(iso),
        latest_delivery_attempt_succeeded: d.latest_delivery_attempt_succeeded_ms.map(iso),
        latest_notification_attempt_succeeded: d.latest_notification_attempt_succeeded_ms.map(iso),
        latest_digest_delivery_time: secs(d.latest_digest_delivery_time_ms),
        latest_digest_delivery_error: d.latest_digest_delivery_error,
        latest_cloud_watch_logs_delivery_time: secs(stream.latest_delivery_ms),
        latest_cloud_watch_logs_delivery_error: stream.latest_error,
    })
}

/// StartLogging / StopLogging. Starting opens a logging span at the log's durable end, so the
/// StartLogging record itself is delivered. Stopping leaves the span open until the StopLogging
/// record has its sequence number ([`seal_stop`]), so that record is delivered too.
pub(crate) async fn set_logging(
    app: &Arc<App>,
    ctx: &CallContext,
    req: NameRequest,
    on: bool,
) -> Result<(), ApiError> {
    let t = resolve(app, ctx, &req.name).await?;
    check_owner_and_home(ctx, &t)?;
    let now = ctx.now_ms;
    let arn = t.arn.clone();
    let log_end = app.log.durable_end().next_seq;
    let stopped = arn.clone();
    modify_trail(app, arn, move |t| -> Result<(), ()> {
        if on && !t.is_logging {
            t.is_logging = true;
            t.start_logging_ms = Some(now);
            t.open_span(log_end);
        } else if !on && t.is_logging {
            t.is_logging = false;
            t.stop_logging_ms = Some(now);
        }
        Ok(())
    })
    .await?
    .map_err(|()| {
        err(
            Exception::InternalFailure,
            "logging state could not be changed",
        )
    })?;
    if !on {
        let _ = ctx.stopped_trail.set(stopped);
    }
    Ok(())
}

/// Closes a stopped trail's logging span just after the StopLogging record (`record_seq`).
pub(crate) async fn seal_stop(app: &Arc<App>, arn: String, record_seq: u64) {
    let sealed = modify_trail(app, arn.clone(), move |t| -> Result<(), ()> {
        if !t.is_logging {
            t.close_span(record_seq + 1);
        }
        Ok(())
    })
    .await;
    if let Err(e) = sealed {
        // The span is closed at the log's end on the next start instead.
        tracing::error!(trail = %arn, error = ?e, "could not seal the logging span after StopLogging");
    }
}

/// Resolves a tag operation's `ResourceId`, which must be a trail ARN.
async fn tag_target(app: &Arc<App>, ctx: &CallContext, resource: &str) -> Result<Trail, ApiError> {
    if !resource.starts_with("arn:") {
        return Err(err(
            Exception::CloudTrailARNInvalidException,
            format!("{resource} is not an ARN"),
        ));
    }
    if !resource.contains(":cloudtrail:") || !resource.contains(":trail/") {
        return Err(err(
            Exception::ResourceTypeNotSupportedException,
            format!("{resource}: only trails can be tagged on this server"),
        ));
    }
    resolve(app, ctx, resource)
        .await
        .map_err(|e| match e.exception {
            Exception::TrailNotFoundException => err(
                Exception::ResourceNotFoundException,
                format!("Resource {resource} does not exist"),
            ),
            _ => e,
        })
}

pub(crate) async fn add_tags(
    app: &Arc<App>,
    ctx: &CallContext,
    req: TagsRequest,
) -> Result<(), ApiError> {
    let t = tag_target(app, ctx, &req.resource_id).await?;
    check_owner_and_home(ctx, &t)?;
    tags_valid(&req.tags_list)?;
    let arn = t.arn.clone();
    let added = req.tags_list;
    modify_trail(app, arn, move |t| {
        for tag in added {
            match t.tags.iter_mut().find(|x| x.key == tag.key) {
                Some(existing) => existing.value = tag.value,
                None => t.tags.push(StoredTag {
                    key: tag.key,
                    value: tag.value,
                }),
            }
        }
        if t.tags.len() > MAX_TAGS {
            return Err(err(
                Exception::TagsLimitExceededException,
                format!("a trail can have at most {MAX_TAGS} tags"),
            ));
        }
        Ok(())
    })
    .await??;
    Ok(())
}

pub(crate) async fn remove_tags(
    app: &Arc<App>,
    ctx: &CallContext,
    req: TagsRequest,
) -> Result<(), ApiError> {
    let t = tag_target(app, ctx, &req.resource_id).await?;
    check_owner_and_home(ctx, &t)?;
    tags_valid(&req.tags_list)?;
    let arn = t.arn.clone();
    let keys: Vec<String> = req.tags_list.into_iter().map(|t| t.key).collect();
    modify_trail(app, arn, move |t| -> Result<(), ApiError> {
        t.tags.retain(|x| !keys.contains(&x.key));
        Ok(())
    })
    .await??;
    Ok(())
}

pub(crate) async fn list_tags(
    app: &Arc<App>,
    ctx: &CallContext,
    req: ListTagsRequest,
) -> Result<ListTagsResponse, ApiError> {
    if req.resource_id_list.is_empty() || req.resource_id_list.len() > MAX_LIST_TAGS_RESOURCES {
        return Err(err(
            Exception::InvalidParameterException,
            format!("ResourceIdList must name 1 to {MAX_LIST_TAGS_RESOURCES} resources"),
        ));
    }
    if req.next_token.is_some() {
        return Err(err(
            Exception::InvalidTokenException,
            "NextToken is not valid",
        ));
    }
    let mut out = Vec::with_capacity(req.resource_id_list.len());
    for id in req.resource_id_list {
        let t = tag_target(app, ctx, &id).await?;
        out.push(ResourceTag {
            resource_id: id,
            tags_list: t
                .tags
                .into_iter()
                .map(|x| Tag {
                    key: x.key,
                    value: x.value,
                })
                .collect(),
        });
    }
    Ok(ListTagsResponse {
        resource_tag_list: out,
    })
}

/// ListPublicKeys: the request region's digest signing keys whose validity overlaps the range
/// (both ends default to now, which gives the current key).
pub(crate) async fn list_public_keys(
    app: &Arc<App>,
    ctx: &CallContext,
    req: ListPublicKeysRequest,
) -> Result<ListPublicKeysResponse, ApiError> {
    if req.next_token.is_some() {
        return Err(err(
            Exception::InvalidTokenException,
            "NextToken is not valid: every key is returned in one page",
        ));
    }
    let now = ctx.now_ms;
    let start = req.start_time.map_or(now, |t| t.0);
    let end = req.end_time.map_or(now, |t| t.0);
    if start > end {
        return Err(err(
            Exception::InvalidTimeRangeException,
            "StartTime must not be after EndTime",
        ));
    }
    let keyring = Arc::clone(app.delivery.keyring());
    let region = ctx.region.clone();
    let keys = tokio::task::spawn_blocking(move || keyring.public_keys(&region, start, end))
        .await
        .map_err(|e| err(Exception::InternalFailure, e.to_string()))?
        .map_err(|e| err(Exception::InternalFailure, e.to_string()))?;
    Ok(ListPublicKeysResponse {
        public_key_list: keys
            .into_iter()
            .map(|k| PublicKey {
                value: base64::engine::general_purpose::STANDARD.encode(&k.der),
                validity_start_time: k.valid_from_ms as f64 / 1000.0,
                validity_end_time: k.valid_to_ms as f64 / 1000.0,
                fingerprint: k.fingerprint,
            })
            .collect(),
    })
}

use opentrail_model::selectors::{Selectors, logs_management, validate_advanced, validate_basic};
use opentrail_protocol::trails::{
    EventSelectorsResponse, InsightSelector, InsightSelectorsResponse, PutEventSelectorsRequest,
    PutInsightSelectorsRequest, TrailNameRequest,
};

/// The selectors in force on a trail (CloudTrail's defaults when none were put).
pub(crate) fn selectors_of(t: &Trail) -> Result<Selectors, ApiError> {
    opentrail_delivery::trail_selectors(t).map_err(|e| {
        err(
            Exception::InternalFailure,
            format!("stored selectors of {} are unreadable: {e}", t.arn),
        )
    })
}

fn selectors_response(t: &Trail) -> Result<EventSelectorsResponse, ApiError> {
    Ok(match selectors_of(t)? {
        Selectors::Basic(b) => EventSelectorsResponse {
            trail_arn: t.arn.clone(),
            event_selectors: Some(b),
            advanced_event_selectors: None,
        },
        Selectors::Advanced(a) => EventSelectorsResponse {
            trail_arn: t.arn.clone(),
            event_selectors: None,
            advanced_event_selectors: Some(a),
        },
    })
}

fn trail_name(req: &TrailNameRequest) -> Result<&str, ApiError> {
    match (&req.trail_name, &req.event_data_store) {
        (Some(_), Some(_)) => Err(err(
            Exception::InvalidParameterCombinationException,
            "give TrailName or EventDataStore, not both",
        )),
        (None, Some(_)) => Err(err(
            Exception::UnsupportedOperationException,
            "event data stores are not implemented by this OpenTrail server yet",
        )),
        (Some(n), None) => Ok(n),
        (None, None) => Err(err(
            Exception::InvalidParameterException,
            "TrailName is required",
        )),
    }
}

pub(crate) async fn put_event_selectors(
    app: &Arc<App>,
    ctx: &CallContext,
    req: PutEventSelectorsRequest,
) -> Result<EventSelectorsResponse, ApiError> {
    let t = resolve(app, ctx, &req.trail_name).await?;
    check_owner_and_home(ctx, &t)?;
    let invalid = |m: String| err(Exception::InvalidEventSelectorsException, m);
    let (basic, advanced) = match (req.event_selectors, req.advanced_event_selectors) {
        (Some(_), Some(_)) => {
            return Err(err(
                Exception::InvalidParameterCombinationException,
                "give EventSelectors or AdvancedEventSelectors, not both",
            ));
        }
        (None, None) => {
            return Err(invalid(
                "EventSelectors or AdvancedEventSelectors is required".into(),
            ));
        }
        (Some(b), None) => {
            validate_basic(&b).map_err(invalid)?;
            (Some(b), None)
        }
        (None, Some(a)) => {
            validate_advanced(&a).map_err(invalid)?;
            (None, Some(a))
        }
    };
    let basic_json = basic.as_ref().map(to_stored).transpose()?;
    let advanced_json = advanced.as_ref().map(to_stored).transpose()?;
    let arn = t.arn.clone();
    let updated = modify_trail(app, arn, move |t| -> Result<(), ()> {
        t.event_selectors = basic_json;
        t.advanced_event_selectors = advanced_json;
        t.has_custom_event_selectors = true;
        Ok(())
    })
    .await?;
    match updated {
        Ok(Some(t)) => selectors_response(&t),
        _ => Err(err(
            Exception::TrailNotFoundException,
            format!(
                "Unknown trail: {} for the user: {}",
                req.trail_name, ctx.account
            ),
        )),
    }
}

/// Serializes selector lists for the catalog.
fn to_stored<T: serde::Serialize>(value: &T) -> Result<serde_json::Value, ApiError> {
    serde_json::to_value(value).map_err(|e| err(Exception::InternalFailure, e.to_string()))
}

pub(crate) async fn get_event_selectors(
    app: &Arc<App>,
    ctx: &CallContext,
    req: TrailNameRequest,
) -> Result<EventSelectorsResponse, ApiError> {
    let t = resolve(app, ctx, trail_name(&req)?).await?;
    selectors_response(&t)
}

pub(crate) async fn put_insight_selectors(
    app: &Arc<App>,
    ctx: &CallContext,
    req: PutInsightSelectorsRequest,
) -> Result<InsightSelectorsResponse, ApiError> {
    let name_req = TrailNameRequest {
        trail_name: req.trail_name.clone(),
        event_data_store: req.event_data_store.clone(),
    };
    if req.insights_destination.is_some() && req.event_data_store.is_none() {
        return Err(err(
            Exception::InvalidParameterCombinationException,
            "InsightsDestination goes with EventDataStore only",
        ));
    }
    let t = resolve(app, ctx, trail_name(&name_req)?).await?;
    check_owner_and_home(ctx, &t)?;
    let invalid = |m: String| err(Exception::InvalidInsightSelectorsException, m);
    let selectors = selectors_of(&t)?;
    let logs_data = match &selectors {
        Selectors::Basic(b) => b
            .iter()
            .any(|s| s.data_resources.as_ref().is_some_and(|d| !d.is_empty())),
        Selectors::Advanced(a) => a.iter().any(|s| {
            s.field_selectors.iter().any(|f| {
                f.field == "eventCategory" && f.equals.iter().flatten().any(|v| v == "Data")
            })
        }),
    };
    let mut seen = Vec::new();
    for s in &req.insight_selectors {
        let kind = s.insight_type.as_deref().unwrap_or("");
        let needs_write = match kind {
            "ApiCallRateInsight" => true,
            "ApiErrorRateInsight" => false,
            other => {
                return Err(invalid(format!(
                    "InsightType {other:?} is not ApiCallRateInsight or ApiErrorRateInsight"
                )));
            }
        };
        if seen.contains(&kind) {
            return Err(invalid(format!(
                "InsightType {kind} is given more than once"
            )));
        }
        seen.push(kind);
        let categories = s
            .event_categories
            .clone()
            .unwrap_or_else(|| vec!["Management".into()]);
        for c in &categories {
            match c.as_str() {
                "Management" if !logs_management(&selectors, needs_write) => {
                    return Err(invalid(format!(
                        "{kind} needs the trail to log {} management events",
                        if needs_write {
                            "write"
                        } else {
                            "read or write"
                        }
                    )));
                }
                "Data" if !logs_data => {
                    return Err(invalid(format!(
                        "{kind} on data events needs the trail to log data events"
                    )));
                }
                "Management" | "Data" => {}
                other => {
                    return Err(invalid(format!(
                        "EventCategories value {other:?} is not Management or Data"
                    )));
                }
            }
        }
    }
    let stored = if req.insight_selectors.is_empty() {
        None
    } else {
        Some(to_stored(&req.insight_selectors)?)
    };
    let arn = t.arn.clone();
    modify_trail(app, arn, move |t| -> Result<(), ()> {
        t.insight_selectors = stored;
        Ok(())
    })
    .await?
    .map_err(|()| {
        err(
            Exception::InternalFailure,
            "insight selectors could not be stored",
        )
    })?;
    Ok(InsightSelectorsResponse {
        trail_arn: t.arn,
        insight_selectors: req.insight_selectors,
    })
}

pub(crate) async fn get_insight_selectors(
    app: &Arc<App>,
    ctx: &CallContext,
    req: TrailNameRequest,
) -> Result<InsightSelectorsResponse, ApiError> {
    let t = resolve(app, ctx, trail_name(&req)?).await?;
    let Some(stored) = &t.insight_selectors else {
        return Err(err(
            Exception::InsightNotEnabledException,
            format!("Trail {} does not have Insights enabled.", t.arn),
        ));
    };
    let insight_selectors: Vec<InsightSelector> =
        serde_json::from_value(stored.clone()).map_err(|e| {
            err(
                Exception::InternalFailure,
                format!("stored insight selectors are unreadable: {e}"),
            )
        })?;
    Ok(InsightSelectorsResponse {
        trail_arn: t.arn,
        insight_selectors,
    })
}
