"""d2v_plugin: data2vec pre-training for speech, text and images as a fairseq user-dir plugin.

Load it with ``common.user_dir=/path/to/d2v_plugin`` (hydra) or ``--user-dir /path/to/d2v_plugin``.
Importing the package registers the ``data2vec`` criterion and the ``data2vec_*`` models.
"""

from d2v_plugin import fairseq_fixes  # noqa: F401  (first: documented fixes to fairseq 0.12)
from d2v_plugin import criterion, wer_scorer  # noqa: F401
from d2v_plugin.models import data2vec_audio, data2vec_audio_ctc  # noqa: F401
from d2v_plugin.tasks import audio_ctc  # noqa: F401
from d2v_plugin.models import data2vec_image, data2vec_image_classification  # noqa: F401
from d2v_plugin.tasks import image_pretraining  # noqa: F401
from d2v_plugin.models import data2vec_text, data2vec_text_classification  # noqa: F401

__version__ = "0.1.0"
