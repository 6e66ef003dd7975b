"""Installs the mtl_ser package and its `mtl-ser` command.

The exact, tested versions live in requirements.txt (used by `make setup`);
the ranges below are what the code supports.
"""

from setuptools import find_packages, setup

setup(
    name="mtl_ser",
    version="0.1.0",
    description=(
        "Speech emotion recognition trained jointly with CTC speech recognition "
        "on a shared wav2vec 2.0 encoder (Cai et al., Interspeech 2021), on SpeechBrain."
    ),
    python_requires=">=3.10",
    packages=find_packages(include=["mtl_ser", "mtl_ser.*"]),
    package_data={"mtl_ser": ["data/*.txt"]},
    install_requires=[
        "torch>=2.6,<=2.14.1",  # 2.6: torch.load(weights_only=True) is safe (CVE-2025-32434)
        "torchaudio>=2.1",
        "speechbrain>=1.1,<1.2",
        "transformers>=4.40",
        # finetuning: lora | adapters (LoRA, (IA)^3 injection and merging)
        "peft>=0.17,<0.22",
        "sentencepiece",
        "jiwer>=3.0",
        "hyperpyyaml>=1.2",
        "scikit-learn>=1.3",
        "soundfile>=0.12",
        "matplotlib>=3.7",
        "safetensors>=0.4",
        "tqdm",
        # ctc_decoding: beam (torchaudio's CTC decoder; the wheel bundles KenLM)
        "flashlight-text>=0.0.7,<0.1",
        # The demo corpus synthesizer loads libespeak-ng from this wheel.
        "espeakng-loader>=0.2",
        # `mtl-ser sweep --launcher slurm`: jobs, arrays, requeue on pre-emption.
        "submitit>=1.5,<2",
    ],
    extras_require={
        "dev": ["pytest", "ruff", "tensorboard>=2.14", "onnx>=1.16", "onnxruntime>=1.18"],
        # `mtl-ser prepare hf`: Hugging Face datasets (pulls pyarrow and pandas).
        "hf": ["datasets>=2.14"],
        # --tracker=...: each imported only when chosen
        "tensorboard": ["tensorboard>=2.14"],
        "wandb": ["wandb>=0.16"],
        "mlflow": ["mlflow>=2.9"],
        "parquet": ["pyarrow>=14"],  # mtl-ser embed --output x.parquet
        # mtl-ser export --format onnx; predict on an ONNX folder needs onnxruntime only
        "onnx": ["onnx>=1.16", "onnxruntime>=1.18"],
    },
    entry_points={"console_scripts": ["mtl-ser=mtl_ser.cli:main"]},
)
