"""``d2v-options NAME``: every option of a registered model, criterion or task, with its default and help.

    d2v-options data2vec_audio          # model.* keys of the pre-training recipes
    d2v-options data2vec --kind criterion

The help texts are the ``metadata["help"]`` of the dataclass configs (what fairseq's argparse CLI shows);
the key names are the ones hydra overrides use (``model.ema_decay=0.9998``).
"""

import argparse
import dataclasses
import sys
from typing import List, Optional, Sequence

REGISTRIES = {"model": "MODEL_DATACLASS_REGISTRY", "criterion": "CRITERION_DATACLASS_REGISTRY",
              "task": "TASK_DATACLASS_REGISTRY"}


def describe(config) -> List[str]:
    """``name = default  help`` lines for every field of a dataclass config class or instance (nested
    configs flattened to ``outer.inner``)."""
    lines = []
    for f in dataclasses.fields(config):
        if f.name.startswith("_"):
            continue
        if not isinstance(config, type):
            default = getattr(config, f.name)
        elif f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = "???"
        if dataclasses.is_dataclass(default) and not isinstance(default, type):
            lines += [f"{f.name}.{line}" for line in describe(default)]
            continue
        lines.append(f"{f.name} = {default!r}  {f.metadata.get('help', '')}".rstrip())
    return lines


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", help="registered name, e.g. data2vec_audio, data2vec_text_classification, audio_ctc")
    parser.add_argument("--kind", choices=sorted(REGISTRIES), default="model")
    args = parser.parse_args(argv)
    import d2v_plugin  # noqa: F401  (registers our names)
    from fairseq import criterions, models, tasks

    registry = getattr({"model": models, "criterion": criterions, "task": tasks}[args.kind], REGISTRIES[args.kind])
    if args.name not in registry:
        known = sorted(n for n in registry if "data2vec" in n or n in ("audio_ctc", "image_pretraining", "image_classification"))
        print(f"error: no {args.kind} named {args.name!r}; ours: {', '.join(known)}", file=sys.stderr)
        return 2
    print("\n".join(f"{args.kind}.{line}" for line in describe(registry[args.name])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
