# An independent gRPC client for fieldgate's QueryService: Python grpcio with stubs generated
# here from the proto files by grpcio-tools. Reads {proto_root, addr, token, from, to,
# window_s, metric} as JSON on stdin; prints {"unauthenticated": bool, "rows": [...]} as JSON.
import json
import os
import sys
import tempfile

import grpc
import grpc_tools
from grpc_tools import protoc

args = json.load(sys.stdin)
out = tempfile.mkdtemp()
well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
rc = protoc.main([
    "protoc", "-I" + args["proto_root"], "-I" + well_known,
    "--python_out=" + out, "--grpc_python_out=" + out,
    "fieldgate/v1/query.proto", "fieldgate/v1/types.proto",
])
assert rc == 0, "protoc failed"
sys.path.insert(0, out)
from fieldgate.v1 import query_pb2, query_pb2_grpc  # noqa: E402
from google.protobuf import duration_pb2, timestamp_pb2  # noqa: E402

start, end = timestamp_pb2.Timestamp(), timestamp_pb2.Timestamp()
start.FromJsonString(args["from"])
end.FromJsonString(args["to"])
request = query_pb2.StatsRequest(
    metrics=[args["metric"]], window=duration_pb2.Duration(seconds=args["window_s"]),
    page_size=7,
)
getattr(request, "from").CopyFrom(start)
request.to.CopyFrom(end)

stub = query_pb2_grpc.QueryServiceStub(grpc.insecure_channel(args["addr"]))
try:
    stub.Stats(request, timeout=30)
    unauthenticated = False
except grpc.RpcError as e:
    unauthenticated = e.code() == grpc.StatusCode.UNAUTHENTICATED

rows = []
metadata = [("authorization", "Bearer " + args["token"])]
while True:
    page = stub.Stats(request, metadata=metadata, timeout=30)
    for r in page.rows:
        rows.append({
            "device": r.device, "window_start": r.window_start.ToJsonString(),
            "count": r.count, "sum": r.sum, "min": r.min, "max": r.max, "mean": r.mean,
        })
    if not page.next_page_token:
        break
    request.page_token = page.next_page_token
print(json.dumps({"unauthenticated": unauthenticated, "rows": rows}))
