//! Wire types of the mesh. xDS v3 (envoy-types) and the mesh's own protos arrive with the control-plane issue.
