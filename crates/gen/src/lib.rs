//! Realistic synthetic CloudTrail management events, deterministic from a seed.
//!
//! The generator is what the benchmarks feed every engine, and what `opentrail gen` prints. Its
//! records have CloudTrail's shape (user identities of IAM users, assumed roles, AWS services and
//! the root user; request parameters and response elements; resources; TLS details) and a spread
//! that looks like an account's real traffic:
//!
//! - about 580 event names over 32 event sources, chosen with a Zipf law, reads four times as likely;
//! - 301 principals (IAM users, roles with daily sessions, AWS services, root), also Zipf;
//!   IAM users hold one or two long-term keys, role sessions get a new `ASIA` key each day;
//! - tens of thousands of resources, popular ones far more often (log-uniform);
//! - about 3% failed calls, with CloudTrail's error codes and messages;
//! - sizes from 0.5 to 8 KB, median about 1.5 KB (log-normal, filled with tags and items of
//!   random ids, so the bytes compress like real records rather than like padding);
//! - event times spread over the span with a daily cycle (busiest at 15:00 UTC) and quiet
//!   weekends, in order, with up to 30 s of jitter as delivery delays give.
//!
//! Event `i` depends only on the seed, the stream's `first`, `count` and time span, and `i`; a
//! generator holds only its catalogs and streams any number of events.

use std::fmt::Write as _;
use std::sync::LazyLock;

/// What stream to generate.
#[derive(Debug, Clone)]
pub struct Config {
    pub seed: u64,
    /// Index of the first event (events are numbered; a stream may start anywhere).
    pub first: u64,
    /// Events in the stream; their times spread over the span in order.
    pub count: u64,
    /// The newest event time, in seconds since the epoch.
    pub end_s: i64,
    /// The span of event times, in days, ending at `end_s` (1..=3650).
    pub days: u32,
    pub account: String,
    pub region: String,
}

impl Config {
    pub fn new(seed: u64, first: u64, count: u64, end_s: i64) -> Self {
        Self {
            seed,
            first,
            count,
            end_s,
            days: 7,
            account: "111122223333".to_owned(),
            region: "us-east-1".to_owned(),
        }
    }
}

/// One generated event: its record and the values LookupEvents finds it by.
#[derive(Debug, Clone)]
pub struct Event {
    pub event_id: String,
    pub time_s: i64,
    pub name: String,
    pub source: String,
    /// The Username lookup value (empty for AWS service principals, which have none).
    pub user: String,
    /// The AccessKeyId lookup value (empty when the caller used no key).
    pub key: String,
    pub read_only: bool,
    /// The resource's ARN (the ResourceName lookup value).
    pub resource: String,
    pub resource_type: String,
    pub error_code: Option<&'static str>,
    /// The record as compact JSON.
    pub json: String,
}

/// SplitMix64: a small, well-mixed, reproducible generator.
struct Mix(u64);

impl Mix {
    fn new(seed: u64, stream: u64) -> Self {
        let mut m = Self(seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03));
        m.next();
        m
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in 0..n (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
    /// Standard normal (Box-Muller).
    fn normal(&mut self) -> f64 {
        let u = self.unit().max(1e-12);
        let v = self.unit();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
    /// Log-uniform in 0..n: small values much more often (a popularity law for resources).
    fn popular(&mut self, n: u64) -> u64 {
        ((n as f64 + 1.0).powf(self.unit()) - 1.0) as u64
    }
    fn hex(&mut self, out: &mut String, digits: usize) {
        for _ in 0..digits {
            let d = self.below(16) as u32;
            out.push(char::from_digit(d, 16).unwrap_or('0'));
        }
    }
    fn upper_alnum(&mut self, out: &mut String, n: usize) {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
        for _ in 0..n {
            out.push(A[self.below(A.len() as u64) as usize] as char);
        }
    }
    fn uuid(&mut self) -> String {
        let mut s = String::with_capacity(36);
        self.hex(&mut s, 8);
        s.push('-');
        self.hex(&mut s, 4);
        s.push_str("-4");
        self.hex(&mut s, 3);
        s.push('-');
        s.push(['8', '9', 'a', 'b'][self.below(4) as usize]);
        self.hex(&mut s, 3);
        s.push('-');
        self.hex(&mut s, 12);
        s
    }
}

/// FNV-1a: a stable hash of a name, to seed per-name streams.
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A cumulative weight table to draw from.
struct Weighted {
    cdf: Vec<f64>,
}

impl Weighted {
    fn new(weights: impl IntoIterator<Item = f64>) -> Self {
        let mut total = 0.0;
        let cdf = weights
            .into_iter()
            .map(|w| {
                total += w;
                total
            })
            .collect();
        Self { cdf }
    }
    fn total(&self) -> f64 {
        self.cdf.last().copied().unwrap_or(0.0)
    }
    fn draw(&self, rng: &mut Mix) -> usize {
        let x = rng.unit() * self.total();
        self.cdf
            .partition_point(|&c| c <= x)
            .min(self.cdf.len().saturating_sub(1))
    }
}

/// (event source prefix, CloudFormation service name, read verbs, write verbs, nouns)
type ServiceRow = (
    &'static str,
    &'static str,
    &'static [&'static str],
    &'static [&'static str],
    &'static [&'static str],
);

const SERVICES: [ServiceRow; 32] = [
    (
        "ec2",
        "EC2",
        &["Describe"],
        &["Create", "Delete", "Modify"],
        &[
            "Instance",
            "Volume",
            "Snapshot",
            "SecurityGroup",
            "Vpc",
            "Subnet",
            "Image",
            "NetworkInterface",
            "KeyPair",
            "RouteTable",
        ],
    ),
    (
        "s3",
        "S3",
        &["Get", "List"],
        &["Put", "Delete"],
        &[
            "BucketPolicy",
            "BucketAcl",
            "BucketTagging",
            "BucketEncryption",
            "BucketLifecycle",
            "BucketVersioning",
        ],
    ),
    (
        "iam",
        "IAM",
        &["Get", "List"],
        &["Create", "Delete", "Update", "Attach"],
        &[
            "User",
            "Role",
            "Policy",
            "Group",
            "AccessKey",
            "InstanceProfile",
        ],
    ),
    (
        "sts",
        "STS",
        &["Get"],
        &["Assume", "Decode"],
        &["CallerIdentity", "SessionToken", "Role"],
    ),
    (
        "kms",
        "KMS",
        &["Describe", "List", "Get"],
        &["Create", "Update", "Enable", "Disable"],
        &["Key", "Alias", "KeyPolicy", "Grant"],
    ),
    (
        "lambda",
        "Lambda",
        &["Get", "List"],
        &["Create", "Delete", "Update"],
        &["Function", "Alias", "EventSourceMapping", "Layer"],
    ),
    (
        "dynamodb",
        "DynamoDB",
        &["Describe", "List"],
        &["Create", "Delete", "Update"],
        &["Table", "Backup", "GlobalTable"],
    ),
    (
        "sqs",
        "SQS",
        &["Get", "List"],
        &["Create", "Delete", "Set"],
        &["Queue", "QueueAttribute"],
    ),
    (
        "sns",
        "SNS",
        &["Get", "List"],
        &["Create", "Delete", "Set"],
        &["Topic", "Subscription", "TopicAttribute"],
    ),
    (
        "cloudformation",
        "CloudFormation",
        &["Describe", "List", "Get"],
        &["Create", "Delete", "Update"],
        &["Stack", "StackSet", "ChangeSet"],
    ),
    (
        "rds",
        "RDS",
        &["Describe"],
        &["Create", "Delete", "Modify"],
        &["DBInstance", "DBCluster", "DBSnapshot", "DBParameterGroup"],
    ),
    (
        "ecs",
        "ECS",
        &["Describe", "List"],
        &["Create", "Delete", "Update"],
        &["Cluster", "Service", "TaskDefinition", "Task"],
    ),
    (
        "eks",
        "EKS",
        &["Describe", "List"],
        &["Create", "Delete", "Update"],
        &["Cluster", "Nodegroup", "Addon"],
    ),
    (
        "logs",
        "Logs",
        &["Describe", "Get"],
        &["Create", "Delete", "Put"],
        &[
            "LogGroup",
            "LogStream",
            "RetentionPolicy",
            "SubscriptionFilter",
        ],
    ),
    (
        "monitoring",
        "CloudWatch",
        &["Describe", "Get", "List"],
        &["Put", "Delete"],
        &["Alarm", "Dashboard", "MetricStream"],
    ),
    (
        "cloudtrail",
        "CloudTrail",
        &["Describe", "Get", "List"],
        &["Create", "Delete", "Update"],
        &["Trail", "EventDataStore", "Channel"],
    ),
    (
        "route53",
        "Route53",
        &["Get", "List"],
        &["Create", "Delete", "Change"],
        &["HostedZone", "HealthCheck", "ResourceRecordSet"],
    ),
    (
        "elasticloadbalancing",
        "ElasticLoadBalancingV2",
        &["Describe"],
        &["Create", "Delete", "Modify"],
        &["LoadBalancer", "TargetGroup", "Listener", "Rule"],
    ),
    (
        "autoscaling",
        "AutoScaling",
        &["Describe"],
        &["Create", "Delete", "Update"],
        &["AutoScalingGroup", "LaunchConfiguration", "ScalingPolicy"],
    ),
    (
        "ssm",
        "SSM",
        &["Describe", "Get", "List"],
        &["Put", "Delete", "Update"],
        &["Parameter", "Document", "Association", "MaintenanceWindow"],
    ),
    (
        "secretsmanager",
        "SecretsManager",
        &["Describe", "Get", "List"],
        &["Create", "Delete", "Update", "Put"],
        &["Secret", "SecretValue", "ResourcePolicy"],
    ),
    (
        "organizations",
        "Organizations",
        &["Describe", "List"],
        &["Create", "Delete", "Update"],
        &["Account", "OrganizationalUnit", "Policy"],
    ),
    (
        "config",
        "Config",
        &["Describe", "Get"],
        &["Put", "Delete"],
        &["ConfigRule", "ConfigurationRecorder", "DeliveryChannel"],
    ),
    (
        "glue",
        "Glue",
        &["Get"],
        &["Create", "Delete", "Update"],
        &["Database", "Table", "Job", "Crawler", "Connection"],
    ),
    (
        "ecr",
        "ECR",
        &["Describe", "List", "Get"],
        &["Create", "Delete", "Put"],
        &["Repository", "Image", "LifecyclePolicy"],
    ),
    (
        "elasticache",
        "ElastiCache",
        &["Describe"],
        &["Create", "Delete", "Modify"],
        &["CacheCluster", "ReplicationGroup", "CacheSubnetGroup"],
    ),
    (
        "kinesis",
        "Kinesis",
        &["Describe", "List"],
        &["Create", "Delete", "Update"],
        &["Stream", "StreamConsumer"],
    ),
    (
        "apigateway",
        "ApiGateway",
        &["Get"],
        &["Create", "Delete", "Update"],
        &["RestApi", "Stage", "Deployment", "Resource"],
    ),
    (
        "cloudfront",
        "CloudFront",
        &["Get", "List"],
        &["Create", "Delete", "Update"],
        &["Distribution", "Invalidation", "CachePolicy"],
    ),
    (
        "guardduty",
        "GuardDuty",
        &["Get", "List"],
        &["Create", "Delete", "Update"],
        &["Detector", "Filter", "IPSet"],
    ),
    (
        "events",
        "Events",
        &["Describe", "List"],
        &["Put", "Delete"],
        &["Rule", "EventBus", "Target"],
    ),
    (
        "states",
        "StepFunctions",
        &["Describe", "List"],
        &["Create", "Delete", "Update"],
        &["StateMachine", "Activity"],
    ),
];

const FIRST_NAMES: [&str; 16] = [
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory",
    "nina", "oscar", "peggy", "rupert", "sybil",
];
const LAST_NAMES: [&str; 8] = [
    "smith", "jones", "garcia", "chen", "patel", "muller", "silva", "okafor",
];
const TEAMS: [&str; 12] = [
    "payments", "search", "identity", "platform", "data", "billing", "mobile", "ml", "infra",
    "security", "growth", "support",
];
const PURPOSES: [&str; 10] = [
    "deploy",
    "ci",
    "readonly",
    "admin",
    "etl",
    "lambda-exec",
    "ecs-task",
    "backup",
    "monitoring",
    "breakglass",
];
const AGENTS: [&str; 10] = [
    "aws-cli/2.15.30 Python/3.11.8 Linux/6.1.0-18-amd64 exe/x86_64.debian.12 prompt/off",
    "Boto3/1.34.69 md/Botocore#1.34.69 ua/2.0 os/linux#5.10.210 md/arch#x86_64 lang/python#3.12.2 md/pyimpl#CPython cfg/retry-mode#legacy Botocore/1.34.69",
    "aws-sdk-java/2.25.16 Linux/5.10.213 OpenJDK_64-Bit_Server_VM/17.0.10+7-LTS Java/17.0.10 vendor/Amazon.com_Inc. io/sync http/Apache cfg/retry-mode/standard",
    "aws-sdk-go-v2/1.26.0 os/linux lang/go#1.22.1 md/GOOS#linux md/GOARCH#amd64",
    "Terraform/1.7.5 (+https://www.terraform.io) terraform-provider-aws/5.42.0 (+https://registry.terraform.io/providers/hashicorp/aws) aws-sdk-go-v2/1.26.0",
    "console.amazonaws.com",
    "aws-sdk-js/3.540.0 ua/2.0 os/linux#5.10 lang/js md/nodejs#20.12.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/123.0.0.0 Safari/537.36",
    "aws-cli/1.32.69 Python/3.9.18 Linux/4.14.336-257.562.amzn2.x86_64 botocore/1.34.69",
    "AWS Internal",
];
const AWS_SERVICES: [&str; 20] = [
    "ec2",
    "lambda",
    "ecs-tasks",
    "autoscaling",
    "elasticloadbalancing",
    "cloudformation",
    "config",
    "guardduty",
    "ssm",
    "backup",
    "rds",
    "eks",
    "logs",
    "monitoring",
    "events",
    "states",
    "apigateway",
    "glue",
    "access-analyzer",
    "securityhub",
];
const ERRORS: [(&str, &str, f64); 7] = [
    (
        "AccessDenied",
        "User is not authorized to perform this operation because no identity-based policy allows the action",
        45.0,
    ),
    (
        "Client.UnauthorizedOperation",
        "You are not authorized to perform this operation.",
        10.0,
    ),
    ("ThrottlingException", "Rate exceeded", 15.0),
    (
        "ValidationException",
        "1 validation error detected: Value at 'maxResults' failed to satisfy constraint: Member must have value less than or equal to 1000",
        8.0,
    ),
    (
        "ResourceNotFoundException",
        "Requested resource not found",
        12.0,
    ),
    (
        "InvalidParameterValueException",
        "The parameter value is not valid for this operation",
        6.0,
    ),
    (
        "ConflictException",
        "The resource is being modified by another request",
        4.0,
    ),
];
const TAG_KEYS: [&str; 10] = [
    "Name",
    "team",
    "env",
    "owner",
    "cost-center",
    "app",
    "service",
    "version",
    "backup",
    "compliance",
];
const WORDS: [&str; 12] = [
    "web", "api", "worker", "db", "cache", "queue", "batch", "edge", "auth", "report", "ingest",
    "export",
];
const STATES: [&str; 5] = ["available", "running", "pending", "in-use", "active"];

/// One event name of one source.
struct Api {
    service: usize,
    name: String,
    read_only: bool,
    noun: &'static str,
}

enum Kind {
    User,
    Role,
    Service,
    Root,
}

struct Principal {
    kind: Kind,
    /// User name, role name, or the AWS service's host.
    name: String,
    id: String,
    keys: Vec<String>,
    ip: String,
    agent: usize,
}

struct Catalog {
    apis: Vec<Api>,
    api_weights: Weighted,
    principals: Vec<Principal>,
    principal_weights: Weighted,
    errors: Weighted,
}

fn plural(noun: &str) -> String {
    if noun.ends_with('s') {
        format!("{noun}es")
    } else if let Some(stem) = noun.strip_suffix('y')
        && !stem.ends_with(['a', 'e', 'o', 'u'])
    {
        format!("{stem}ies")
    } else {
        format!("{noun}s")
    }
}

fn build_catalog() -> Catalog {
    let mut apis = Vec::new();
    for (s, (_, _, reads, writes, nouns)) in SERVICES.iter().enumerate() {
        for noun in nouns.iter() {
            for verb in reads.iter() {
                let name = if matches!(*verb, "Describe" | "List") {
                    format!("{verb}{}", plural(noun))
                } else {
                    format!("{verb}{noun}")
                };
                apis.push(Api {
                    service: s,
                    name,
                    read_only: true,
                    noun,
                });
            }
            for verb in writes.iter() {
                apis.push(Api {
                    service: s,
                    name: format!("{verb}{noun}"),
                    read_only: false,
                    noun,
                });
            }
        }
    }
    // Popularity: a fixed shuffle of the catalog, then Zipf by rank; reads four times as likely.
    let mut rng = Mix::new(0x0A11_CA7A_1065, 1);
    for i in (1..apis.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        apis.swap(i, j);
    }
    let api_weights = Weighted::new(
        apis.iter()
            .enumerate()
            .map(|(rank, a)| (if a.read_only { 4.0 } else { 1.0 }) / (rank as f64 + 2.0)),
    );
    let mut principals = Vec::new();
    let key = |rng: &mut Mix, prefix: &str| {
        let mut k = prefix.to_owned();
        rng.upper_alnum(&mut k, 16);
        k
    };
    let ip = |rng: &mut Mix| {
        let nets = ["203.0.113", "198.51.100", "192.0.2", "100.64.12"];
        format!("{}.{}", rng.pick(&nets), 1 + rng.below(254))
    };
    for f in FIRST_NAMES {
        for l in LAST_NAMES {
            let n_keys = 1 + rng.below(2) as usize;
            let mut id = "AIDA".to_owned();
            rng.upper_alnum(&mut id, 17);
            principals.push(Principal {
                kind: Kind::User,
                name: format!("{f}.{l}"),
                id,
                keys: (0..n_keys).map(|_| key(&mut rng, "AKIA")).collect(),
                ip: ip(&mut rng),
                agent: rng.below(AGENTS.len() as u64 - 1) as usize,
            });
        }
    }
    for t in TEAMS {
        for p in PURPOSES.iter().take(8 + (t.len() % 3)) {
            let mut id = "AROA".to_owned();
            rng.upper_alnum(&mut id, 17);
            principals.push(Principal {
                kind: Kind::Role,
                name: format!("{t}-{p}"),
                id,
                keys: Vec::new(),
                ip: ip(&mut rng),
                agent: rng.below(AGENTS.len() as u64 - 1) as usize,
            });
        }
    }
    for s in AWS_SERVICES {
        principals.push(Principal {
            kind: Kind::Service,
            name: format!("{s}.amazonaws.com"),
            id: String::new(),
            keys: Vec::new(),
            ip: format!("{s}.amazonaws.com"),
            agent: AGENTS.len() - 1,
        });
    }
    principals.push(Principal {
        kind: Kind::Root,
        name: "root".to_owned(),
        id: String::new(),
        keys: Vec::new(),
        ip: ip(&mut rng),
        agent: 7,
    });
    for i in (1..principals.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        principals.swap(i, j);
    }
    let principal_weights = Weighted::new(principals.iter().enumerate().map(|(rank, p)| {
        let w = 1.0 / (rank as f64 + 1.0).powf(0.9);
        // The root user signs in rarely.
        if matches!(p.kind, Kind::Root) {
            w * 0.02
        } else {
            w
        }
    }));
    Catalog {
        apis,
        api_weights,
        principals,
        principal_weights,
        errors: Weighted::new(ERRORS.iter().map(|e| e.2)),
    }
}

static CATALOG: LazyLock<Catalog> = LazyLock::new(build_catalog);

/// A stream of events; an iterator that holds only its time table.
pub struct Generator {
    cfg: Config,
    /// Cumulative activity per hour of the span (daily and weekly cycle).
    hours: Weighted,
    start_s: i64,
    next: u64,
}

impl Generator {
    pub fn new(mut cfg: Config) -> Self {
        cfg.days = cfg.days.clamp(1, 3650);
        let span_h = i64::from(cfg.days) * 24;
        let start_s = cfg.end_s - span_h * 3600;
        let hours = Weighted::new((0..span_h).map(|h| {
            let t = start_s + h * 3600;
            let hod = t.rem_euclid(86_400) as f64 / 3600.0;
            // 1970-01-01 was a Thursday: day 0 is weekday 3 (Monday = 0).
            let dow = (t.div_euclid(86_400) + 3).rem_euclid(7);
            let daily = 0.12 + (-(hod - 15.0).powi(2) / (2.0 * 3.5 * 3.5)).exp();
            if dow >= 5 { daily * 0.35 } else { daily }
        }));
        let next = cfg.first;
        Self {
            cfg,
            hours,
            start_s,
            next,
        }
    }

    /// Event number `i` of this stream.
    pub fn event(&self, i: u64) -> Event {
        let cfg = &self.cfg;
        let c = &*CATALOG;
        let mut rng = Mix::new(cfg.seed, i);
        // Time: the event's place in the stream, through the activity table.
        let pos = ((i.wrapping_sub(cfg.first)) as f64 + rng.unit()) / cfg.count.max(1) as f64;
        let target = pos.clamp(0.0, 1.0) * self.hours.total();
        let h = self
            .hours
            .cdf
            .partition_point(|&x| x <= target)
            .min(self.hours.cdf.len().saturating_sub(1));
        let before = if h == 0 { 0.0 } else { self.hours.cdf[h - 1] };
        let width = (self.hours.cdf[h] - before).max(f64::MIN_POSITIVE);
        let within = ((target - before) / width).clamp(0.0, 1.0);
        let jitter = rng.below(31) as i64;
        let time_s =
            (self.start_s + h as i64 * 3600 + (within * 3600.0) as i64 - jitter).min(cfg.end_s);
        let time = jiff::Timestamp::from_second(time_s)
            .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned());

        let api = &c.apis[c.api_weights.draw(&mut rng)];
        let (prefix, svc_type, ..) = SERVICES[api.service];
        let source = format!("{prefix}.amazonaws.com");
        let principal = &c.principals[c.principal_weights.draw(&mut rng)];
        let account = &cfg.account;
        let region = &cfg.region;
        let day = time_s.div_euclid(86_400);

        // Who called.
        let mut identity = String::with_capacity(600);
        let (user, key) = match principal.kind {
            Kind::User => {
                let key = rng.pick(&principal.keys).clone();
                let _ = write!(
                    identity,
                    r#"{{"type":"IAMUser","principalId":"{}","arn":"arn:aws:iam::{account}:user/{}","accountId":"{account}","accessKeyId":"{key}","userName":"{}""#,
                    principal.id, principal.name, principal.name
                );
                if AGENTS[principal.agent] == "console.amazonaws.com" {
                    let _ = write!(
                        identity,
                        r#","sessionContext":{{"sessionIssuer":{{}},"webIdFederationData":{{}},"attributes":{{"creationDate":"{time}","mfaAuthenticated":"true"}}}}"#
                    );
                }
                identity.push('}');
                (principal.name.clone(), key)
            }
            Kind::Role => {
                // One session (and one temporary key) per role, day and one of a few hosts.
                let who = fnv(&principal.name);
                let mut day_rng = Mix::new(cfg.seed ^ who, day as u64);
                let host = rng.below(3);
                let mut session = format!("{}-{}-", principal.name, 1000 + host);
                day_rng.hex(&mut session, 6 + host as usize);
                let mut key = "ASIA".to_owned();
                let mut key_rng = Mix::new(cfg.seed ^ who ^ 0x5e55, (day as u64) << 2 | host);
                key_rng.upper_alnum(&mut key, 16);
                let _ = write!(
                    identity,
                    r#"{{"type":"AssumedRole","principalId":"{id}:{session}","arn":"arn:aws:sts::{account}:assumed-role/{name}/{session}","accountId":"{account}","accessKeyId":"{key}","sessionContext":{{"sessionIssuer":{{"type":"Role","principalId":"{id}","arn":"arn:aws:iam::{account}:role/{name}","accountId":"{account}","userName":"{name}"}},"webIdFederationData":{{}},"attributes":{{"creationDate":"{time}","mfaAuthenticated":"false"}}}}}}"#,
                    id = principal.id,
                    name = principal.name,
                );
                (session, key)
            }
            Kind::Service => {
                let _ = write!(
                    identity,
                    r#"{{"type":"AWSService","invokedBy":"{}"}}"#,
                    principal.name
                );
                (String::new(), String::new())
            }
            Kind::Root => {
                let mut key = "ASIA".to_owned();
                rng.upper_alnum(&mut key, 16);
                let _ = write!(
                    identity,
                    r#"{{"type":"Root","principalId":"{account}","arn":"arn:aws:iam::{account}:root","accountId":"{account}","accessKeyId":"{key}","sessionContext":{{"sessionIssuer":{{}},"webIdFederationData":{{}},"attributes":{{"creationDate":"{time}","mfaAuthenticated":"true"}}}}}}"#
                );
                ("root".to_owned(), key)
            }
        };
        let ip = if rng.below(10) == 0 && !matches!(principal.kind, Kind::Service) {
            format!("198.51.100.{}", 1 + rng.below(254))
        } else {
            principal.ip.clone()
        };
        let agent = if rng.below(8) == 0 && !matches!(principal.kind, Kind::Service) {
            *rng.pick(&AGENTS)
        } else {
            AGENTS[principal.agent]
        };

        // What it acted on.
        let noun_lc = api.noun.to_ascii_lowercase();
        let mut resource_id = String::with_capacity(24);
        resource_id.push_str(&noun_lc[..noun_lc.len().min(3)]);
        resource_id.push('-');
        let pool = rng.popular(2000);
        let mut id_rng = Mix::new(cfg.seed ^ fnv(api.noun), pool);
        id_rng.hex(&mut resource_id, 17);
        let resource = format!("arn:aws:{prefix}:{region}:{account}:{noun_lc}/{resource_id}");
        let resource_type = format!("AWS::{svc_type}::{}", api.noun);
        let error = (rng.below(1000) < 30).then(|| ERRORS[c.errors.draw(&mut rng)]);

        // Size: log-normal, drawn around 1.25 KB; the identity sets a floor, so the median is ~1.5 KB.
        let size = (1250.0 * (0.6 * rng.normal()).exp()).clamp(500.0, 8000.0) as usize;

        let mut req = String::with_capacity(size);
        let mut resp = String::new();
        let id_field = format!("{}{}Id", noun_lc[..1].to_owned(), &api.noun[1..]);
        let _ = write!(req, r#"{{"{id_field}":"{resource_id}""#);
        if api.read_only {
            if rng.below(2) == 0 {
                let _ = write!(req, r#","maxResults":{}"#, 50 * (1 + rng.below(20)));
            }
        } else {
            let _ = write!(
                req,
                r#","clientToken":"{}","description":"{} {} managed by {}""#,
                rng.uuid(),
                rng.pick(&WORDS),
                noun_lc,
                rng.pick(&TEAMS)
            );
        }
        let resp_null = api.read_only || error.is_some();
        if !resp_null {
            let _ = write!(
                resp,
                r#"{{"requestId":"{}","{id_field}":"{resource_id}","arn":"{resource}","createTime":"{time}","state":"{}""#,
                rng.uuid(),
                rng.pick(&STATES)
            );
        }
        let mut record = String::with_capacity(size + 1024);
        let _ = write!(
            record,
            r#"{{"eventVersion":"1.11","userIdentity":{identity},"eventTime":"{time}","eventSource":"{source}","eventName":"{}","awsRegion":"{region}","sourceIPAddress":"{ip}","userAgent":"{agent}""#,
            api.name
        );
        if let Some((code, message, _)) = error {
            let _ = write!(
                record,
                r#","errorCode":"{code}","errorMessage":"{message}""#
            );
        }
        let request_id = rng.uuid();
        let event_id = rng.uuid();
        let tail = format!(
            r#","requestID":"{request_id}","eventID":"{event_id}","readOnly":{},"resources":[{{"accountId":"{account}","type":"{resource_type}","ARN":"{resource}"}}],"eventType":"AwsApiCall","managementEvent":true,"recipientAccountId":"{account}","eventCategory":"Management","tlsDetails":{{"tlsVersion":"TLSv1.3","cipherSuite":"TLS_AES_128_GCM_SHA256","clientProvidedHostHeader":"{prefix}.{region}.amazonaws.com"}}}}"#,
            api.read_only
        );
        // Fill to the drawn size with tags and items, in the request (reads) or the response.
        let fixed = record.len() + tail.len() + req.len() + resp.len() + 60;
        let mut fill = String::new();
        if size > fixed {
            let want = size - fixed;
            fill.push_str(r#","tagSet":{"items":["#);
            let mut first = true;
            while fill.len() < want {
                if !first {
                    fill.push(',');
                }
                first = false;
                if rng.below(3) == 0 {
                    let _ = write!(
                        fill,
                        r#"{{"resourceId":"{}-"#,
                        &noun_lc[..noun_lc.len().min(3)]
                    );
                    rng.hex(&mut fill, 17);
                    let _ = write!(
                        fill,
                        r#"","state":"{}","size":{},"createdAt":"{time}"}}"#,
                        rng.pick(&STATES),
                        rng.below(4096)
                    );
                } else {
                    let _ = write!(
                        fill,
                        r#"{{"key":"{}","value":"{}-"#,
                        rng.pick(&TAG_KEYS),
                        rng.pick(&WORDS)
                    );
                    let digits = 4 + rng.below(12) as usize;
                    rng.hex(&mut fill, digits);
                    fill.push_str("\"}");
                }
            }
            fill.push_str("]}");
        }
        if resp_null {
            req.push_str(&fill);
        } else {
            resp.push_str(&fill);
            resp.push('}');
        }
        req.push('}');
        let _ = write!(
            record,
            r#","requestParameters":{req},"responseElements":{}"#,
            if resp_null { "null" } else { resp.as_str() }
        );
        record.push_str(&tail);
        Event {
            event_id,
            time_s,
            name: api.name.clone(),
            source,
            user,
            key,
            read_only: api.read_only,
            resource,
            resource_type,
            error_code: error.map(|e| e.0),
            json: record,
        }
    }
}

impl Iterator for Generator {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        if self.next >= self.cfg.first.saturating_add(self.cfg.count) {
            return None;
        }
        let e = self.event(self.next);
        self.next += 1;
        Some(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn sample(n: u64) -> Vec<Event> {
        Generator::new(Config::new(7, 0, n, 1_800_000_000)).collect()
    }

    #[test]
    fn every_record_is_cloudtrail_shaped_json_with_the_lookup_values() {
        for e in sample(3000) {
            let v: serde_json::Value = serde_json::from_str(&e.json).expect("valid JSON");
            assert_eq!(v["eventID"], e.event_id.as_str());
            assert_eq!(v["eventName"], e.name.as_str());
            assert_eq!(v["eventSource"], e.source.as_str());
            assert_eq!(v["readOnly"], e.read_only);
            assert_eq!(v["resources"][0]["ARN"], e.resource.as_str());
            assert_eq!(v["recipientAccountId"], "111122223333");
            let ty = v["userIdentity"]["type"].as_str().expect("identity type");
            match ty {
                "IAMUser" => assert_eq!(v["userIdentity"]["userName"], e.user.as_str()),
                "AssumedRole" => assert!(
                    v["userIdentity"]["arn"]
                        .as_str()
                        .is_some_and(|a| a.ends_with(&format!("/{}", e.user)))
                ),
                "Root" => assert_eq!(e.user, "root"),
                "AWSService" => assert!(e.user.is_empty() && e.key.is_empty()),
                other => panic!("unexpected identity type {other}"),
            }
            if !e.key.is_empty() {
                assert_eq!(v["userIdentity"]["accessKeyId"], e.key.as_str());
                assert_eq!(e.key.len(), 20);
            }
            assert_eq!(v["errorCode"].as_str(), e.error_code);
            let t = jiff::Timestamp::from_second(e.time_s).expect("time");
            assert_eq!(
                v["eventTime"],
                t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string().as_str()
            );
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_events_and_another_seed_does_not() {
        let a = sample(200);
        let b = sample(200);
        assert!(a.iter().zip(&b).all(|(x, y)| x.json == y.json));
        let g = Generator::new(Config::new(8, 0, 200, 1_800_000_000));
        let other: Vec<Event> = g.collect();
        assert!(a.iter().zip(&other).all(|(x, y)| x.json != y.json));
        // A stream can be entered anywhere: event 150 on its own equals the 151st of the stream.
        let g = Generator::new(Config::new(7, 0, 200, 1_800_000_000));
        assert_eq!(g.event(150).json, a[150].json);
    }

    #[test]
    fn the_spread_looks_like_an_accounts_traffic() {
        let events = sample(40_000);
        let mut sizes: Vec<usize> = events.iter().map(|e| e.json.len()).collect();
        sizes.sort_unstable();
        let median = sizes[sizes.len() / 2];
        assert!((1300..=1800).contains(&median), "median {median}");
        assert!(sizes[0] >= 450, "smallest {}", sizes[0]);
        assert!(*sizes.last().unwrap_or(&0) <= 8600);
        assert!(sizes[sizes.len() * 999 / 1000] > 4000);
        let names: HashSet<&str> = events.iter().map(|e| e.name.as_str()).collect();
        let sources: HashSet<&str> = events.iter().map(|e| e.source.as_str()).collect();
        let users: HashSet<&str> = events.iter().map(|e| e.user.as_str()).collect();
        let keys: HashSet<&str> = events.iter().map(|e| e.key.as_str()).collect();
        assert!(names.len() > 300, "{} names", names.len());
        assert_eq!(sources.len(), 32);
        assert!(users.len() > 200, "{} users", users.len());
        assert!(keys.len() > 200, "{} keys", keys.len());
        let errors = events.iter().filter(|e| e.error_code.is_some()).count() as f64;
        let share = errors / events.len() as f64;
        assert!((0.02..0.04).contains(&share), "error share {share}");
        let reads = events.iter().filter(|e| e.read_only).count() as f64;
        let share = reads / events.len() as f64;
        assert!((0.55..0.85).contains(&share), "read share {share}");
        // In order (up to the jitter) and busier in the afternoon than at night.
        assert!(events.windows(2).all(|w| w[1].time_s >= w[0].time_s - 31));
        let at = |h: i64| {
            events
                .iter()
                .filter(|e| e.time_s.rem_euclid(86_400) / 3600 == h)
                .count()
        };
        assert!(at(15) > 3 * at(3), "15h {} vs 3h {}", at(15), at(3));
    }
}
