#!/usr/bin/env python3
"""An outside check of Beacon's sealed bulletins, written from the format's
description alone (proto/beacon/v1/bulletin.proto, SealedBulletin), with
pyca `cryptography` (HPKE since 47.0) — not with Beacon's code.

    sealed.py open --envelope sealed.json --key fr.key --ca ca.pem [--ca ...]
        Checks the outer signature (the signer's chain to one of the CAs),
        finds the wrap for the key, opens it (HPKE Base mode), checks the key
        commitment, decrypts, checks the inner signature by the same signer
        and that the inner bulletin agrees with the clear header; prints the
        bulletin as JSON. Exits 1, saying why, on any failure.

    sealed.py seal --cert client.pem --key client.key --member uk.ncsc \
            --recipient uk.key --recipient fr.key --to fr.anssi --title T --body B \
            --out sealed.json [--tamper WHAT]
        Signs a TLP:RED bulletin, seals it to the recipients' public keys and
        signs the result: a DSSE JSON file `beacon open` must open. --tamper
        makes it wrong in one way (then re-signs the outer envelope):
        ciphertext, wrap, header-id, commitment, inner-signature,
        inner-disagrees.
"""

import argparse
import base64
import hashlib
import hmac
import json
import os
import struct
import sys
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "examples", "python"))
from beacon_client import load_stubs, pae  # noqa: E402  (stubs from proto/, DSSE PAE)

from cryptography import x509  # noqa: E402
from cryptography.exceptions import InvalidSignature, InvalidTag  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives import hpke  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, ed25519  # noqa: E402
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305  # noqa: E402
from cryptography.hazmat.primitives.kdf.hkdf import HKDF  # noqa: E402

BULLETIN_TYPE = "application/vnd.beacon.bulletin.v1+protobuf"
SEALED_TYPE = "application/vnd.beacon.sealed-bulletin.v1+protobuf"
COMMITMENT_LABEL = b"beacon sealed-bulletin v1 key commitment"
PAYLOAD_LABEL = b"beacon sealed-bulletin v1 payload"
WRAP_LABEL = b"beacon sealed-bulletin v1 wrap"
KEY_ID_LABEL = b"beacon recipient key v1"

# RFC 9180 ids -> (pyca suite, public key length, payload AEAD, its key length)
SUITES = {
    (0x0010, 0x0001, 0x0001): ("P256-SHA256-AES128GCM", 65, AESGCM, 16),
    (0x0020, 0x0001, 0x0003): ("X25519-SHA256-CHACHA20POLY1305", 32, ChaCha20Poly1305, 32),
}
NAMES = {v[0]: k for k, v in SUITES.items()}


def fail(msg):
    print(json.dumps({"opened": False, "error": msg}))
    sys.exit(1)


def pyca_suite(ids):
    kem = {0x0010: hpke.KEM.P256, 0x0020: hpke.KEM.X25519}[ids[0]]
    aead = {0x0001: hpke.AEAD.AES_128_GCM, 0x0003: hpke.AEAD.CHACHA20_POLY1305}[ids[2]]
    return hpke.Suite(kem, hpke.KDF.HKDF_SHA256, aead)


def key_id(ids, public):
    return hashlib.sha256(KEY_ID_LABEL + struct.pack(">HHH", *ids) + public).digest()[:16]


def wrap_info(header_hash, member, kid):
    m = member.encode()
    return WRAP_LABEL + b"\x00" + header_hash + struct.pack(">H", len(m)) + m + kid


def payload_key(ids, content_key):
    length = SUITES[ids][3]
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=PAYLOAD_LABEL).derive(content_key)


def commitment(content_key):
    return hmac.new(content_key, COMMITMENT_LABEL, hashlib.sha256).digest()


def private_key(ids, raw):
    if ids[0] == 0x0010:
        return ec.derive_private_key(int.from_bytes(raw, "big"), ec.SECP256R1())
    from cryptography.hazmat.primitives.asymmetric import x25519
    return x25519.X25519PrivateKey.from_private_bytes(raw)


def public_key(ids, raw):
    if ids[0] == 0x0010:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)
    from cryptography.hazmat.primitives.asymmetric import x25519
    return x25519.X25519PublicKey.from_public_bytes(raw)


def verify_sig(cert, message, sig):
    pk = cert.public_key()
    if isinstance(pk, ed25519.Ed25519PublicKey):
        pk.verify(sig, message)
    else:
        pk.verify(sig, message, ec.ECDSA(hashes.SHA256()))


def read_dsse(path):
    with open(path) as f:
        d = json.load(f)
    sigs = d["signatures"]
    if len(sigs) != 1:
        fail(f"{len(sigs)} signatures")
    certs = x509.load_pem_x509_certificates(sigs[0]["cert"].encode())
    return d["payloadType"], base64.b64decode(d["payload"]), base64.b64decode(sigs[0]["sig"]), certs, sigs[0].get("keyid", "")


def chain_ok(certs, cas):
    """The leaf (and any intermediates) lead to one of the CAs."""
    chain = list(certs)
    for i in range(len(chain) - 1):
        chain[i].verify_directly_issued_by(chain[i + 1])
    top = chain[-1]
    for ca in cas:
        try:
            top.verify_directly_issued_by(ca)
            return True
        except (ValueError, TypeError, InvalidSignature):
            continue
    return False


def do_open(args):
    pb, _, _ = load_stubs()
    cas = []
    for p in args.ca:
        with open(p, "rb") as f:
            cas.extend(x509.load_pem_x509_certificates(f.read()))
    ptype, payload, sig, certs, _ = read_dsse(args.envelope)
    if ptype != SEALED_TYPE:
        fail(f"payload type {ptype}")
    if not chain_ok(certs, cas):
        fail("the signer's chain leads to none of the CAs")
    try:
        verify_sig(certs[0], pae(ptype, payload), sig)
    except InvalidSignature:
        fail("the outer signature does not verify")
    sealed = pb.SealedBulletin.FromString(payload)
    header = pb.SealedHeader.FromString(sealed.header)
    ids = (header.kem_id, header.kdf_id, header.aead_id)
    if ids not in SUITES:
        fail(f"unknown suite {ids}")
    if len(sealed.wraps) != len(header.recipients):
        fail("a wrap per recipient")
    with open(args.key) as f:
        kf = json.load(f)
    if NAMES.get(kf["suite"]) != ids:
        fail("the key's suite is not the bulletin's")
    raw = bytes.fromhex(kf["private_key"])
    kid = key_id(ids, bytes.fromhex(kf["public_key"]))
    index = [i for i, r in enumerate(header.recipients) if r.member == kf["member"] and r.key_id == kid]
    if not index:
        fail("not a recipient")
    i = index[0]
    header_hash = hashlib.sha256(sealed.header).digest()
    wrap = sealed.wraps[i]
    if len(wrap.enc) != SUITES[ids][1] or len(wrap.wrapped_key) != 48:
        fail("a wrap of the wrong size")
    try:
        content_key = pyca_suite(ids).decrypt(
            wrap.enc + wrap.wrapped_key, private_key(ids, raw), wrap_info(header_hash, kf["member"], kid)
        )
    except (InvalidTag, ValueError):
        fail("the wrap does not open")
    if not hmac.compare_digest(commitment(content_key), header.key_commitment):
        fail("the key commitment does not match")
    aead = SUITES[ids][2](payload_key(ids, content_key))
    try:
        plain = aead.decrypt(b"\x00" * 12, sealed.ciphertext, header_hash)
    except InvalidTag:
        fail("the content does not decrypt")
    if len(plain) != header.padded_length:
        fail("the padded length")
    (n,) = struct.unpack(">I", plain[:4])
    if n > len(plain) - 4 or any(plain[4 + n:]):
        fail("the padding")
    inner = pb.Envelope.FromString(plain[4 : 4 + n])
    if inner.payload_type not in ("", BULLETIN_TYPE) or len(inner.signatures) != 1:
        fail("the inner envelope's form")
    try:
        verify_sig(certs[0], pae(BULLETIN_TYPE, inner.payload), inner.signatures[0].sig)
    except InvalidSignature:
        fail("the inner signature is not the outer signer's")
    b = pb.Bulletin.FromString(inner.payload)
    members = []
    for r in header.recipients:
        if r.member not in members:
            members.append(r.member)
    checks = {
        "id": b.id == header.id,
        "publisher": b.publisher == header.publisher,
        "created_at": b.created_at == header.created_at,
        "expires_at": b.expires_at == header.expires_at,
        "tlp": b.tlp == header.tlp,
        "relation": b.WhichOneof("relation") == header.WhichOneof("relation")
        and getattr(b, b.WhichOneof("relation") or "id") == getattr(header, header.WhichOneof("relation") or "id"),
        "kind": header.kind == 0 or header.kind == b.kind,
        "severity": header.severity == 0 or header.severity == b.severity,
        "recipients": all(m in members for m in b.audience.members)
        and all(m == b.publisher or m in b.audience.members for m in members),
    }
    bad = [k for k, ok in checks.items() if not ok]
    if bad:
        fail("the inner bulletin disagrees with the header on " + ", ".join(bad))
    print(json.dumps({"opened": True, "id": b.id, "title": b.title, "body": b.body, "publisher": b.publisher}))


def padme(n):
    n = max(n, 256)
    e = n.bit_length() - 1
    s = e.bit_length()
    mask = (1 << (e - s)) - 1
    return (n + mask) & ~mask


def do_seal(args):
    pb, _, _ = load_stubs()
    with open(args.cert, "rb") as f:
        cert_pem = f.read()
    with open(args.key, "rb") as f:
        signing = serialization.load_pem_private_key(f.read(), password=None)

    def sign(ptype, payload):
        msg = pae(ptype, payload)
        if isinstance(signing, ed25519.Ed25519PrivateKey):
            return signing.sign(msg)
        return signing.sign(msg, ec.ECDSA(hashes.SHA256()))

    recipients = []
    for p in args.recipient:
        with open(p) as f:
            kf = json.load(f)
        recipients.append((kf["member"], NAMES[kf["suite"]], bytes.fromhex(kf["public_key"])))
    ids = recipients[0][1]
    b = pb.Bulletin()
    b.id = str(uuid.uuid4())
    b.publisher = args.member
    b.created_at.GetCurrentTime()
    b.created_at.nanos = 0
    b.kind = pb.KIND_ESPIONAGE
    b.severity = pb.SEVERITY_HIGH
    b.tlp = pb.TLP_RED
    b.audience.members.extend(args.to)
    b.title = args.title
    b.summary = "sealed in Python"
    b.body = args.body
    payload = b.SerializeToString()
    inner_sig = sign(BULLETIN_TYPE, payload)
    if args.tamper == "inner-signature":
        inner_sig = bytearray(inner_sig)
        inner_sig[-1] ^= 1
        inner_sig = bytes(inner_sig)
    inner = pb.Envelope(payload=payload, signatures=[pb.Signature(sig=inner_sig)])
    inner_bytes = inner.SerializeToString()
    plain = struct.pack(">I", len(inner_bytes)) + inner_bytes
    plain += b"\x00" * (padme(len(plain)) - len(plain))
    content_key = os.urandom(32)
    h = pb.SealedHeader()
    h.id = b.id if args.tamper != "inner-disagrees" else str(uuid.uuid4())
    h.publisher = b.publisher
    h.created_at.CopyFrom(b.created_at)
    h.tlp = b.tlp
    for member, rids, pub in recipients:
        h.recipients.add(member=member, key_id=key_id(rids, pub))
    h.kind = b.kind
    h.severity = b.severity
    h.kem_id, h.kdf_id, h.aead_id = ids
    h.key_commitment = commitment(content_key)
    h.padded_length = len(plain)
    header = h.SerializeToString()
    header_hash = hashlib.sha256(header).digest()
    ct = SUITES[ids][2](payload_key(ids, content_key)).encrypt(b"\x00" * 12, plain, header_hash)
    sealed = pb.SealedBulletin(header=header, ciphertext=ct)
    enc_len = SUITES[ids][1]
    for member, rids, pub in recipients:
        out = pyca_suite(ids).encrypt(content_key, public_key(ids, pub), wrap_info(header_hash, member, key_id(rids, pub)))
        sealed.wraps.add(enc=out[:enc_len], wrapped_key=out[enc_len:])
    if args.tamper == "ciphertext":
        sealed.ciphertext = bytes([sealed.ciphertext[0] ^ 1]) + sealed.ciphertext[1:]
    elif args.tamper == "wrap":
        w = sealed.wraps[-1]
        w.wrapped_key = bytes([w.wrapped_key[0] ^ 1]) + w.wrapped_key[1:]
    elif args.tamper == "header-id":
        h.id = str(uuid.uuid4())
        sealed.header = h.SerializeToString()
    elif args.tamper == "commitment":
        h.key_commitment = bytes(32)
        sealed.header = h.SerializeToString()
    outer = sealed.SerializeToString()
    dsse = {
        "payloadType": SEALED_TYPE,
        "payload": base64.b64encode(outer).decode(),
        "signatures": [{"keyid": "", "sig": base64.b64encode(sign(SEALED_TYPE, outer)).decode(), "cert": cert_pem.decode()}],
    }
    with open(args.out, "w") as f:
        json.dump(dsse, f)
    print(json.dumps({"sealed": True, "id": b.id, "tamper": args.tamper or ""}))


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    o = sub.add_parser("open")
    o.add_argument("--envelope", required=True)
    o.add_argument("--key", required=True)
    o.add_argument("--ca", action="append", required=True)
    s = sub.add_parser("seal")
    s.add_argument("--cert", required=True)
    s.add_argument("--key", required=True)
    s.add_argument("--member", required=True)
    s.add_argument("--recipient", action="append", required=True)
    s.add_argument("--to", action="append", default=[])
    s.add_argument("--title", required=True)
    s.add_argument("--body", default="")
    s.add_argument("--out", required=True)
    s.add_argument("--tamper", choices=["ciphertext", "wrap", "header-id", "commitment", "inner-signature", "inner-disagrees"])
    args = ap.parse_args()
    {"open": do_open, "seal": do_seal}[args.cmd](args)


if __name__ == "__main__":
    main()
