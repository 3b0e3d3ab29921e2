"""Runners for fairseq's bundled data2vec models (the reference), each meant for its own process."""

import torch


def build_teacher_apart_from_student(model) -> None:
    """Build the reference's EMA teacher, then move the student away from it, as training does.

    A teacher equal to the student would hide a model that regresses the student's own outputs.
    """
    model.set_num_updates(0)  # the reference builds its EMA teacher here
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    model.set_num_updates(1)
