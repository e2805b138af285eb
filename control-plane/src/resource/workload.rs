use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// `spec` of a `Workload`: one pod's address, identity and ports. Its labels (in `metadata`)
/// are what Service selectors match.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSpec {
    pub address: IpAddr,
    #[serde(default = "default_service_account")]
    pub service_account: String,
    #[serde(default)]
    pub ports: Vec<WorkloadPort>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadPort {
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

pub fn default_service_account() -> String {
    "default".to_string()
}
