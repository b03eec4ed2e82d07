//! How big a deployment file, and what it describes, may be.
//!
//! Every limit keeps a file, by mistake or by malice, from making cutover (and every Envoy it
//! serves) use unbounded memory or time: a file larger than `file_bytes` is not parsed, the YAML
//! parser stops after `yaml_nodes` values (counting each value an alias `*name` repeats, so an
//! "alias bomb" of a few lines stops there too), and validation refuses more listeners, routes,
//! services, versions or endpoints than allowed. The defaults serve fleets far larger than
//! 10,000 services of 3 endpoints each. A legitimate file above a limit raises it with the
//! limit's environment variable, read once at startup by every command (`serve`, `validate`,
//! `render`, `diff`), so that they all accept the same files.

use std::fmt;
use std::sync::OnceLock;

/// The limits a deployment file is checked against. See the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Size of the file in bytes.
    pub file_bytes: usize,
    /// YAML values (mappings, sequences and scalars), aliases expanded.
    pub yaml_nodes: usize,
    pub listeners: usize,
    /// Envoy routes the listeners' routes become, counted as at most one per rule, one per
    /// (preview or sticky) version and one for the strategy, for each listener route.
    pub routes: usize,
    pub services: usize,
    /// Versions of all services together (each is an Envoy cluster).
    pub versions: usize,
    /// Endpoints of all versions together.
    pub endpoints: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            file_bytes: 16 * MIB,
            yaml_nodes: 1_000_000,
            listeners: 1_000,
            routes: 200_000,
            services: 50_000,
            versions: 100_000,
            endpoints: 200_000,
        }
    }
}

const MIB: usize = 1024 * 1024;

/// One limit as users see it: its environment variable and what it counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    FileSize,
    YamlNodes,
    Listeners,
    Routes,
    Services,
    Versions,
    Endpoints,
}

impl Limit {
    pub const ALL: [Limit; 7] = [
        Limit::FileSize,
        Limit::YamlNodes,
        Limit::Listeners,
        Limit::Routes,
        Limit::Services,
        Limit::Versions,
        Limit::Endpoints,
    ];

    /// The environment variable that sets it.
    pub fn env_var(self) -> &'static str {
        match self {
            Limit::FileSize => "CUTOVER_MAX_FILE_MIB",
            Limit::YamlNodes => "CUTOVER_MAX_YAML_NODES",
            Limit::Listeners => "CUTOVER_MAX_LISTENERS",
            Limit::Routes => "CUTOVER_MAX_ROUTES",
            Limit::Services => "CUTOVER_MAX_SERVICES",
            Limit::Versions => "CUTOVER_MAX_VERSIONS",
            Limit::Endpoints => "CUTOVER_MAX_ENDPOINTS",
        }
    }

    /// The value as its environment variable writes it (the file size in MiB).
    pub fn get(self, limits: &Limits) -> usize {
        match self {
            Limit::FileSize => limits.file_bytes / MIB,
            Limit::YamlNodes => limits.yaml_nodes,
            Limit::Listeners => limits.listeners,
            Limit::Routes => limits.routes,
            Limit::Services => limits.services,
            Limit::Versions => limits.versions,
            Limit::Endpoints => limits.endpoints,
        }
    }

    fn set(self, limits: &mut Limits, value: usize) -> Option<()> {
        match self {
            Limit::FileSize => limits.file_bytes = value.checked_mul(MIB)?,
            Limit::YamlNodes => limits.yaml_nodes = value,
            Limit::Listeners => limits.listeners = value,
            Limit::Routes => limits.routes = value,
            Limit::Services => limits.services = value,
            Limit::Versions => limits.versions = value,
            Limit::Endpoints => limits.endpoints = value,
        }
        Some(())
    }
}

/// An environment variable that does not hold a usable limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}={value:?} is not a limit: write a whole number from 1 to {max}")]
pub struct LimitsError {
    pub var: &'static str,
    pub value: String,
    pub max: usize,
}

impl Limits {
    /// The defaults, with each limit whose environment variable is set replaced by its value.
    /// `env` looks a variable up (tests pass their own).
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Result<Limits, LimitsError> {
        let mut limits = Limits::default();
        for limit in Limit::ALL {
            let var = limit.env_var();
            let Some(value) = env(var) else { continue };
            // A limit that does not fit in memory is no limit; the largest file size is
            // bounded so that bytes still fit in a usize.
            let max = match limit {
                Limit::FileSize => usize::MAX / MIB,
                _ => u32::MAX as usize,
            };
            let parsed = value
                .trim()
                .replace('_', "")
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=max).contains(n));
            match parsed.and_then(|n| limit.set(&mut limits, n)) {
                Some(()) => {}
                None => return Err(LimitsError { var, value, max }),
            }
        }
        Ok(limits)
    }

    /// The limits this process checks files against: [`Limits::install`]ed at startup, else the
    /// defaults.
    pub fn current() -> &'static Limits {
        CURRENT.get_or_init(Limits::default)
    }

    /// Makes these the limits of every later [`super::parse_bytes`] in this process. Done once,
    /// at startup, before any file is read: returns `Err` with the limits already in force if
    /// it is too late.
    pub fn install(self) -> Result<(), &'static Limits> {
        CURRENT.set(self).map_err(|_| Limits::current())
    }
}

static CURRENT: OnceLock<Limits> = OnceLock::new();

/// A count written with thousands separators, as people read limits: `2,000,000`.
pub(super) struct Count(pub usize);

impl fmt::Display for Count {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits = self.0.to_string();
        let mut out = String::with_capacity(digits.len() + digits.len() / 3);
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        f.write_str(&out)
    }
}
