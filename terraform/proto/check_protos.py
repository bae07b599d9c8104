#!/usr/bin/env python3
"""Check that our .proto files describe exactly the same protocol as a
reference copy.

Usage:
    python check_protos.py REFERENCE OURS

Each argument is a .proto file or a directory. With directories, every
tfplugin*.proto under OURS is paired with the file of the same name found
(recursively) under REFERENCE.

Both sides are compiled with protoc (from the grpcio-tools package; run this
with a Python where `grpc_tools` is installed) into descriptors. Comments,
source info, file options (go_package, ...) and the file name are ignored;
everything else is compared: package, syntax, imports, messages (nesting,
fields with number/label/type/type_name/oneof/proto3_optional/json_name/
default/options, reserved ranges and names, map entries), enums (values and
numbers), services and methods (types and streaming). Declaration order is
ignored.

Prints every difference and exits 1 if there is any, 0 otherwise.
"""

import os
import subprocess
import sys
import tempfile

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor_pb2 import FieldDescriptorProto as FDP

LABELS = {v: k for k, v in FDP.Label.items()}
TYPES = {v: k for k, v in FDP.Type.items()}


def compile_proto(path):
    """Compile one .proto with protoc and return its FileDescriptorProto."""
    path = os.path.abspath(path)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "set.pb")
        cmd = [sys.executable, "-m", "grpc_tools.protoc",
               "-I" + os.path.dirname(path),
               "--descriptor_set_out=" + out, "--include_imports",
               os.path.basename(path)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            sys.exit("protoc failed on %s:\n%s" % (path, res.stderr))
        fds = descriptor_pb2.FileDescriptorSet()
        with open(out, "rb") as f:
            fds.ParseFromString(f.read())
    # With --include_imports the requested file comes last.
    main = [f for f in fds.file if f.name == os.path.basename(path)]
    if len(main) != 1:
        sys.exit("could not find %s in its descriptor set" % path)
    return main[0]


def opts(msg):
    """Options as a comparable string (empty if unset)."""
    return msg.SerializeToString(deterministic=True).hex() if msg.ListFields() else ""


def norm_enum(e):
    return {
        "values": {v.name: {"number": v.number, "options": opts(v.options)}
                   for v in e.value},
        "options": opts(e.options),
        "reserved_ranges": sorted((r.start, r.end) for r in e.reserved_range),
        "reserved_names": sorted(e.reserved_name),
    }


def norm_message(m):
    oneofs = [o.name for o in m.oneof_decl]
    fields = {}
    for f in m.field:
        fields[f.name] = {
            "number": f.number,
            "label": LABELS[f.label],
            "type": TYPES[f.type],
            "type_name": f.type_name,
            "extendee": f.extendee,
            "default": f.default_value,
            "oneof": oneofs[f.oneof_index] if f.HasField("oneof_index") else None,
            "proto3_optional": f.proto3_optional,
            "json_name": f.json_name,
            "options": opts(f.options),
        }
    return {
        "fields": fields,
        "oneofs": sorted(oneofs),
        "nested": {n.name: norm_message(n) for n in m.nested_type},
        "enums": {e.name: norm_enum(e) for e in m.enum_type},
        "options": opts(m.options),
        "map_entry": m.options.map_entry,
        "reserved_ranges": sorted((r.start, r.end) for r in m.reserved_range),
        "reserved_names": sorted(m.reserved_name),
        "extension_ranges": sorted((r.start, r.end) for r in m.extension_range),
        "extensions": sorted(x.name for x in m.extension),
    }


def norm_file(fd):
    fd.ClearField("source_code_info")
    fd.ClearField("options")
    fd.ClearField("name")
    return {
        "package": fd.package,
        "syntax": fd.syntax,
        "dependencies": sorted(fd.dependency),
        "public_dependencies": sorted(fd.dependency[i] for i in fd.public_dependency),
        "messages": {m.name: norm_message(m) for m in fd.message_type},
        "enums": {e.name: norm_enum(e) for e in fd.enum_type},
        "extensions": sorted(x.name for x in fd.extension),
        "services": {
            s.name: {
                "options": opts(s.options),
                "methods": {
                    r.name: {
                        "input": r.input_type,
                        "output": r.output_type,
                        "client_streaming": r.client_streaming,
                        "server_streaming": r.server_streaming,
                        "options": opts(r.options),
                    } for r in s.method
                },
            } for s in fd.service
        },
    }


def diff(a, b, path, out):
    """Append a line to `out` for every place where a and b differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            p = "%s.%s" % (path, k) if path else str(k)
            if k not in b:
                out.append("%s: only in reference" % p)
            elif k not in a:
                out.append("%s: only in ours" % p)
            else:
                diff(a[k], b[k], p, out)
    elif a != b:
        out.append("%s: reference=%r ours=%r" % (path, a, b))


def counts(n):
    def walk(msgs):
        nm = ne = 0
        for m in msgs.values():
            nm += 0 if m["map_entry"] else 1  # map<> entries not counted
            ne += len(m["enums"])
            a, b = walk(m["nested"])
            nm += a
            ne += b
        return nm, ne
    nm, ne = walk(n["messages"])
    ne += len(n["enums"])
    rpcs = sum(len(s["methods"]) for s in n["services"].values())
    return nm, ne, rpcs


def find_protos(root):
    found = {}
    for d, _, files in os.walk(root):
        for f in files:
            if f.endswith(".proto"):
                found.setdefault(f, os.path.join(d, f))
    return found


def pairs(ref, ours):
    if os.path.isfile(ref) and os.path.isfile(ours):
        return [(ref, ours)]
    if os.path.isdir(ref) and os.path.isdir(ours):
        ref_files = find_protos(ref)
        result = []
        for name in sorted(os.listdir(ours)):
            if name.startswith("tfplugin") and name.endswith(".proto"):
                if name not in ref_files:
                    sys.exit("%s: no file of that name under %s" % (name, ref))
                result.append((ref_files[name], os.path.join(ours, name)))
        if not result:
            sys.exit("no tfplugin*.proto files in %s" % ours)
        return result
    sys.exit("give two files or two directories")


def main(argv):
    if len(argv) != 3:
        sys.exit(__doc__)
    failed = False
    for ref, ours in pairs(argv[1], argv[2]):
        a = norm_file(compile_proto(ref))
        b = norm_file(compile_proto(ours))
        out = []
        diff(a, b, "", out)
        name = os.path.basename(ours)
        if out:
            failed = True
            print("%s: %d difference(s)" % (name, len(out)))
            for line in out:
                print("  " + line)
        else:
            nm, ne, rpcs = counts(b)
            print("%s: identical (package %s, %d messages, %d enums, %d RPCs, imports %s)"
                  % (name, b["package"], nm, ne, rpcs,
                     ", ".join(b["dependencies"]) or "none"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
