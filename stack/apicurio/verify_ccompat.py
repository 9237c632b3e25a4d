"""Smoke test of Apicurio Registry's Confluent-compatible API with confluent-kafka.

Usage: python verify_ccompat.py [base_url]
  base_url defaults to http://127.0.0.1:8081/apis/ccompat/v7

Exits non-zero on the first failed check. Uses a unique subject per run
(t-value by default; override with SUBJECT env var) so it can be re-run
against a long-lived registry.
"""
import json
import os
import sys
import uuid

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

URL = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8081/apis/ccompat/v7"
SUBJECT = os.environ.get("SUBJECT", "t-value")
TOPIC = SUBJECT[: -len("-value")] if SUBJECT.endswith("-value") else SUBJECT


def rec(fields):
    return json.dumps({"type": "record", "name": "Payment", "namespace": "paystream",
                       "fields": fields})


V1 = rec([{"name": "id", "type": "string"}, {"name": "amount", "type": "long"}])
# compatible with V1 under BACKWARD(_TRANSITIVE): new optional field with default
V2_OK = rec([{"name": "id", "type": "string"}, {"name": "amount", "type": "long"},
             {"name": "currency", "type": "string", "default": "EUR"}])
# incompatible: new required field without default
V2_BAD = rec([{"name": "id", "type": "string"}, {"name": "amount", "type": "long"},
              {"name": "merchant", "type": "string"}])

failures = []


def check(name, cond, detail=""):
    print(("PASS " if cond else "FAIL ") + name + (f"  [{detail}]" if detail else ""))
    if not cond:
        failures.append(name)


sr = SchemaRegistryClient({"url": URL})

sid1 = sr.register_schema(SUBJECT, Schema(V1, "AVRO"))
check("register v1", isinstance(sid1, int), f"id={sid1}")

sid1b = sr.register_schema(SUBJECT, Schema(V1, "AVRO"))
check("re-register identical schema returns same id", sid1b == sid1, f"{sid1b} vs {sid1}")

# NB: despite its "-> str" annotation, confluent-kafka returns the raw JSON body here
# (a dict; Apicurio adds "normalize": false), same as against Confluent SR.
lvl = sr.set_compatibility(subject_name=SUBJECT, level="BACKWARD_TRANSITIVE")
lvl = lvl.get("compatibility") if isinstance(lvl, dict) else lvl
check("set_compatibility", lvl == "BACKWARD_TRANSITIVE", repr(lvl))
got = sr.get_compatibility(subject_name=SUBJECT)
check("get_compatibility", got == "BACKWARD_TRANSITIVE", repr(got))

bad = sr.test_compatibility(SUBJECT, Schema(V2_BAD, "AVRO"))
check("test_compatibility(incompatible) is False", bad is False, repr(bad))
ok = sr.test_compatibility(SUBJECT, Schema(V2_OK, "AVRO"))
check("test_compatibility(compatible) is True", ok is True, repr(ok))

# Is compatibility enforced on register?
try:
    sr.register_schema(SUBJECT, Schema(V2_BAD, "AVRO"))
    check("register incompatible schema rejected", False, "was accepted")
except SchemaRegistryError as e:
    check("register incompatible schema rejected", e.http_status_code == 409,
          f"http={e.http_status_code} code={e.error_code} msg={e.error_message[:120]}")

sid2 = sr.register_schema(SUBJECT, Schema(V2_OK, "AVRO"))
check("register compatible v2", isinstance(sid2, int) and sid2 != sid1, f"id={sid2}")

latest = sr.get_latest_version(SUBJECT)
check("get_latest_version", latest.schema_id == sid2 and latest.version == 2,
      f"id={latest.schema_id} version={latest.version} subject={latest.subject}")

s = sr.get_schema(sid1)
check("get_schema(id)", json.loads(s.schema_str)["fields"] == json.loads(V1)["fields"],
      f"type={s.schema_type}")

vers = sr.get_versions(SUBJECT)
check("get_versions", vers == [1, 2], repr(vers))
subs = sr.get_subjects()
check("get_subjects contains subject", SUBJECT in subs, repr(subs))
lookup = sr.lookup_schema(SUBJECT, Schema(V1, "AVRO"))
check("lookup_schema", lookup.schema_id == sid1 and lookup.version == 1,
      f"id={lookup.schema_id} v={lookup.version}")

# Serializer / deserializer round trip (auto-register off: uses latest registered schema)
ctx = SerializationContext(TOPIC, MessageField.VALUE)
ser = AvroSerializer(sr, V2_OK, conf={"auto.register.schemas": False, "use.latest.version": True})
de = AvroDeserializer(sr)
obj = {"id": str(uuid.uuid4()), "amount": 1234, "currency": "USD"}
raw = ser(obj, ctx)
check("serializer wire format (magic 0 + id)", raw[0] == 0 and int.from_bytes(raw[1:5], "big") == sid2,
      f"id-in-bytes={int.from_bytes(raw[1:5], 'big')}")
back = de(raw, ctx)
check("AvroDeserializer round trip", back == obj, repr(back))

# auto-register path (default serializer config)
ser2 = AvroSerializer(sr, V2_OK)
raw2 = ser2(obj, ctx)
check("auto-register serializer reuses existing id", int.from_bytes(raw2[1:5], "big") == sid2)

print("\nRESULT:", "OK" if not failures else f"{len(failures)} FAILED: {failures}")
sys.exit(1 if failures else 0)
