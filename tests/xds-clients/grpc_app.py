"""A gRPC server and client (stock grpcio, raw bytes, no generated code) for tests through the mesh.

  grpc_app.py server LISTEN   serves test.Echo: Say (unary echo), Count (server streaming),
                              Fail (answers INVALID_ARGUMENT "nope", which travels in trailers);
                              prints `ready` once listening
  grpc_app.py client TARGET   calls all three and prints what came back
"""
import sys
import threading
from concurrent import futures

import grpc

identity = (lambda b: b, lambda b: b)


def serve(listen):
    def say(request, context):
        return b"echo:" + request

    def count(request, context):
        for i in range(int(request.decode())):
            yield str(i).encode()

    def fail(request, context):
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "nope")

    handlers = {
        "Say": grpc.unary_unary_rpc_method_handler(say),
        "Count": grpc.unary_stream_rpc_method_handler(count),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", handlers),))
    server.add_insecure_port(listen)
    server.start()
    print("ready", flush=True)
    threading.Event().wait()


def client(target):
    with grpc.insecure_channel(target) as channel:
        reply = channel.unary_unary("/test.Echo/Say")(b"hi", timeout=10)
        print("unary", reply.decode())
        parts = [m.decode() for m in channel.unary_stream("/test.Echo/Count")(b"3", timeout=10)]
        print("stream", ",".join(parts))
        try:
            channel.unary_unary("/test.Echo/Fail")(b"", timeout=10)
            print("status OK")
        except grpc.RpcError as e:
            print("status", e.code().name, e.details())


if __name__ == "__main__":
    {"server": serve, "client": client}[sys.argv[1]](sys.argv[2])
