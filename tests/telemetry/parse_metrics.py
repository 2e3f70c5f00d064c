"""Parses Prometheus text exposition on stdin with prometheus_client's own
parser and prints it as one JSON object:

    {family: {"type": ..., "help": ..., "samples": [{"name", "labels", "value"}]}}

Family names are the parser's (it strips a counter's `_total`); sample names
are as exposed. A value that is not finite (NaN, ±Inf) becomes a string
("nan", "inf", "-inf"), as JSON has no such numbers. Anything the parser
refuses, or a family exposed twice, is an error: stderr, exit 1.
"""

import json
import math
import sys

from prometheus_client.parser import text_string_to_metric_families


def main():
    families = {}
    try:
        for family in text_string_to_metric_families(sys.stdin.read()):
            if family.name in families:
                raise ValueError(f"family {family.name!r} appears twice")
            families[family.name] = {
                "type": family.type,
                "help": family.documentation,
                "samples": [
                    {"name": s.name, "labels": s.labels,
                     "value": float(s.value) if math.isfinite(s.value) else str(s.value)}
                    for s in family.samples
                ],
            }
    except Exception as e:  # the parser raises ValueError, but also others on odd input
        print(f"parse_metrics: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    json.dump(families, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
