"""Evaluation protocols: which utterances are train, valid and test for a fold.

Protocols (DESIGN.md section 2):

- ``loso``: 5 folds; fold k tests on the whole of session k (both its speakers).
- ``loso_speaker``: 10 folds; fold k tests on one speaker of session ceil(k/2) (F for odd k,
  M for even k) and validates on the other speaker of that session.
- ``cai2021``: 10 folds of the released Cai et al. code; fold k tests on every dialog named
  ``SesNNF_*`` (odd k) or ``SesNNM_*`` (even k) of session NN = ceil(k/2). Both actors speak
  in every dialog, so the test speakers are also in training: speaker-overlapping.
- ``random``: speaker-dependent 80/10/10 class-stratified split (one fold).

Except for ``loso_speaker``, validation comes from the non-test data only: a seeded,
class-stratified fraction of the training pool (``stratified``, default) or every utterance
of one held-out training speaker (``speaker``).

Records are manifest dicts with at least ``id``, ``emo``, ``spk``, ``session``, ``dialog``.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import asdict, dataclass

PROTOCOL_FOLDS = {"loso": 5, "loso_speaker": 10, "cai2021": 10, "random": 1}
SPEAKER_INDEPENDENT = {"loso", "loso_speaker"}
VALID_STRATEGIES = ("stratified", "speaker")
SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class SplitOptions:
    """Everything that decides a split; stored with the manifests.

    Attributes:
        protocol: one of PROTOCOL_FOLDS.
        fold: 1-based fold number.
        valid_strategy: "stratified" or "speaker"; None = the protocol's default
            ("protocol" for loso_speaker, "stratified" otherwise).
        valid_fraction: fraction of the training pool used for validation ("stratified").
        valid_speaker: held-out training speaker ("speaker"); None = the female speaker of the
            session after the test session (cyclically).
        seed: seed of every random choice.
    """

    protocol: str = "loso"
    fold: int = 1
    valid_strategy: str | None = None
    valid_fraction: float = 0.1
    valid_speaker: str | None = None
    seed: int = 1234

    def resolved(self) -> SplitOptions:
        """Checks the options and fills the protocol's defaults.

        Raises ValueError naming the offending option.
        """
        if self.protocol not in PROTOCOL_FOLDS:
            raise ValueError(f"protocol {self.protocol!r} is not one of {sorted(PROTOCOL_FOLDS)}")
        folds = PROTOCOL_FOLDS[self.protocol]
        if not 1 <= self.fold <= folds:
            raise ValueError(f"fold {self.fold} out of range 1..{folds} for {self.protocol}")
        strategy = self.valid_strategy
        if self.protocol == "loso_speaker":
            if strategy not in (None, "protocol"):
                raise ValueError(
                    "loso_speaker validates on the other speaker of the test session; "
                    f"valid_strategy={strategy!r} does not apply"
                )
            strategy = "protocol"
        elif strategy is None:
            strategy = "stratified"
        elif strategy not in VALID_STRATEGIES:
            raise ValueError(f"valid_strategy {strategy!r} is not one of {VALID_STRATEGIES}")
        if self.protocol == "random" and strategy == "speaker":
            raise ValueError(
                "the random protocol is speaker-dependent: use valid_strategy stratified"
            )
        if strategy == "stratified" and not 0 < self.valid_fraction < 1:
            raise ValueError(f"valid_fraction must be in (0, 1), got {self.valid_fraction}")
        speaker = self.valid_speaker
        if strategy == "speaker" and speaker is None:
            test_session = (self.fold - 1) // 2 + 1 if self.protocol == "cai2021" else self.fold
            speaker = f"Ses{test_session % 5 + 1:02d}F"
        if strategy != "speaker" and speaker is not None:
            raise ValueError("valid_speaker is only used with valid_strategy 'speaker'")
        return SplitOptions(
            self.protocol, self.fold, strategy, self.valid_fraction, speaker, self.seed
        )

    def to_dict(self) -> dict:
        return asdict(self)


def describe(options: SplitOptions) -> str:
    """One line saying what the fold tests on and whether speakers overlap."""
    o = options.resolved()
    if o.protocol == "loso":
        what = f"test = Session{o.fold} (speakers Ses{o.fold:02d}F, Ses{o.fold:02d}M)"
    elif o.protocol == "loso_speaker":
        session, gender = _speaker_fold(o.fold)
        other = "M" if gender == "F" else "F"
        what = f"test = speaker Ses{session:02d}{gender}, valid = speaker Ses{session:02d}{other}"
    elif o.protocol == "cai2021":
        session, marker = _speaker_fold(o.fold)
        what = (
            f"test = dialogs Ses{session:02d}{marker}_* (both speakers of session {session}); "
            "SPEAKER-OVERLAPPING: test speakers also appear in training (comparison only)"
        )
    else:
        what = "random 80/10/10 split; SPEAKER-DEPENDENT (comparison only)"
    if o.valid_strategy == "stratified":
        what += f"; valid = seeded class-stratified {o.valid_fraction:.0%} of training"
    elif o.valid_strategy == "speaker":
        what += f"; valid = held-out training speaker {o.valid_speaker}"
    return f"{o.protocol} fold {o.fold}: {what}"


def _speaker_fold(fold: int) -> tuple[int, str]:
    """Maps folds 1..10 to (session, letter): 1 -> (1, F), 2 -> (1, M), 3 -> (2, F), ..."""
    return (fold - 1) // 2 + 1, "F" if fold % 2 == 1 else "M"


def stratified_pick(records: list[dict], fraction: float, rng: random.Random) -> set[str]:
    """Picks a class-stratified random subset.

    Per class (in sorted class order, ids sorted, then shuffled by ``rng``) it takes
    ``round(fraction * n)`` utterances, at least one when the class has two or more, so that
    every class with two or more utterances is represented.

    Returns: the set of picked ids.
    """
    by_class = defaultdict(list)
    for record in records:
        by_class[record["emo"]].append(record["id"])
    picked = set()
    for label in sorted(by_class):
        ids = sorted(by_class[label])
        rng.shuffle(ids)
        n = round(fraction * len(ids))
        if len(ids) >= 2:
            n = max(1, min(n, len(ids) - 1))
        picked.update(ids[:n])
    return picked


def assign_splits(records: list[dict], options: SplitOptions) -> dict[str, list[dict]]:
    """Splits IEMOCAP-like records into train / valid / test for one fold.

    Args:
        records: manifest dicts (``id``, ``emo``, ``spk``, ``session``, ``dialog``).
        options: the protocol, fold and validation options.

    Returns:
        ``{"train": [...], "valid": [...], "test": [...]}``, each sorted by id.

    Raises:
        ValueError: a split comes out empty, or the validation speaker is not in training.
    """
    o = options.resolved()
    rng = random.Random(o.seed)
    if o.protocol == "loso":
        is_test = [r["session"] == o.fold for r in records]
    elif o.protocol == "loso_speaker":
        session, gender = _speaker_fold(o.fold)
        is_test = [r["spk"] == f"Ses{session:02d}{gender}" for r in records]
    elif o.protocol == "cai2021":
        session, marker = _speaker_fold(o.fold)
        prefix = f"Ses{session:02d}{marker}_"
        is_test = [r["dialog"].startswith(prefix) for r in records]
    else:  # random: stratified 10% test, then valid below from the rest
        test_ids = stratified_pick(records, 0.1, rng)
        is_test = [r["id"] in test_ids for r in records]
    test = [r for r, t in zip(records, is_test, strict=True) if t]
    pool = [r for r, t in zip(records, is_test, strict=True) if not t]

    if o.valid_strategy == "protocol":  # loso_speaker: the other speaker of the test session
        session, gender = _speaker_fold(o.fold)
        other = f"Ses{session:02d}{'M' if gender == 'F' else 'F'}"
        valid_ids = {r["id"] for r in pool if r["spk"] == other}
        train = [r for r in pool if r["id"] not in valid_ids and r["session"] != session]
    elif o.valid_strategy == "speaker":
        valid_ids = {r["id"] for r in pool if r["spk"] == o.valid_speaker}
        if not valid_ids:
            raise ValueError(f"validation speaker {o.valid_speaker} has no training utterance")
        train = [r for r in pool if r["id"] not in valid_ids]
    else:
        # random: 10% of the total = 1/9 of the 90% pool.
        fraction = 1 / 9 if o.protocol == "random" else o.valid_fraction
        valid_ids = stratified_pick(pool, fraction, rng)
        train = [r for r in pool if r["id"] not in valid_ids]
    valid = [r for r in pool if r["id"] in valid_ids]

    splits = {"train": train, "valid": valid, "test": test}
    for name, split in splits.items():
        if not split:
            raise ValueError(f"{describe(o)}: the {name} split is empty for this corpus")
        split.sort(key=lambda r: r["id"])
    return splits


def speaker_group_split(
    records: list[dict], valid_fraction: float, test_fraction: float, seed: int
) -> dict[str, list[dict]]:
    """A seeded speaker-independent split for corpora without a split column.

    Speakers (sorted, then shuffled with ``seed``) are dealt whole: ``round(test_fraction * S)``
    speakers (at least one) to test, ``round(valid_fraction * S)`` (at least one) to valid and
    the rest to train.

    Args:
        records: manifest dicts with ``id`` and ``spk``.
        valid_fraction, test_fraction: fractions of the speakers, each in (0, 1).
        seed: the shuffle seed.

    Returns: ``{"train": [...], "valid": [...], "test": [...]}`` sorted by id.

    Raises: ValueError with fewer than three speakers (no speaker-independent split exists).
    """
    speakers = sorted({r["spk"] for r in records})
    if len(speakers) < 3:
        raise ValueError(
            f"a speaker-independent split needs at least 3 speakers, found {len(speakers)} "
            f"({speakers}); add a split column to the CSV"
        )
    random.Random(seed).shuffle(speakers)
    n_test = max(1, round(test_fraction * len(speakers)))
    n_valid = max(1, round(valid_fraction * len(speakers)))
    if n_test + n_valid >= len(speakers):
        raise ValueError(f"too few speakers ({len(speakers)}) for the fractions asked")
    split_of = {s: "test" for s in speakers[:n_test]}
    split_of.update({s: "valid" for s in speakers[n_test : n_test + n_valid]})
    splits = {name: [] for name in SPLITS}
    for record in sorted(records, key=lambda r: r["id"]):
        splits[split_of.get(record["spk"], "train")].append(record)
    return splits


def speaker_folds(
    speakers: dict[str, str | None], folds: int, fold: int
) -> tuple[set[str], set[str]]:
    """Deals speakers into ``folds`` speaker-disjoint folds, balanced by gender where known.

    Speakers are sorted by (gender, id) and dealt round robin, the counter running on across
    genders, so every fold gets the same number of speakers (give or take one) and of each
    gender (give or take one). Deterministic: no seed. Fold k tests on its speakers and
    validates on the speakers of fold k + 1 (cyclically); the rest trains.

    Args:
        speakers: speaker id -> gender ("F", "M" or None when unknown).
        folds: number of folds, at least 3 (train, valid and test each need a fold).
        fold: 1-based fold number.

    Returns: (test speakers, validation speakers).

    Raises: ValueError for a fold out of range or fewer speakers than folds.
    """
    if folds < 3:
        raise ValueError(f"actor folds need at least 3 folds (test, valid, train), got {folds}")
    if not 1 <= fold <= folds:
        raise ValueError(f"fold {fold} out of range 1..{folds}")
    if len(speakers) < folds:
        raise ValueError(f"{len(speakers)} speaker(s) cannot fill {folds} folds")
    order = sorted(speakers, key=lambda s: (speakers[s] or "", s))
    fold_of = {spk: i % folds + 1 for i, spk in enumerate(order)}
    valid_fold = fold % folds + 1
    test = {s for s, k in fold_of.items() if k == fold}
    valid = {s for s, k in fold_of.items() if k == valid_fold}
    return test, valid
