"""d2v_plugin: data2vec pre-training for speech, text and images as a fairseq user-dir plugin.

Load it with ``common.user_dir=/path/to/d2v_plugin`` (hydra) or ``--user-dir /path/to/d2v_plugin``.
Importing the package applies the documented fixes to fairseq 0.12 (:func:`d2v_plugin.compat.fairseq_fixes.apply`,
logged once) and registers the ``data2vec`` criterion, the ``data2vec_*`` models and the tasks fairseq lacks.

Layout: ``core/`` is what every modality shares (EMA teacher, targets, masking, loss, the data2vec forward
skeleton, fine-tuning from a pre-training checkpoint); ``audio/``, ``text/`` and ``image/`` hold one
modality each; ``compat/`` holds the fixes to fairseq and the CPU launcher.
"""

from d2v_plugin.compat import fairseq_fixes

fairseq_fixes.apply()

from d2v_plugin import core, audio, text, image  # noqa: E402,F401  (registers models, criterion, tasks)

__version__ = "0.1.0"
