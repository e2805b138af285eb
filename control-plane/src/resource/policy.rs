use serde::{Deserialize, Serialize};

/// `spec` of a `BackendPolicy`: how traffic to a Service's endpoints is balanced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendPolicySpec {
    pub target_ref: TargetRef,
    #[serde(default)]
    pub load_balancer: LoadBalancer,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TargetRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub name: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancer {
    #[serde(default)]
    pub algorithm: Algorithm,
}

/// Balancing algorithms; P2C by peak-EWMA latency is the default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Algorithm {
    RoundRobin,
    LeastRequest,
    #[default]
    #[serde(rename = "PeakEWMA")]
    PeakEwma,
}
