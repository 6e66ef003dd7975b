"""The baseline of `mtl-ser report --baseline`: every setting compared with one chosen
setting of its protocol (`mtl_ser.paired` tests the pairs).

    mtl-ser report O --baseline alpha=0 [--paired-metrics emotion/ua,dimensions/ccc_mean]

Without a baseline, `mtl_ser.paired.find_pairs` pairs the settings that differ in one key.
With one, the baseline is chosen by ``key=value[,key=value...]`` (any recorded setting key,
``protocol`` too; numbers by value: ``alpha=0`` is 0.0) or by a prefix of its setting digest
(summary.csv's ``setting_digest``), one per protocol, and every other setting of that
protocol and label set is compared with it, however many keys they differ in.
"""

from __future__ import annotations

from mtl_ser.paired import settings_by_key
from mtl_ser.report_rows import setting_text, value_text, varying_keys


def _same_value(value, text: str) -> bool:
    """Whether a setting value is the ``key=value`` text of --baseline (numbers by value:
    ``alpha=0`` is 0.0)."""
    if value_text(value) == text:
        return True
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return float(text) == float(value)
        except ValueError:
            return False
    return False


def _matches(key: tuple, values: dict, spec: str) -> bool:
    """Whether a setting is chosen by --baseline ``spec``: ``key=value[,key=value...]``
    (all must hold; ``protocol`` too), or else a prefix of its setting digest (the
    ``setting_digest`` column of summary.csv)."""
    if "=" not in spec:
        return key[3].startswith(spec.strip())
    values = {**values, "protocol": key[0]}
    for part in spec.split(","):
        name, _, text = part.partition("=")
        if name.strip() not in values or not _same_value(values[name.strip()], text.strip()):
            return False
    return True


def _listing(keys: list[tuple], values: dict) -> str:
    """The settings ``keys`` as ``digest (key=value ...)``, by the keys that tell them apart."""
    shown = varying_keys([{**values[k], "protocol": k[0]} for k in keys], skip=())
    return "; ".join(
        f"{k[3]} ({setting_text({**values[k], 'protocol': k[0]}, shown)})" for k in keys
    )


def baseline_pairs(runs: list[dict], spec: str) -> tuple[list[tuple], list[str]]:
    """Every setting against the baseline chosen by ``spec`` (``report --baseline``, see
    `_matches`), within its protocol.

    Returns: (pairs as `find_pairs` gives them, first = the baseline, every key that differs
    comma-separated; notes on settings left uncompared: another label set, no shared fold and
    seed, a protocol without a baseline). Raises ValueError (one line) when ``spec`` matches
    no setting, or two or more of one protocol (listing them).
    """
    by_setting, values, labels, ordered = settings_by_key(runs)
    chosen = [k for k in ordered if _matches(k, values[k], spec)]
    if not chosen:
        raise ValueError(
            f"--baseline {spec!r} matches no setting; give key=value pairs or a setting "
            f"digest of: {_listing(ordered, values)}"
        )
    baseline = {}
    for key in chosen:
        if key[0] in baseline:
            same = [k for k in chosen if k[0] == key[0]]
            raise ValueError(
                f"--baseline {spec!r} matches {len(same)} settings of protocol {key[0]}: "
                f"{_listing(same, values)}; add key=value pairs to choose one"
            )
        baseline[key[0]] = key
    pairs, notes = [], []
    for protocol in sorted({k[0] for k in ordered} - set(baseline)):
        count = sum(k[0] == protocol for k in ordered)
        notes.append(
            f"protocol {protocol}: no setting matches --baseline {spec!r}; its {count} "
            "setting(s) are not compared"
        )
    for key in ordered:
        base = baseline.get(key[0])
        if base is None or key == base:
            continue
        units = sorted(set(by_setting[base]) & set(by_setting[key]))
        if labels[key] != labels[base] or not units:
            why = "another label set" if labels[key] != labels[base] else "no shared fold/seed"
            notes.append(f"{key[0]} {_listing([key], values)}: {why} than the baseline")
            continue
        # Every key whose value differs, one side lacking it included (unlike
        # `mtl_ser.paired.find_pairs`, which decides what counts as a one-key pair).
        differing = {
            k
            for k in set(values[base]) | set(values[key])
            if value_text(values[base].get(k)) != value_text(values[key].get(k))
        }
        differing = ",".join(sorted(differing)) or "setting"
        pairs.append((key[0], values[base], values[key], differing, units, (base, key)))
    return pairs, notes
