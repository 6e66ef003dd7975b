"""mtl-ser: speech emotion recognition jointly trained with CTC speech recognition.

from mtl_ser import load_model
model = load_model("exported_model/")     # or a training run folder
prediction = model.predict("speech.wav")  # .emotion, .probabilities, .transcript
"""

__version__ = "0.1.0"


def load_model(path, window: float = 8.0, device: str = "cpu"):
    """Loads an exported model or a run folder; see `mtl_ser.inference.load_model`."""
    # Imported here so that `import mtl_ser` stays light (no torch) for the CLI.
    from mtl_ser.inference import load_model as _load_model

    return _load_model(path, window=window, device=device)
