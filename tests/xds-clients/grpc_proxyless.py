"""A stock gRPC client (grpcio's built-in xDS support, no mesh code) that resolves a Service
through meshd: LDS (api listener) -> RDS -> CDS -> EDS, then calls the backend it was given.

Usage: grpc_proxyless.py XDS_SERVER TARGET BACKEND_LISTEN
  XDS_SERVER      meshd's gRPC address, host:port
  TARGET          what the client dials: xds:///TARGET, e.g. echo.default.svc.cluster.local:50051
  BACKEND_LISTEN  where this script's own echo server listens (the Service's endpoint)
Prints `reply <text>` and exits 0 on success.
"""
import json
import os
import sys
import tempfile

xds_server, target, backend = sys.argv[1], sys.argv[2], sys.argv[3]

# The bootstrap must be in place before grpc creates its xDS client.
bootstrap = {
    "xds_servers": [{"server_uri": xds_server, "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
    "node": {"id": "grpc-proxyless-client", "metadata": {"NAMESPACE": "default"}},
}
with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
    json.dump(bootstrap, f)
os.environ["GRPC_XDS_BOOTSTRAP"] = f.name

from concurrent import futures  # noqa: E402

import grpc  # noqa: E402


def say(request, context):
    return b"echo:" + request


server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
server.add_generic_rpc_handlers(
    (grpc.method_handlers_generic_handler("test.Echo", {"Say": grpc.unary_unary_rpc_method_handler(say)}),)
)
server.add_insecure_port(backend)
server.start()

try:
    with grpc.insecure_channel(f"xds:///{target}") as channel:
        reply = channel.unary_unary("/test.Echo/Say")(b"hi", timeout=15, wait_for_ready=True)
    print("reply", reply.decode())
finally:
    server.stop(None)
    os.unlink(f.name)
