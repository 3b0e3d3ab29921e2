"""EmaTeacher: update and anneal schedule against a naive per-parameter reference."""

import copy

import pytest
import torch
from torch import nn

from d2v_plugin.core.ema_teacher import EmaTeacher, annealed_decay


def naive_decay(start, end, step, end_step):
    if step >= end_step:
        return end
    frac = step / end_step
    return start + (end - start) * frac


def make_student():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.Dropout(0.5), nn.Linear(8, 3))


@pytest.mark.parametrize("step", [0, 1, 7, 50, 99, 100, 101, 1000])
def test_anneal_schedule_matches_linear_reference(step):
    assert annealed_decay(0.999, 0.9999, step, 100) == pytest.approx(naive_decay(0.999, 0.9999, step, 100), abs=1e-12)


def test_constant_decay_when_start_equals_end():
    assert annealed_decay(0.9998, 0.9998, 5, 100) == 0.9998


def test_ema_updates_match_naive_loop_over_parameters():
    student = make_student()
    teacher = EmaTeacher(student, ema_decay=0.9, ema_end_decay=0.99, ema_anneal_end_step=5,
                         copy_prefixes=("1.",))  # the LayerNorm is copied, not averaged
    expected = {k: v.clone() for k, v in student.state_dict().items()}
    for update in range(1, 9):
        with torch.no_grad():
            for p in student.parameters():
                p.add_(torch.randn_like(p))
        assert teacher.step(student, update)
        d = naive_decay(0.9, 0.99, update, 5)
        for name, p in student.named_parameters():
            if name.startswith("1."):
                expected[name] = p.detach().clone()
            else:
                expected[name] = d * expected[name] + (1 - d) * p.detach()
        assert teacher.decay == pytest.approx(d)
    got = teacher.model.state_dict()
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=1e-6, atol=1e-6)
    assert torch.equal(got["1.weight"], student.state_dict()["1.weight"])


def test_frozen_student_parameters_are_copied():
    student = make_student()
    student[0].weight.requires_grad_(False)
    teacher = EmaTeacher(student, 0.5, 0.5, 0)
    with torch.no_grad():
        student[0].weight.add_(1.0)
        student[3].weight.add_(1.0)
    before = teacher.model[3].weight.clone()
    teacher.step(student, 1)
    assert torch.equal(teacher.model[0].weight, student[0].weight)
    torch.testing.assert_close(teacher.model[3].weight, 0.5 * before + 0.5 * student[3].weight)


def test_step_is_idempotent_per_update_and_skipped_at_decay_one():
    student = make_student()
    teacher = EmaTeacher(student, 0.5, 0.5, 0)
    with torch.no_grad():
        student[0].weight.add_(1.0)
    assert teacher.step(student, 3)
    snapshot = copy.deepcopy(teacher.state_dict())
    # fairseq announces the same update count again after loading a checkpoint: no second step
    assert not teacher.step(student, 3)
    assert not teacher.step(student, 2)
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, snapshot[k])
    frozen = EmaTeacher(student, 1.0, 1.0, 0)
    w = frozen.model[0].weight.clone()
    with torch.no_grad():
        student[0].weight.add_(1.0)
    assert not frozen.step(student, 1)
    assert torch.equal(frozen.model[0].weight, w)


def test_teacher_is_eval_no_grad_fp32_even_when_owner_is_cast_to_half():
    student = make_student()
    owner = nn.ModuleDict({"student": student})
    owner.teacher = EmaTeacher(student, 0.9, 0.99, 10)
    owner.train()
    assert not owner.teacher.model.training and owner.teacher.training
    assert all(not p.requires_grad for p in owner.teacher.parameters())
    owner.half()
    assert student[0].weight.dtype == torch.float16
    assert all(p.dtype == torch.float32 for p in owner.teacher.parameters())
    # a half student still updates the fp32 teacher
    assert owner.teacher.step(student, 1)
    assert owner.teacher.num_updates.dtype == torch.long


def test_state_dict_round_trip_is_bitwise():
    student = make_student()
    a = EmaTeacher(student, 0.9, 0.99, 10)
    with torch.no_grad():
        student[0].weight.mul_(3)
    a.step(student, 4)
    b = EmaTeacher(make_student(), 0.9, 0.99, 10)
    b.load_state_dict(a.state_dict())
    assert int(b.num_updates) == 4
    for k, v in a.state_dict().items():
        assert torch.equal(b.state_dict()[k], v)


def test_teacher_forward_has_no_autograd_graph():
    student = make_student()
    teacher = EmaTeacher(student, 0.9, 0.99, 10)
    x = torch.randn(4, 6, requires_grad=True)
    y = teacher.run(lambda m, x: m(x), x)
    assert not y.requires_grad
    # no dropout: two calls agree although the student has a Dropout(0.5)
    assert torch.equal(y, teacher.run(lambda m, x: m(x), x))
