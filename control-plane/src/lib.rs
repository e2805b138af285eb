//! The control plane (`meshd`, `meshctl`) arrives with the control-plane issue.
