"""d2v-plugin: data2vec pre-training for speech, text and images as a fairseq user-dir plugin.

Install with ``bash scripts/setup.sh`` (it pins torch and installs fairseq-fixed the only way that
works, see requirements.txt). ``pip install -e .`` alone installs this package and its scripts.
"""

from setuptools import find_packages, setup

setup(
    name="d2v-plugin",
    version="0.1.0",
    description="data2vec self-supervised pre-training (speech, text, images) as a fairseq plugin",
    packages=find_packages(include=["d2v_plugin", "d2v_plugin.*", "manifests", "manifests.*"]),
    python_requires=">=3.10",
    # fairseq-fixed==0.12.3.1 is required too but is not listed: its metadata pulls torchaudio and with
    # it a second torch. scripts/setup.sh installs it with --no-deps.
    install_requires=[
        "torch==2.13.0",
        "hydra-core==1.3.2",
        "omegaconf==2.3.0",
        "numpy",
        "soundfile",
        "sentencepiece",
        "Pillow",
        "editdistance",
    ],
    # "hf": d2v-export-hf / d2v-import-hf. Install it as scripts/setup.sh does (pip install --no-deps -r
    # requirements-hf.txt): a plain resolve of transformers may pull other packages than listed there.
    extras_require={"test": ["pytest"], "hf": ["transformers==5.22.2", "safetensors", "tokenizers"]},
    entry_points={
        "console_scripts": [
            "d2v-audio-manifest=manifests.audio_manifest:main",
            "d2v-toy-speech=manifests.toy_speech:main",
            "d2v-hydra-train=d2v_plugin.compat.launch:main",
            "d2v-options=d2v_plugin.core.options:main",
            "d2v-image-manifest=manifests.image_manifest:main",
            "d2v-toy-images=manifests.toy_images:main",
            "d2v-export-hf=d2v_plugin.hf.cli:export_main",
            "d2v-import-hf=d2v_plugin.hf.cli:import_main",
            "d2v-extract=d2v_plugin.inference.extract:main",
            "d2v-transcribe=d2v_plugin.inference.transcribe:main",
        ]
    },
)
