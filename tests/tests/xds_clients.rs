//! meshd serves unmodified xDS clients: gRPC's own proxyless xDS client (grpcio) resolves a
//! Service through LDS, RDS, CDS and EDS from meshd and calls the endpoint it was given.

use mesh_tests::{IpFamilies, Network};

const ECHO: &str = "
apiVersion: mesh.dev/v1
kind: Service
metadata: {name: echo}
spec: {ports: [{port: 50051, appProtocol: grpc}], selector: {app: echo}}
---
apiVersion: mesh.dev/v1
kind: Workload
metadata: {name: echo-1, labels: {app: echo}}
spec: {address: 127.0.0.1}
";

#[test]
fn a_proxyless_grpc_client_resolves_a_service_through_meshd() -> anyhow::Result<()> {
    let net = Network::new("grpc-xds", IpFamilies::V4)?;
    let cp = net.pod("cp")?;
    let _meshd = cp.start_meshd(&net.log_dir.join("meshd-data"), &[])?;
    let file = net.log_dir.join("echo.yaml");
    std::fs::write(&file, ECHO)?;
    let out = cp.meshctl(&["apply", "-f", &file.to_string_lossy()])?;
    anyhow::ensure!(
        out.status.success(),
        "apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The client and the echo server run in the meshd pod; the Workload says 127.0.0.1.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/xds-clients/grpc_proxyless.py");
    let out = cp.output(
        "python3",
        &[
            script,
            "127.0.0.1:15010",
            "echo.default.svc.cluster.local:50051",
            "127.0.0.1:50051",
        ],
    )?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim() == "reply echo:hi",
        "grpcio via meshd failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
