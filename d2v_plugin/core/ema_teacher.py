"""The EMA teacher shared by every data2vec model.

data2vec's targets come from a *teacher*: a copy of (part of) the student whose weights follow the
student's by an exponential moving average, ``teacher = decay * teacher + (1 - decay) * student``,
with ``decay`` annealed linearly from ``ema_decay`` to ``ema_end_decay`` over ``ema_anneal_end_step``
updates and held constant afterwards (Baevski et al. 2022, section 3.3).

Like dinov2's teacher, :class:`EmaTeacher` is a separate module that never needs gradients and is
always in eval mode (no dropout, no layerdrop), whatever mode its owner is put in. Its weights stay in
fp32 even when fairseq casts the model to fp16/bf16 (the paper updates the EMA in fp32); when the
student runs in low precision the teacher's forward runs under autocast instead of keeping a second
low-precision copy.

It is a registered sub-module, so fairseq's checkpoints carry it (``ema_teacher.*``) together with the
update counter it has reached, and a resumed run continues with a bit-identical teacher.
"""

import copy
from typing import Any, Callable, Iterable, List, Tuple

import torch
from torch import Tensor, nn
from torch.nn.utils.weight_norm import WeightNorm


def annealed_decay(start: float, end: float, step: int, end_step: int) -> float:
    """Linear anneal ``start -> end`` over ``end_step`` updates, then constant ``end``."""
    if start == end or end_step <= 0 or step >= end_step:
        return end
    return end - (end - start) * (1.0 - step / end_step)


def _detach_weight_norm(module: nn.Module) -> None:
    """Make weight-norm'd weights deep-copyable.

    ``torch.nn.utils.weight_norm`` (wav2vec 2.0's positional conv) stores the computed weight as a
    non-leaf tensor attribute, which ``copy.deepcopy`` refuses. Its pre-forward hook recomputes that
    attribute from ``weight_g``/``weight_v`` before every forward, so a detached value is harmless.
    """
    for m in module.modules():
        for hook in m._forward_pre_hooks.values():
            if isinstance(hook, WeightNorm):
                setattr(m, hook.name, getattr(m, hook.name).detach())


class EmaTeacher(nn.Module):
    """fp32, no-grad, eval-mode EMA copy of ``student``.

    Args:
        student: the student module to track (audio: the transformer encoder; the conv feature
            encoder is shared between student and teacher, as in the paper).
        ema_decay / ema_end_decay / ema_anneal_end_step: the decay schedule (see module docstring).
        copy_prefixes: parameters whose names start with one of these are *copied* from the student
            at every step instead of averaged (fairseq's ``ema_layers_only``: the positional
            convolution is shared, only the transformer blocks are averaged). Parameters the student
            does not train (``requires_grad=False``) and buffers are copied too.
    """

    def __init__(
        self,
        student: nn.Module,
        ema_decay: float,
        ema_end_decay: float,
        ema_anneal_end_step: int,
        copy_prefixes: Iterable[str] = (),
    ):
        super().__init__()
        _detach_weight_norm(student)
        self.model = copy.deepcopy(student).float()
        self.model.requires_grad_(False)
        self.model.eval()
        self.ema_decay = ema_decay
        self.ema_end_decay = ema_end_decay
        self.ema_anneal_end_step = ema_anneal_end_step
        self.copy_prefixes = tuple(copy_prefixes)
        # The update count the teacher has been stepped to. Saved in the checkpoint so that the
        # trainer's set_num_updates() after a resume does not apply the last step a second time.
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))
        self._pairs_for = None  # cache of (student id, averaged pairs, copied pairs)

    # -- always eval, always fp32 ------------------------------------------------------------
    def train(self, mode: bool = True):
        super().train(mode)
        self.model.eval()
        return self

    def _apply(self, fn, *args, **kwargs):
        # fairseq calls model.half()/.bfloat16() for mixed precision; keep the teacher's floating
        # point tensors in fp32 but let device moves through.
        def keep_fp32(t: Tensor) -> Tensor:
            out = fn(t)
            return out.float() if out.is_floating_point() else out

        self._pairs_for = None
        return super()._apply(keep_fp32, *args, **kwargs)

    # -- schedule --------------------------------------------------------------------------
    def decay_at(self, num_updates: int) -> float:
        return annealed_decay(
            self.ema_decay, self.ema_end_decay, num_updates, self.ema_anneal_end_step
        )

    @property
    def decay(self) -> float:
        return self.decay_at(int(self.num_updates))

    # -- update ----------------------------------------------------------------------------
    def _pairs(self, student: nn.Module) -> Tuple[List[Tensor], List[Tensor], List[Tensor], List[Tensor]]:
        """(teacher, student) tensors to average and (teacher, student) tensors to copy."""
        if self._pairs_for is not None and self._pairs_for[0] is student:
            return self._pairs_for[1]
        teacher_params = dict(self.model.named_parameters())
        avg_t, avg_s, copy_t, copy_s = [], [], [], []
        for name, s in student.named_parameters():
            if name not in teacher_params:
                raise KeyError(f"EMA teacher has no parameter {name!r} of the student")
            t = teacher_params[name]
            if name.startswith(self.copy_prefixes) or not s.requires_grad:
                copy_t.append(t)
                copy_s.append(s)
            else:
                avg_t.append(t)
                avg_s.append(s)
        teacher_buffers = dict(self.model.named_buffers())
        for name, s in student.named_buffers():
            if name in teacher_buffers:
                copy_t.append(teacher_buffers[name])
                copy_s.append(s)
        pairs = (avg_t, avg_s, copy_t, copy_s)
        self._pairs_for = (student, pairs)
        return pairs

    @torch.no_grad()
    def step(self, student: nn.Module, num_updates: int) -> bool:
        """Move the teacher towards ``student`` for update ``num_updates``.

        Returns False (and does nothing) when the teacher is already at ``num_updates`` or beyond,
        which is what happens when fairseq re-announces the update count after loading a checkpoint,
        or when the decay has reached 1.
        """
        if num_updates <= int(self.num_updates):
            return False
        decay = self.decay_at(num_updates)
        self.num_updates.fill_(num_updates)
        if decay >= 1.0:
            return False
        avg_t, avg_s, copy_t, copy_s = self._pairs(student)
        if avg_t:
            if avg_s[0].dtype != torch.float32:  # fp16/bf16 student: average in fp32
                avg_s = [s.float() for s in avg_s]
            # t += (1 - decay) * (s - t), i.e. decay * t + (1 - decay) * s, in one multi-tensor lerp: one
            # pass that reads t and s and writes t, the memory-traffic floor of an EMA (measured 1.08x one
            # lerp over a flat buffer of the same size, base audio, 1 CPU thread). A mul_ then an add_
            # (fairseq's EMAModule arithmetic) makes two passes over t: 1.8x.
            torch._foreach_lerp_(avg_t, avg_s, 1.0 - decay)
        if copy_t:
            torch._foreach_copy_(copy_t, [s.to(t.dtype) for t, s in zip(copy_t, copy_s)])
        return True

    # -- forward ---------------------------------------------------------------------------
    def run(self, fn: Callable[..., Any], *args, dtype: torch.dtype = torch.float32, **kwargs) -> Any:
        """``fn(self.model, *args, **kwargs)`` without autograd: the one way a teacher is run.

        ``dtype`` is the student's compute dtype: for fp16/bf16 the fp32 teacher runs under autocast
        instead of keeping a second low-precision copy.
        """
        with torch.no_grad():
            if dtype in (torch.float16, torch.bfloat16):
                device = next(self.model.parameters()).device.type
                with torch.autocast(device_type=device, dtype=dtype):
                    return fn(self.model, *args, **kwargs)
            return fn(self.model, *args, **kwargs)
