"""Write the contracts' JSON Schemas to proto/schemas/, refusing an incompatible change to a published one."""

from __future__ import annotations

import json
import sys

from jinshui.contracts.schemas import SCHEMA_DIR, current_schemas, dumps, incompatibilities


def main() -> int:
    SCHEMA_DIR.mkdir(exist_ok=True)
    refused = []
    for name, schema in current_schemas().items():
        path = SCHEMA_DIR / name
        if path.exists():
            problems = incompatibilities(json.loads(path.read_text()), schema)
            if problems:
                refused.append(f"{name}: " + "; ".join(problems))
                continue
        path.write_text(dumps(schema))
        print(f"wrote {path.relative_to(SCHEMA_DIR.parent.parent)}")
    if refused:
        print("refused (publish a new version instead):\n  " + "\n  ".join(refused), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
