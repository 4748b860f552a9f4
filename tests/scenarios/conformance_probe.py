import hashlib
import json
from binascii import hexlify, unhexlify

try:
    from time import ticks_diff, ticks_ms
except ImportError:
    from time import monotonic

    def ticks_ms():
        return int(monotonic() * 1000)

    def ticks_diff(a, b):
        return a - b
from trustfleet_device import cbor, cose, p256
from trustfleet_device.errors import DecodeError
from trustfleet_device.limits import DEFAULT


def hx(b):
    return hexlify(b).decode()


def jsonable(v):
    if v is None or v is True or v is False:
        return v
    t = type(v)
    if t is int:
        return ["int", str(v)]
    if t is bytes:
        return ["bytes", hx(v)]
    if t is str:
        return ["str", v]
    if t is list:
        return ["list", [jsonable(x) for x in v]]
    if t is dict:
        items = sorted(v.items(), key=lambda kv: cbor.encode(kv[0]))
        return ["map", [[jsonable(k), jsonable(x)] for k, x in items]]
    if t is cbor.Tag:
        return ["tag", v.number, jsonable(v.value)]
    return ["unexpected type", t.__name__]


def decode_result(fn, data, tags):
    try:
        return ["ok", jsonable(fn(data, DEFAULT, tags))]
    except DecodeError as e:
        return [type(e).__name__, str(e)]
    except Exception as e:
        return ["BUG " + type(e).__name__, str(e)]


def run_appendix(path):
    out = []
    for entry in json.load(open(path)):
        data = unhexlify(entry["hex"])
        out.append([entry["hex"], decode_result(cbor.decode, data, ()),
                    decode_result(cbor.decode_pure, data, ())])
    return {"backend": cbor.BACKEND, "results": out}


def run_fuzz(path, tags):
    blob = open(path, "rb").read()
    pos = 0
    out = []
    slowest = 0
    while pos < len(blob):
        n = (blob[pos] << 8) | blob[pos + 1]
        data = blob[pos + 2:pos + 2 + n]
        pos += 2 + n
        t0 = ticks_ms()
        r = decode_result(cbor.decode_pure, data, tags)
        slowest = max(slowest, ticks_diff(ticks_ms(), t0))
        out.append(r)
    return {"slowest_ms": slowest, "results": out}


def verify_result(msg, signer, point, aad):
    try:
        return cose.verify_signer(msg, signer, point, aad)
    except Exception as e:
        return "BUG " + type(e).__name__ + ": " + str(e)


def run_cose(path):
    out = {}
    for case in json.load(open(path)):
        raw = unhexlify(case["cbor"])
        entry = {}
        try:
            msg = cose.parse(raw, DEFAULT, case["untagged"], False)
        except DecodeError as e:
            entry["parse"] = "DecodeError: " + str(e)
            msg = None
        except Exception as e:
            entry["parse"] = "BUG " + type(e).__name__ + ": " + str(e)
            msg = None
        if msg is not None:
            entry["parse"] = "ok"
            signers = []
            for i in range(len(msg.signers)):
                s = msg.signers[i]
                spec = case["signers"][i]
                aad = unhexlify(spec["aad"])
                tbs = cose.tbs_prefix(msg, s, aad) + msg.unverified_payload
                signers.append({
                    "alg": s.alg, "problem": s.problem, "kid": hx(s.kid or b""),
                    "ok": verify_result(msg, s, unhexlify(spec["point"]), aad), "tbs": hx(tbs),
                })
            entry["signers"] = signers
        try:
            strict = cose.parse(raw)
            entry["profile"] = [s.problem for s in strict.signers]
        except DecodeError as e:
            entry["profile"] = "DecodeError: " + str(e)
        out[case["id"]] = entry
    return out


def run_wycheproof(path):
    d = json.load(open(path))
    n = 0
    ms = 0
    ms_valid = 0
    counts = {"valid": 0, "invalid": 0, "acceptable": 0}
    mismatches = []
    acceptable = []
    for g in d["testGroups"]:
        point = unhexlify(g["publicKey"]["uncompressed"])
        for tc in g["tests"]:
            n += 1
            digest = hashlib.sha256(unhexlify(tc["msg"])).digest()
            sig = unhexlify(tc["sig"])
            t0 = ticks_ms()
            try:
                got = p256.verify_digest_pure(point, digest, sig)
            except Exception as e:
                got = type(e).__name__ + ": " + str(e)
            spent = ticks_diff(ticks_ms(), t0)
            ms += spent
            result = tc["result"]
            if result == "valid":
                ms_valid += spent
            counts[result] += 1
            if result == "acceptable":
                acceptable.append([tc["tcId"], got])
            elif got is not (result == "valid"):
                mismatches.append([tc["tcId"], result, str(got)])
    return {"count": n, "declared": d["numberOfTests"], "counts": counts, "ms": ms, "ms_valid": ms_valid,
            "mismatches": mismatches, "acceptable": acceptable}
