#!/usr/bin/env python3
"""A small Beacon client in Python: the proto is the contract.

It generates its stubs from the repository's proto/ with grpcio-tools,
connects with a member certificate over mutual TLS, signs bulletins itself
(DSSE PAE, with the `cryptography` package) and streams a durable
subscription with resume.

    pip install -r examples/python/requirements.txt
    python examples/python/beacon_client.py --node 127.0.0.1:7443 \
        --ca ca.pem --cert client.pem --key client.key publish --title "..." --summary "..."
    python examples/python/beacon_client.py ... subscribe --name py-feed --count 10

Before sending anything it checks the node it reached, as the beacon CLI
does: only a node of its own member by default; another member's node (a
hub) only when pinned with --node-id (or BEACON_NODE_ID).

Each command prints one JSON object per line.
"""

import argparse
import atexit
import datetime
import importlib
import json
import os
import queue
import shutil
import socket
import ssl
import sys
import tempfile
import uuid

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_ROOT = os.path.normpath(os.path.join(HERE, "..", "..", "proto"))
PAYLOAD_TYPE = "application/vnd.beacon.bulletin.v1+protobuf"


def load_stubs():
    """Generates Python stubs from proto/ into a temporary directory and imports them."""
    from grpc_tools import protoc

    out = tempfile.mkdtemp(prefix="beacon-stubs-")
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    files = [
        os.path.join(PROTO_ROOT, "beacon", "v1", name)
        for name in ("bulletin.proto", "service.proto")
    ]
    rc = protoc.main(
        ["protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}"]
        + files
    )
    if rc != 0:
        raise SystemExit(f"protoc failed ({rc})")
    sys.path.insert(0, out)
    pb = importlib.import_module("beacon.v1.bulletin_pb2")
    svc = importlib.import_module("beacon.v1.service_pb2")
    grpc_svc = importlib.import_module("beacon.v1.service_pb2_grpc")
    return pb, svc, grpc_svc


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


class Member:
    """A member identity: the certificate, its key, and what it may sign as."""

    def __init__(self, cert_path, key_path):
        with open(cert_path, "rb") as f:
            self.cert_pem = f.read()
        with open(key_path, "rb") as f:
            self.key_pem = f.read()
        certs = x509.load_pem_x509_certificates(self.cert_pem)
        self.chain_der = [c.public_bytes(serialization.Encoding.DER) for c in certs]
        self.key = serialization.load_pem_private_key(self.key_pem, password=None)
        san = certs[0].extensions.get_extension_for_class(x509.SubjectAlternativeName)
        uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
        if len(uris) != 1:
            raise SystemExit("the certificate must carry exactly one SPIFFE URI")
        self.spiffe_id = uris[0]
        # spiffe://<trust domain>/client/<member>/<name>
        parts = self.spiffe_id.split("/")
        if len(parts) < 6 or parts[3] not in ("client", "node"):
            raise SystemExit(f"{self.spiffe_id} is not a member identity")
        self.member = parts[4]

    def sign(self, message: bytes) -> bytes:
        if isinstance(self.key, ed25519.Ed25519PrivateKey):
            return self.key.sign(message)
        if isinstance(self.key, ec.EllipticCurvePrivateKey):
            return self.key.sign(message, ec.ECDSA(hashes.SHA256()))
        raise SystemExit("unsupported key type (Ed25519 or ECDSA P-256)")


def node_identity(args, host, ip, port):
    """The SPIFFE id of the node at ip:port, from a TLS handshake with this
    member's certificate and the CA bundle, its certificate checked against
    `host` (as gRPC checks it)."""
    ctx = ssl.create_default_context(cafile=args.ca)
    ctx.load_cert_chain(args.cert, args.key)
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection((ip, port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=host) as tls:
            der = tls.getpeercert(binary_form=True)
    cert = x509.load_der_x509_certificate(der)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        raise SystemExit(f"refused: the node at {args.node} does not name exactly one SPIFFE id")
    return uris[0]


def check_node(args, member, found):
    """Refuses, before anything is sent, a node this member did not mean to
    reach: by default only a node of its own member (so a DNS or routing
    trick cannot hand a TLP:RED bulletin to another member's node); with
    --node-id (BEACON_NODE_ID), exactly that node. As the beacon CLI does."""
    if args.node_id:
        if found != args.node_id:
            raise SystemExit(
                f"refused: the node at {args.node} is {found}, not the pinned {args.node_id}; nothing was sent"
            )
        return
    parts = found.split("/")
    own_domain = member.spiffe_id.split("/")[2]
    if len(parts) < 6 or parts[2] != own_domain or parts[3] != "node" or parts[4] != member.member:
        raise SystemExit(
            f"refused: the node at {args.node} is {found}, not a node of your member {member.member}; "
            "nothing was sent. To use another member's node on purpose (a hub), pin it with "
            "--node-id (or BEACON_NODE_ID)"
        )


def channel(args, member):
    """A channel to the node, opened only after the node was checked. The
    name is resolved once and the check and the channel use that one
    address, so the node checked is the node gRPC talks to (the channel
    still verifies the certificate against the host name)."""
    with open(args.ca, "rb") as f:
        ca = f.read()
    host, _, port = args.node.rpartition(":")
    host = host.strip("[]")
    port = int(port)
    ip = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][4][0]
    check_node(args, member, node_identity(args, host, ip, port))
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=member.key_pem, certificate_chain=member.cert_pem
    )
    target = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
    options = []
    if host != ip:
        options = [("grpc.ssl_target_name_override", host), ("grpc.default_authority", host)]
    return grpc.secure_channel(target, creds, options=options)


def envelope(pb, member, bulletin):
    payload = bulletin.SerializeToString()
    sig = member.sign(pae(PAYLOAD_TYPE, payload))
    return pb.Envelope(
        payload_type=PAYLOAD_TYPE,
        payload=payload,
        signatures=[pb.Signature(keyid=member.spiffe_id, sig=sig, cert_chain=member.chain_der)],
    )


def cmd_publish(args, pb, svc, grpc_svc):
    member = Member(args.cert, args.key)
    stub = grpc_svc.BulletinsStub(channel(args, member))
    for i in range(args.count):
        b = pb.Bulletin(
            id=str(uuid.uuid4()),
            publisher=member.member,
            kind=pb.KIND_DISINFORMATION,
            severity=pb.SEVERITY_HIGH,
            tlp=pb.TLP_GREEN,
            title=args.title if args.count == 1 else f"{args.title} #{i}",
            summary=args.summary,
            body="x" * args.body_bytes,
            topics=["elections"],
        )
        b.created_at.FromDatetime(datetime.datetime.now(datetime.timezone.utc))
        try:
            r = stub.Publish(svc.PublishRequest(envelope=envelope(pb, member, b)), timeout=30)
        except grpc.RpcError as e:
            print(json.dumps({"id": b.id, "refused": e.code().name, "message": e.details()}))
            return 1
        print(json.dumps({"id": r.id, "sequence": r.sequence, "duplicate": r.duplicate}), flush=True)
    return 0


def cmd_subscribe(args, pb, svc, grpc_svc):
    """Durable subscription: print deliveries, ack them, say goodbye after --count."""
    member = Member(args.cert, args.key)
    stub = grpc_svc.BulletinsStub(channel(args, member))
    outbox = queue.Queue()
    done = object()

    def requests():
        yield svc.SubscribeRequest(
            open=svc.SubscribeOpen(
                name=args.name,
                start=svc.StartPosition(resume=svc.StartPosition.Resume()),
                window=64,
            )
        )
        while True:
            item = outbox.get()
            if item is done:
                return  # closing our side is the goodbye: the node commits the cursor
            yield item

    seen = 0
    responses = stub.Subscribe(requests(), timeout=60)
    for resp in responses:
        kind = resp.WhichOneof("msg")
        if kind == "subscribed":
            print(json.dumps({"subscribed": resp.subscribed.name, "cursor": resp.subscribed.cursor,
                              "head": resp.subscribed.head}), flush=True)
        elif kind == "delivery":
            if seen >= args.count:
                continue  # after the goodbye: not written, not acknowledged
            d = resp.delivery
            b = pb.Bulletin()
            b.ParseFromString(d.envelope.payload)
            print(json.dumps({"sequence": d.sequence, "id": b.id, "title": b.title,
                              "signer": d.envelope.signatures[0].keyid}), flush=True)
            outbox.put(svc.SubscribeRequest(ack=svc.Ack(sequence=d.sequence)))
            seen += 1
            if seen >= args.count:
                outbox.put(done)
        # caught_up and heartbeat need nothing
    # The stream ended after the goodbye: the cursor is durable.
    print(json.dumps({"stopped_after": seen}), flush=True)
    return 0


def cmd_list(args, pb, svc, grpc_svc):
    """Pages through List with grpcio's default message limits; one line per page."""
    member = Member(args.cert, args.key)
    stub = grpc_svc.BulletinsStub(channel(args, member))
    after = 0
    while True:
        try:
            page = stub.List(svc.ListRequest(after_sequence=after, limit=args.limit), timeout=30)
        except grpc.RpcError as e:
            print(json.dumps({"refused": e.code().name, "message": e.details()}))
            return 1
        print(json.dumps({"deliveries": [d.sequence for d in page.deliveries],
                          "bytes": page.ByteSize(), "more": page.more,
                          "next_after_sequence": page.next_after_sequence}), flush=True)
        if not page.more:
            return 0
        after = page.next_after_sequence


def cmd_health(args, pb, svc, grpc_svc):
    """The standard gRPC health check (grpcio-health-checking)."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    member = Member(args.cert, args.key)
    stub = health_pb2_grpc.HealthStub(channel(args, member))
    try:
        r = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=30)
    except grpc.RpcError as e:
        print(json.dumps({"refused": e.code().name, "message": e.details()}))
        return 1
    print(json.dumps({"status": health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)}))
    return 0


def cmd_services(args, pb, svc, grpc_svc):
    """Lists the node's services through server reflection, as grpcio-reflection's
    client does it (the v1alpha protocol, which older tools such as grpcurl 1.8 speak)."""
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    member = Member(args.cert, args.key)
    db = ProtoReflectionDescriptorDatabase(channel(args, member))
    services = sorted(db.get_services())
    methods = []
    for name in services:
        if name.startswith("beacon."):
            desc = db.FindFileContainingSymbol(name)
            for s in desc.service:
                methods.extend(f"{name}/{m.name}" for m in s.method if desc.package + "." + s.name == name)
    print(json.dumps({"services": services, "methods": sorted(methods)}))
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--node", default=os.environ.get("BEACON_NODE"), required="BEACON_NODE" not in os.environ)
    p.add_argument("--ca", default=os.environ.get("BEACON_CA"), required="BEACON_CA" not in os.environ)
    p.add_argument("--cert", default=os.environ.get("BEACON_CERT"), required="BEACON_CERT" not in os.environ)
    p.add_argument("--key", default=os.environ.get("BEACON_KEY"), required="BEACON_KEY" not in os.environ)
    p.add_argument(
        "--node-id",
        default=os.environ.get("BEACON_NODE_ID"),
        help="the node's SPIFFE id, to use a node of another member (a hub); "
        "without it only a node of your own member is accepted",
    )
    sub = p.add_subparsers(dest="command", required=True)
    pub = sub.add_parser("publish", help="sign and publish bulletins")
    pub.add_argument("--title", required=True)
    pub.add_argument("--summary", required=True)
    pub.add_argument("--count", type=int, default=1)
    pub.add_argument("--body-bytes", type=int, default=0, help="pad the body to test size limits")
    s = sub.add_parser("subscribe", help="durable subscription with resume")
    s.add_argument("--name", required=True)
    s.add_argument("--count", type=int, required=True)
    ls = sub.add_parser("list", help="page through every bulletin you may read")
    ls.add_argument("--limit", type=int, default=1000)
    sub.add_parser("health", help="gRPC health check")
    sub.add_parser("services", help="services and methods, by server reflection (v1alpha)")
    args = p.parse_args()
    pb, svc, grpc_svc = load_stubs()
    commands = {
        "publish": cmd_publish,
        "subscribe": cmd_subscribe,
        "list": cmd_list,
        "health": cmd_health,
        "services": cmd_services,
    }
    return commands[args.command](args, pb, svc, grpc_svc)


if __name__ == "__main__":
    sys.exit(main())
