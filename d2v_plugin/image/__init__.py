"""Images: ``data2vec_image`` (BEiT-style ViT pre-training), ``data2vec_image_classification``, and the
``image_pretraining`` / ``image_classification`` tasks with torch-only augmentations."""

from d2v_plugin.image import classification, model, task  # noqa: F401  (registration)
