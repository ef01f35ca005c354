"""`tunetrace features-match`: match SAE features across models (persisting, disappearing, emerging)."""

from __future__ import annotations

from tunetrace.commands._common import write_report


def run(config) -> int:
    from tunetrace.api import features_match

    counts = features_match(config).counts
    print(f"{counts['tokens']} tokens, threshold {counts['threshold']}; alive features per SAE: {counts['alive']}")
    for pair, k in counts["pairs"].items():
        print(f"{pair}: {k['persisting']} persisting, {k['disappearing']} disappearing, {k['emerging']} emerging")
    for chain, n in counts["chains"].items():
        print(f"persisting along {chain}: {n}")
    print(f"wrote {config.out}/features.parquet, matches.parquet, counts.json, flow.svg")
    if not config.no_report:
        write_report(config.out)
    return 0
