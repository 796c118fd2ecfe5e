"""Checkpoints of other libraries in and out of vlm_jax runs.

  python -m vlm_jax.tools.convert --from hf --in CLIP_OR_SIGLIP_DIR --out runs/clip_b16 [--image_size 384]
  python -m vlm_jax.tools.convert --from open_clip --in OPEN_CLIP_DIR --out runs/oc [--tokenizer FILE]
  python -m vlm_jax.tools.convert --from big_vision --in siglip.npz --out runs/siglip --tokenizer spiece.model
  python -m vlm_jax.tools.convert --to open_clip --in runs/oc --out exported/oc      (or --to hf)

Import writes a run directory (config.json, a checkpoint, the checkpoint's tokenizer under tokenizer/,
converted.json) that `vlm_jax.load()` opens (embed, classify, retrieve), `tools.evaluate --suite` evaluates and
`init_from.workdir` starts training from. Export writes the library's own folder layout (docs/checkpoints.md).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from vlm_jax.interop import big_vision, hf, layout, open_clip
from vlm_jax.interop.layout import ConversionError, Imported

READERS = {"hf": hf.read, "open_clip": open_clip.read, "big_vision": big_vision.read}
WRITERS = {"hf": hf.write, "open_clip": open_clip.write}
LOSSES = {"clip": "infonce", "siglip": "sigmoid"}
CONVERTED = "converted.json"
TOKENIZER_FILES = {"hf_json": ("tokenizer.json", "tokenizer_config.json"),
                   "siglip_spm": ("spiece.model", "tokenizer_config.json"), "clip_bpe": ()}


def run_config(model: Imported, tokenizer: str, tokenizer_kind: str) -> Any:
    """The run config of an imported two-tower model (data: the checkpoint's tokenizer and input size)."""
    import ml_collections

    from vlm_jax.train.defaults import trainer_defaults

    c = trainer_defaults()
    c.objective = "contrastive"
    c.total_steps = 0
    c.batch_size = 8
    c.mesh = [("data", -1)]
    c.progress, c.tensorboard = False, False
    c.optim = ml_collections.ConfigDict(dict(c.optim.to_dict(), name="sgd", momentum=0.0))  # no optimizer state
    fields = json.loads(json.dumps(model.fields))  # tuples → lists, as config.json holds them
    c.model = ml_collections.ConfigDict(fields)
    c.model.temperature_init = 10.0
    c.loss = ml_collections.ConfigDict(dict(name=LOSSES[model.loss]))
    c.data = ml_collections.ConfigDict(dict(name="checkpoint", image_size=model.image_size,
                                            text_len=int(model.text["max_len"]),
                                            vocab_size=int(model.fields["text"]["vocab_size"]),
                                            tokenizer=tokenizer, tokenizer_kind=tokenizer_kind,
                                            tokenizer_clean=model.text.get("clean", "") if tokenizer else "",
                                            image_resize="squash" if model.loss == "siglip" else "shortest_crop"))
    c.evals = ml_collections.ConfigDict(dict(sets=[]))
    return c


def _tokenizer(source: Path, explicit: str | None, out: Path) -> tuple[str, str]:
    """(path in the run, kind) of the checkpoint's tokenizer, copied into <out>/tokenizer; ("", "") if none."""
    from vlm_jax.data.checkpoint_tokenizers import detect

    folder = source if source.is_dir() else source.parent
    found = detect(Path(explicit).parent) if explicit else detect(folder)
    if explicit and (found is None or found[1].name != Path(explicit).name):
        raise ConversionError(f"--tokenizer {explicit}: not a tokenizer.json, spiece.model or "
                              f"bpe_simple_vocab*.txt.gz file")
    if found is None:
        return "", ""
    kind, path = found
    dest = out / "tokenizer"
    dest.mkdir(parents=True, exist_ok=True)
    for name in (path.name, *TOKENIZER_FILES[kind]):
        if (path.parent / name).exists():
            shutil.copyfile(path.parent / name, dest / name)
    return str((dest / path.name).resolve()), kind


def import_checkpoint(fmt: str, source: str | Path, out: str | Path, image_size: int | None = None,
                      tokenizer: str | None = None) -> Path:
    """Converts the checkpoint at `source` (format `fmt`) into a run directory `out`; returns it."""
    import jax
    from flax import linen as nn

    from vlm_jax.train.checkpoint import Checkpointer
    from vlm_jax.train.state import TrainState
    from vlm_jax.train.trainer import Setup, finalize_config
    from vlm_jax.train.workdir import write_version

    if fmt not in READERS:
        raise ConversionError(f"--from must be one of {sorted(READERS)}, got {fmt!r}")
    source, out = Path(source), Path(out)
    if (out / "checkpoints").exists():
        raise ConversionError(f"{out} already holds a run; choose a new --out")
    model = READERS[fmt](source, image_size=image_size)
    out.mkdir(parents=True, exist_ok=True)
    tok_path, tok_kind = _tokenizer(source, tokenizer, out)
    config = finalize_config(run_config(model, tok_path, tok_kind))
    setup = Setup(config)
    abstract = setup.abstract_state(config.seed)
    _check_tree(abstract.params, model.params)
    params = jax.tree.map(lambda a, x: jax.device_put(x, a.sharding), abstract.params, model.params)
    model.params = None  # the host copy goes; only the device arrays remain (peak memory ~2x the checkpoint)

    def build(p: Any) -> TrainState:
        return TrainState(step=jax.numpy.zeros((), jax.numpy.int32), params=p, opt_state=setup.tx.init(p),
                          extra=nn.unbox(setup.objective.init_extra(p)), rng=jax.random.key(config.seed))

    state = setup.jit(build, out_shardings=setup.state_shardings, donate_argnums=0)(params)
    del params
    (out / "config.json").write_text(config.to_json(indent=2))
    write_version(out)
    ckpt = Checkpointer(out / "checkpoints", every_steps=0, async_save=False)
    ckpt.save_state(0, state, {"converted_from": str(source), "format": model.source})
    ckpt.close()
    (out / CONVERTED).write_text(json.dumps({"source": str(source), "format": model.source, "loss": model.loss,
                                             "text": model.text, "tokenizer": tok_kind or None}, indent=2) + "\n")
    return out


def _check_tree(abstract: Any, params: Any) -> None:
    """The imported tree has exactly the model's parameters, each of the model's shape."""
    from vlm_jax.interop.layout import flat

    want = {"/".join(str(getattr(k, "key", k)) for k in path): leaf.shape
            for path, leaf in __import__("jax").tree_util.tree_flatten_with_path(abstract)[0]}
    got = {k: v.shape for k, v in flat(params).items()}
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    bad = sorted(k for k in set(want) & set(got) if tuple(want[k]) != tuple(got[k]))
    if missing or extra or bad:
        raise ConversionError(f"converted parameters do not fit the model: missing {missing[:8]}, unexpected "
                              f"{extra[:8]}, shapes {[(k, got[k], want[k]) for k in bad[:8]]}")


def export_run(fmt: str, workdir: str | Path, out: str | Path, step: int | None = None) -> Path:
    """Writes the two-tower run in `workdir` as a `fmt` ("hf" | "open_clip") folder `out`; returns it."""
    import jax
    import numpy as np

    from vlm_jax.train.workdir import restore_run

    if fmt not in WRITERS:
        raise ConversionError(f"--to must be one of {sorted(WRITERS)}, got {fmt!r}")
    setup, params, _ = restore_run(workdir, step, mesh=[("data", -1)])
    config = setup.config
    if config.objective != "contrastive" or config.model.get("text_tower", "transformer") != "transformer":
        raise ConversionError(f"only two-tower contrastive runs with the transformer text tower export; this run "
                              f"is {config.objective!r} / {config.model.get('text_tower')!r}")
    model = setup.objective.model()
    fields = dict(image=dict(model.image), text=dict(model.text), embed_dim=model.embed_dim)
    if model.bias_init is not None:
        fields["bias_init"] = model.bias_init
    converted = Path(workdir) / CONVERTED
    data = setup.objective.data
    if converted.exists():
        text = json.loads(converted.read_text())["text"]
    else:
        ids = data.special_ids
        text = dict(max_len=model.text.get("max_len"), pad_id=ids["pad"], eos_id=ids["eos"], bos_id=None)
    fields["text"] = layout.text_for_export(fields["text"], text.get("eos_id"))
    loss = "siglip" if config.loss.get("name") == "sigmoid" else "clip"
    host = jax.tree.map(lambda x: np.asarray(jax.device_get(x)), params)
    del params  # the device copy goes before the export layout is built (peak memory ~2x the checkpoint)
    imported = Imported(fields, host, int(data.image_size), text, loss, "vlm_jax")
    folder = WRITERS[fmt](imported, out)
    _export_tokenizer(Path(workdir), data, folder, fmt, int(text["max_len"]))
    return folder


def _export_tokenizer(workdir: Path, data: Any, folder: Path, fmt: str, max_len: int) -> None:
    """Puts the run's tokenizer next to the exported weights: a converted run's own files, or vlm_jax's
    SentencePiece model as tokenizer.json (`interop.spm_json`); open_clip's config then names it."""
    from vlm_jax.interop import spm_json

    copied = False
    source = workdir / "tokenizer"
    if source.is_dir():
        for f in source.iterdir():
            shutil.copyfile(f, folder / f.name)
        copied = (source / "tokenizer.json").exists() or (source / "spiece.model").exists()
    elif getattr(getattr(data, "tokenizer", None), "model_path", None):
        spm_json.write(data.tokenizer.model_path, folder, max_len)
        copied = True
    if copied and fmt == "open_clip":  # open_clip's get_tokenizer("local-dir:…") then loads it with AutoTokenizer
        path = folder / open_clip.CONFIG
        config = json.loads(path.read_text())
        config["model_cfg"]["text_cfg"]["hf_tokenizer_name"] = "."
        path.write_text(json.dumps(config, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    direction = parser.add_mutually_exclusive_group(required=True)
    direction.add_argument("--from", dest="src", choices=sorted(READERS), help="import a checkpoint of this format")
    direction.add_argument("--to", dest="dst", choices=sorted(WRITERS), help="export a run to this format")
    parser.add_argument("--in", dest="inp", required=True, help="checkpoint folder (import) or run dir (export)")
    parser.add_argument("--out", required=True, help="run dir (import) or folder (export) to write")
    parser.add_argument("--image_size", type=int, default=0, help="import at another resolution (positions resized)")
    parser.add_argument("--tokenizer", default=None, help="a tokenizer file, when the checkpoint folder has none")
    parser.add_argument("--step", type=int, default=0, help="export this checkpoint step (default: newest)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        if args.src:
            out = import_checkpoint(args.src, args.inp, args.out, args.image_size or None, args.tokenizer)
        else:
            out = export_run(args.dst, args.inp, args.out, args.step or None)
    except ConversionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
