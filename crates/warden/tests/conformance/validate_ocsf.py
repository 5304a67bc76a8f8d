"""Validate OCSF JSON lines against the official schema of the class and version each claims.

Usage: python3 validate_ocsf.py FILE.jsonl

Every line is checked against the JSON Schema that `ocsf-json-schema` generates from the
OCSF schema export it ships for the version the record names in `metadata.version`, for
the class named by `class_uid`, with the profiles listed in `metadata.profiles`. A profile
the class does not take in that version is an error too: the generated schema would simply
leave its attributes out, and the record would claim something OCSF does not define.

Prints one line per problem and a summary; exits 1 when any record is invalid, 2 when the
input or the tools are unusable. Used by crates/warden/tests/conformance.rs.
"""

import json
import sys

from jsonschema import Draft202012Validator
from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema, get_packaged_versions


def main(path):
    versions = get_packaged_versions()
    schemas = {}  # (version, class_uid, profiles) -> validator
    raw = {}  # version -> the OCSF schema export
    checked = 0
    invalid = 0
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            checked += 1
            record = json.loads(line)
            metadata = record.get("metadata") or {}
            where = "line %d (seq %s, %s)" % (
                number,
                metadata.get("sequence"),
                metadata.get("event_code"),
            )
            problems = []
            version = metadata.get("version")
            class_uid = record.get("class_uid")
            profiles = sorted(metadata.get("profiles") or [])
            if version not in versions:
                problems.append("metadata.version %r is not an OCSF version" % (version,))
            else:
                if version not in raw:
                    raw[version] = get_ocsf_schema(version=version)
                classes = {c["uid"]: c for c in raw[version]["classes"].values()}
                cls = classes.get(class_uid)
                if cls is None:
                    problems.append("class_uid %r is not a class of OCSF %s" % (class_uid, version))
                else:
                    allowed = cls.get("profiles") or []
                    for profile in profiles:
                        if profile not in allowed:
                            problems.append(
                                "metadata.profiles: class %s (%d) takes no profile %r in OCSF %s"
                                " (it takes %s)"
                                % (cls["name"], class_uid, profile, version, ", ".join(allowed))
                            )
                    key = (version, class_uid, tuple(profiles))
                    if key not in schemas:
                        generator = OcsfJsonSchemaEmbedded(raw[version])
                        schema = generator.get_class_schema(cls["name"], profiles)
                        schemas[key] = Draft202012Validator(schema)
                    for error in schemas[key].iter_errors(record):
                        at = "/".join(str(p) for p in error.absolute_path) or "(record)"
                        problems.append("%s: %s" % (at, error.message))
            if problems:
                invalid += 1
                for problem in sorted(problems):
                    print("%s: %s" % (where, problem))
    print("%d of %d records invalid" % (invalid, checked))
    return 1 if invalid else 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1]))
