"""How each model of the extraction chain traces under torch.compile: graphs and graph breaks (figures, not a test).

    python benchmarks/graph_breaks.py                                   # tiny models on the CPU
    python benchmarks/graph_breaks.py --models paper-random --device cuda --side 512

Each model is prepared as the job prepares it with --compile (vprlib.extract.stages.install_hf_hooks first), then
traced by torch._dynamo.explain on a 2-image batch: one graph and no break is what a compiled model should give.
--no-hooks skips install_hf_hooks, to show the breaks it removes. Tracing compiles nothing, so this takes seconds.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from vprlib.extract.stages import install_hf_hooks  # noqa: E402
from vprlib.models import zoo  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="tiny", help="tiny, paper-random, paper or a folder")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--side", type=int, default=64, help="image side of the traced batch")
    parser.add_argument("--hooks", action=argparse.BooleanOptionalAction, default=True,
                        help="install the Hugging Face hooks first, as the job does")
    args = parser.parse_args(argv)
    import transformers

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {args.models} on {args.device}, "
          f"{args.side} px, hooks installed first: {args.hooks}", flush=True)
    images = torch.rand(2, 3, args.side, args.side, device=args.device)
    mask = torch.zeros(2, 1, args.side, args.side, device=args.device)
    mask[..., : args.side // 4, : args.side // 4] = 1
    loaders = {"segmenter": (zoo.load_segmenter, (images,)), "depth": (zoo.load_depth, (images,)),
               "inpainter": (zoo.load_inpainter, (images, mask))}
    for role, (load, inputs) in loaders.items():
        model = load(args.models).to(args.device).eval()
        if args.hooks:
            install_hf_hooks(model, args.device)
        start = time.perf_counter()
        with torch.inference_mode():
            explained = torch._dynamo.explain(model)(*inputs)
        print(f"RESULT {role}: {explained.graph_count} graph(s), {explained.graph_break_count} break(s) "
              f"(traced in {time.perf_counter() - start:.1f} s)", flush=True)
        for reason in explained.break_reasons:
            where = reason.user_stack[-1] if reason.user_stack else None
            site = f" at {where.filename.split('site-packages/')[-1]}:{where.lineno}" if where else ""
            print(f"    break: {' '.join(str(reason.reason).split())[:200]}{site}", flush=True)
        torch._dynamo.reset()
    return 0


if __name__ == "__main__":
    sys.exit(main())
