"""A batch that does not fit in memory stops the run with an error naming its utterances.

No GPU here: the allocation failure is a real one of the CPU allocator. The batch's waveform
is a zero-stride view of 2^37 samples (no memory of its own); the encoder's first full-size
tensor then asks for terabytes, which the allocator refuses at once (the address space is
capped for the test, so this holds under any overcommit policy).
"""

import contextlib
import resource

import pytest
import speechbrain as sb
import torch
from speechbrain.dataio.batch import PaddedBatch, PaddedData

from mtl_ser.brain import OutOfMemoryBatchError
from mtl_ser.data.text import CharVocabulary
from tests.recipes.helpers import tiny_mtl_brain


@contextlib.contextmanager
def address_space_capped(extra_bytes: int):
    """Caps this process's address space at its current size + ``extra_bytes``."""
    with open("/proc/self/status") as f:
        size_kb = next(int(line.split()[1]) for line in f if line.startswith("VmSize:"))
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = size_kb * 1024 + extra_bytes
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def huge_batch() -> PaddedBatch:
    vocab = CharVocabulary()
    examples = [
        {
            "id": utt,
            "sig": torch.zeros(16000),
            "emo_encoded": torch.tensor([0]),
            "tokens": vocab.encode("HI"),
            "ctc_mask": torch.tensor([True]),
            "wrd": "HI",
            "has_text": True,
            "scripted": False,
            "duration": seconds,
        }
        for utt, seconds in (("Ses01F_impro01_F000", 3.25), ("Ses01M_script02_M011", 31.5))
    ]
    batch = PaddedBatch(examples)
    batch.sig = PaddedData(torch.zeros(1, 1).expand(2, 2**37), torch.ones(2))
    return batch


def test_running_out_of_memory_names_the_batch_and_what_helps(tmp_path):
    brain = tiny_mtl_brain(tmp_path)
    brain.step = 1
    with address_space_capped(8 * 2**30), pytest.raises(OutOfMemoryBatchError) as caught:
        brain.fit_batch(huge_batch())
    message = str(caught.value)
    assert message.startswith(
        "out of memory on cpu in a train batch of 2 utterance(s): Ses01M_script02_M011 "
        "(31.5 s), Ses01F_impro01_F000 (3.2 s). Lower the memory a batch needs: "
        "--gradient_checkpointing=True, --max_len=<seconds>"
    )
    assert "can't allocate memory" in message  # the allocator's own words follow

    brain.on_stage_start(sb.Stage.VALID)
    with address_space_capped(8 * 2**30), pytest.raises(OutOfMemoryBatchError) as caught:
        brain.evaluate_batch(huge_batch(), sb.Stage.VALID)
    assert "in a valid batch of 2 utterance(s)" in str(caught.value)
    assert "a smaller --eval_batch_size, or --precision=bf16" in str(caught.value)


def test_other_errors_pass_unchanged(tmp_path):
    brain = tiny_mtl_brain(tmp_path)
    brain.step = 1
    batch = huge_batch()
    batch.sig = PaddedData(torch.zeros(2, 8000, 3), torch.ones(2))  # a wrong shape
    with pytest.raises(RuntimeError) as caught:
        brain.fit_batch(batch)
    assert not isinstance(caught.value, OutOfMemoryBatchError)
