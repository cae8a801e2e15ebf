//! The `ContainerTask` manifest (DESIGN.md §2): its wire types, parsing with precise
//! error locations, and validation into a resolved [`TaskSpec`].
//!
//! The wire types mirror the YAML/JSON exactly and reject unknown fields, so that a typo
//! never passes silently. Durations and quantities stay strings here: validation turns
//! them into typed values and explains any mistake with the field path and a fix.

pub mod limits;
mod parse;
mod validate;
mod wire;

pub use parse::{MAX_MANIFEST_BYTES, ManifestError, parse_manifest};
pub use validate::{
    AciExtras, DEFAULT_HISTORY_LIMIT, EnvValue, ExitRuleSpec, Features, PullAuth, PullSecret, ScheduleRules, SecretRef,
    TaskSpec, ValidationContext, check_secret_url, is_arm_id, undefined_semaphores, validate,
};
pub use wire::AciDnsConfig;
pub use wire::{
    API_VERSION, AciIdentity, AciIdentityType, AciSpec, AzureFile, Cleanup, Completion, CompletionMode,
    ConcurrencyPolicy, ConditionalDependency, ContainerTask, DependencyCondition, DependsOn, EnvVar, ExitAction,
    ExitRule, ImagePullSecret, KIND, KeyVaultRef, Metadata, MissedRuns, Quantity, Resources, RuntimeKind, ScheduleSpec,
    Spec, ValueFrom, Volume, json_schema,
};
