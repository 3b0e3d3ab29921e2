"""What every data2vec model does the same way, whatever the modality.

:class:`TeacherStudentMixin` gives a fairseq model (1) an :class:`~d2v_plugin.core.ema_teacher.EmaTeacher`
tracking one of its sub-modules, stepped from fairseq's ``set_num_updates`` after every optimizer
step, (2) the one data2vec step (:meth:`~TeacherStudentMixin.data2vec_step`: student on the masked view,
teacher's top-K blocks on the unmasked one, targets, regression head at the masked positions),
(3) ``remove_pretraining_modules`` for fine-tuning, (4) loading of fairseq-reference state dicts, whose
teacher is stored as a flat ``_ema`` dict rather than as sub-module weights, (5) an optional zero init of
the regression head, and (6) the per-sample mask seeds.

A modality builds its modules, turns its batch into :class:`Views` and supplies two pieces:
``encode_student(views) -> (B, T, C)`` and ``teacher_top_k_blocks(teacher, views) -> K x (B, T, C)``.
"""

from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional

import torch
from torch import Tensor, nn

from d2v_plugin.core.ema_teacher import EmaTeacher
from d2v_plugin.core.targets import make_targets
from d2v_plugin.core.unmasked import clone_rows

TEACHER = "ema_teacher"
REFERENCE_TEACHER_KEY = "_ema"  # fairseq examples/data2vec: state["_ema"] = {student param name: tensor}


@dataclass
class Views:
    """One batch as the data2vec step sees it; T is the time/token/patch axis the loss is taken over.

    data2vec 2.0 encodes M = ``clone_batch`` masked copies of each sample: ``student`` and ``loss_mask``
    then have B*M rows (copies of a sample next to each other), ``teacher`` and ``padding_mask`` B.

    Attributes:
        student: the student encoder's input, already masked (audio, images: ``(B, T, D)`` embeddings;
            text: ``(B, T)`` tokens).
        teacher: the teacher's input, never masked (audio: the ``(B, T, D)`` features, or the ``(B, S)``
            waveforms when the teacher has its own feature encoder; text: ``(B, T)`` tokens; images:
            ``(B, 1+T, D)`` [CLS] + patch embeddings).
        loss_mask: ``(B, T)`` bool, ``True`` where the student regresses the targets.
        padding_mask: ``(B, T)`` bool, ``True`` = padding, or ``None``.
    """

    student: Tensor
    teacher: Tensor
    loss_mask: Tensor
    padding_mask: Optional[Tensor] = None


class TeacherStudentMixin:
    """Mixed into a ``BaseFairseqModel`` whose ``cfg`` is a :class:`~d2v_plugin.core.config.Data2VecConfig`."""

    ema_teacher: Optional[EmaTeacher]
    regression_head_name = "final_proj"

    def build_ema_teacher(self, student_name: str, copy_prefixes: Iterable[str] = (),
                          student_modules: Optional[Iterable[str]] = None) -> None:
        """Create the teacher as a copy of ``getattr(self, student_name)`` (called from ``__init__``).

        With ``student_modules`` the teacher tracks several top-level modules of the model at once
        (e.g. audio's feature encoder *and* transformer): ``student_name`` then names an unregistered
        :class:`~torch.nn.ModuleDict` view of them, so the teacher's parameter names equal the
        student's (``feature_extractor.*``, ``encoder.*``) and the model's own state dict is unchanged.
        """
        self.num_updates = 0
        self.teacher_tracks = student_name
        # where the tracked parameters sit in the model's state dict (a view's are the model's own names)
        self.tracked_state_prefix = f"{student_name}."
        if student_modules is not None:
            # Stored in __dict__, not registered: the same modules must not appear twice in the state dict.
            self.__dict__[student_name] = nn.ModuleDict({n: getattr(self, n) for n in student_modules})
            self.tracked_state_prefix = ""
        self.ema_teacher = EmaTeacher(
            getattr(self, student_name),
            ema_decay=self.cfg.ema_decay,
            ema_end_decay=self.cfg.ema_end_decay,
            ema_anneal_end_step=self.cfg.ema_anneal_end_step,
            copy_prefixes=copy_prefixes,
        )

    def init_regression_head(self) -> None:
        """Zero the head's last linear layer when ``cfg.zero_init_regression_head`` (called from ``__init__``).

        Why: the masked frames' targets are mostly unpredictable early on, so with a random head the
        cheapest way to cut the L2 loss is to make the blocks' outputs constant over time, and a small
        model does that within tens of updates. A zero head has to learn a read-out first, and the
        blocks only get a gradient along what it reads.
        """
        if not self.cfg.zero_init_regression_head:
            return
        head = getattr(self, self.regression_head_name)
        last_linear = [m for m in head.modules() if isinstance(m, nn.Linear)][-1]
        nn.init.zeros_(last_linear.weight)
        nn.init.zeros_(last_linear.bias)

    def set_num_updates(self, num_updates: int) -> None:
        super().set_num_updates(num_updates)
        if self.ema_teacher is not None:
            self.ema_teacher.step(getattr(self, self.teacher_tracks), num_updates)
        self.num_updates = num_updates

    def get_num_updates(self) -> int:
        return self.num_updates

    # -- the data2vec step ------------------------------------------------------------------
    def encode_student(self, views: Views) -> Tensor:
        """The modality's student encoder on ``views.student``: ``(B, T, C)``, aligned with ``loss_mask``."""
        raise NotImplementedError

    def teacher_top_k_blocks(self, teacher: nn.Module, views: Views) -> List[Tensor]:
        """The modality's teacher on ``views.teacher``: its top ``average_top_k_layers`` block outputs,
        each ``(B, T, C)`` (the positions of ``loss_mask``), lowest block first. Runs without autograd."""
        raise NotImplementedError

    def data2vec_step(self, views: Views) -> Dict[str, Any]:
        """Student on the masked view, teacher on the unmasked one, targets at the masked positions.

        Returns ``{"pred": (M, C), "target": (M, C) fp32, "ema_decay": float}`` for the M positions of
        ``views.loss_mask``: what the ``data2vec`` criterion regresses.
        """
        x = self.encode_student(views)
        target = self.teacher_targets(views, dtype=x.dtype)
        # data2vec 2.0 encodes clone_batch masked copies of each sample: rows b*M .. b*M+M-1 of the student
        # are copies of sample b, and share its targets
        target = clone_rows(target, x.size(0) // target.size(0))[views.loss_mask]
        pred = getattr(self, self.regression_head_name)(x[views.loss_mask])
        return {"pred": pred, "target": target, "ema_decay": self.ema_teacher.decay}

    def teacher_targets(self, views: Views, dtype: torch.dtype = torch.float32) -> Tensor:
        """``(B, T, C)`` fp32 targets at every position, from the teacher's top-K blocks on ``views.teacher``
        (``dtype``: the student's compute dtype, see :meth:`EmaTeacher.run`)."""
        blocks = self.ema_teacher.run(self.teacher_top_k_blocks, views, dtype=dtype)
        with torch.no_grad():
            return make_targets(blocks, self.cfg)

    def mask_seed(self, sample_ids: Optional[Tensor]) -> Optional[Dict[str, Any]]:
        """Seeds for this batch's masks: ``{"seed", "update", "sample_ids"}``, or None without sample ids.

        Each sample's mask is drawn from ``(model.seed = common.seed, update number, sample id)``. Why not
        torch's global generator: fairseq re-seeds it to ``common.seed + update`` on every rank, so every
        data-parallel rank would draw the same masks. Sample ids differ between ranks and micro-batches,
        and the masks do not depend on the world size; a resumed run draws the same ones again.
        """
        if sample_ids is None:
            return None
        seed = self.cfg.seed
        if isinstance(seed, str) and seed.startswith("${"):
            seed = 1  # a config built outside fairseq (nothing to interpolate): fairseq's default common.seed
        return {"seed": int(seed), "update": int(self.num_updates), "sample_ids": sample_ids.cpu()}

    def remove_pretraining_modules(self, last_layer: Optional[int] = None) -> None:
        """Drop the teacher and the regression head (and layers above ``last_layer``) for fine-tuning."""
        self.ema_teacher = None
        setattr(self, self.regression_head_name, None)
        if last_layer is not None:
            layers = self.encoder.layers
            self.encoder.layers = type(layers)(l for i, l in enumerate(layers) if i <= last_layer)

    def upgrade_state_dict_named(self, state_dict: Dict[str, Tensor], name: str) -> None:
        """Accept fairseq-reference checkpoints and checkpoints saved before/after fine-tuning surgery."""
        super().upgrade_state_dict_named(state_dict, name)
        prefix = f"{name}." if name else ""
        teacher_prefix = f"{prefix}{TEACHER}."
        reference_teacher = state_dict.pop(prefix + REFERENCE_TEACHER_KEY, None)

        if self.ema_teacher is None:  # fine-tuning: the teacher and head are not needed
            for k in [k for k in state_dict if k.startswith(teacher_prefix)]:
                del state_dict[k]
            head = f"{prefix}{self.regression_head_name}."
            if getattr(self, self.regression_head_name, None) is None:
                for k in [k for k in state_dict if k.startswith(head)]:
                    del state_dict[k]
            return

        teacher_keys = set(self.ema_teacher.model.state_dict())
        if reference_teacher is not None:
            # The reference's whole-model EMA also holds modules our teacher does not (the regression
            # head, the mask embedding): only what our teacher tracks is taken.
            for k, v in reference_teacher.items():
                if k in teacher_keys:
                    state_dict[f"{teacher_prefix}model.{k}"] = v
        if not any(k.startswith(teacher_prefix + "model.") for k in state_dict):
            # No teacher saved (e.g. a reference model whose EMA was never built): start it as a copy
            # of the student's tracked module, which is what the teacher is at update 0.
            student_prefix = f"{prefix}{self.tracked_state_prefix}"
            for k in [k for k in state_dict if k.startswith(student_prefix)]:
                if k[len(student_prefix):] in teacher_keys:
                    state_dict[f"{teacher_prefix}model.{k[len(student_prefix):]}"] = state_dict[k].float()
        state_dict.setdefault(f"{teacher_prefix}num_updates", torch.zeros((), dtype=torch.long))
