"""d2v_plugin: data2vec pre-training for speech, text and images as a fairseq user-dir plugin.

Load it with ``common.user_dir=/path/to/d2v_plugin`` (hydra) or ``--user-dir /path/to/d2v_plugin``.
Importing the package applies the documented fixes to fairseq 0.12 (:func:`d2v_plugin.compat.fairseq_fixes.apply`,
logged once) and registers the ``data2vec`` criterion, the ``data2vec_*`` models and the tasks fairseq lacks.

Layout: ``core/`` is what every modality shares (EMA teacher, targets, masking, loss, the data2vec forward
skeleton, fine-tuning from a pre-training checkpoint); ``audio/``, ``text/`` and ``image/`` hold one
modality each; ``compat/`` holds the fixes to fairseq and the CPU launcher.
"""

import logging

# fairseq's wav2vec2_classification module calls logging.basicConfig(level=DEBUG) when `import fairseq` loads
# it, which turns on every library's debug output (PIL prints a line per PNG chunk) in any program that
# imports the plugin, e.g. the manifest scripts. If the root logger was unconfigured before, undo exactly that;
# a program that configured logging itself, or imported fairseq first, is left as it is.
_root = logging.getLogger()
_unconfigured = not _root.handlers and _root.level == logging.WARNING

from d2v_plugin.compat import fairseq_fixes  # noqa: E402  (imports fairseq)

if _unconfigured and _root.level == logging.DEBUG and len(_root.handlers) == 1:
    _root.removeHandler(_root.handlers[0])
    _root.setLevel(logging.WARNING)

fairseq_fixes.apply()

from d2v_plugin import core, audio, text, image  # noqa: E402,F401  (registers models, criterion, tasks)

__version__ = "0.1.0"
